"""The `x-kubernetes-validations` rules of a CRD, evaluated with cel-python.

cel-python implements CEL's core; Kubernetes adds libraries (strings
extensions, `url()`, Go durations, RE2 `matches`) that Istio's rules use, so
they are supplied here as functions. Each distinct rule text is compiled once.
A rule that fails to evaluate is reported as Kubernetes reports it
("<error> evaluating rule: <message>"), never taken as a pass.

Transition rules (those reading `oldSelf`) need the stored object and are not
evaluated on a single object; `is_transition_rule` names them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import celpy
import celpy.celtypes as ct
import re2
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from pilotfish.api.gotypes import URL, parse_duration_ns, parse_request_uri

CelValue = Any  # a celpy.celtypes value; celpy's own annotations are a large Union
_NS_PER_S = 1_000_000_000


class RuleError(Exception):
    """A rule could not be compiled: a bug in a schema file, never in a user's object."""


@dataclass(frozen=True)
class Rule:
    """One x-kubernetes-validations entry, compiled."""

    rule: str
    message: str
    message_expression: str
    program: celpy.Runner
    reason: str = ""

    def describe(self) -> str:
        """What Kubernetes calls `ruleErrorString`: the message, else the rule."""
        return self.message.strip() or self.rule.strip()


def is_transition_rule(spec: dict[str, Any]) -> bool:
    return "oldSelf" in str(spec.get("rule", ""))


def compile_rule(spec: dict[str, Any]) -> Rule:
    text = str(spec["rule"])
    return Rule(
        rule=text,
        message=str(spec.get("message", "")),
        message_expression=str(spec.get("messageExpression", "")),
        program=_program(text),
        reason=str(spec.get("reason", "")),
    )


@functools.cache
def _program(text: str) -> celpy.Runner:
    env = celpy.Environment()
    try:
        return env.program(env.compile(text), functions=FUNCTIONS)
    except CELParseError as exc:
        raise RuleError(f"cannot compile CEL rule {text!r}: {exc}") from exc


def evaluate(rule: Rule, value: CelValue) -> str | None:
    """None when the rule holds for `value`, else the message Kubernetes gives."""
    try:
        result = rule.program.evaluate({"self": value})
    except CELEvalError as exc:
        return f"{describe_error(exc)} evaluating rule: {rule.describe()}"
    if isinstance(result, CELEvalError):
        return f"{describe_error(result)} evaluating rule: {rule.describe()}"
    if isinstance(result, ct.BoolType) and bool(result):
        return None
    return _failure_message(rule, value)


def _failure_message(rule: Rule, value: CelValue) -> str:
    if rule.message_expression:
        try:
            message = _program(rule.message_expression).evaluate({"self": value})
        except CELEvalError:
            message = None
        if isinstance(message, str) and message.strip():
            return message.strip()
    if rule.message.strip():
        return rule.message.strip()
    return f"failed rule: {rule.rule.strip()}"


def describe_error(exc: CELEvalError) -> str:
    """celpy's error, in the words cel-go would use."""
    args = exc.args
    text = str(args[0]) if args else str(exc)
    cause = args[1] if len(args) > 1 else None
    detail = args[2] if len(args) > 2 else None
    if cause is KeyError and text.startswith("no such member"):
        return "no such key: " + text.split("'")[1] if "'" in text else text
    if cause is TypeError and "no matching overload" in text:
        return "no such overload"
    if isinstance(detail, tuple) and detail and cause is ValueError:
        return str(detail[0])
    return text


# --- values -----------------------------------------------------------------


def from_json(value: Any, numbers_as_double: bool = False) -> CelValue:
    """A JSON value as CEL sees it; `numbers_as_double` for schema type `number`."""
    if isinstance(value, bool):
        return ct.BoolType(value)
    if isinstance(value, int):
        return ct.DoubleType(value) if numbers_as_double else ct.IntType(value)
    if isinstance(value, float):
        return ct.DoubleType(value)
    if isinstance(value, str):
        return ct.StringType(value)
    if isinstance(value, list):
        return ct.ListType([from_json(v) for v in value])
    if isinstance(value, dict):
        return ct.MapType({ct.StringType(k): from_json(v) for k, v in value.items()})
    return None


# --- the Kubernetes CEL libraries Istio's rules call ----------------------------


def _duration(text: CelValue) -> CelValue:
    if isinstance(text, ct.DurationType):
        return text
    try:
        ns = parse_duration_ns(str(text))
    except ValueError as exc:
        raise ValueError(
            f"type conversion error from 'string' to 'google.protobuf.Duration': {exc}"
        ) from exc
    seconds, nanos = divmod(ns, _NS_PER_S)
    return ct.DurationType(seconds=seconds, nanos=nanos)


def _int(value: CelValue) -> CelValue:
    if isinstance(value, ct.StringType):
        try:
            return ct.IntType(int(str(value), 10))
        except ValueError:
            raise ValueError("type conversion error from 'string' to 'int'") from None
    return ct.IntType(value)


@functools.cache
def _re2(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


def _matches(text: CelValue, pattern: CelValue) -> CelValue:
    try:
        compiled = _re2(str(pattern))
    except re2.error as exc:
        raise ValueError(f"invalid regular expression {str(pattern)!r}: {exc}") from exc
    return ct.BoolType(compiled.search(str(text)) is not None)


def _substring(text: CelValue, start: CelValue, end: CelValue = None) -> CelValue:
    s, a = str(text), int(start)
    b = len(s) if end is None else int(end)
    if a < 0 or b > len(s) or a > b:
        raise ValueError(f"index out of range: {a if a < 0 or a > len(s) else b}")
    return ct.StringType(s[a:b])


def _index_of(text: CelValue, sub: CelValue, start: CelValue = 0) -> CelValue:
    return ct.IntType(str(text).find(str(sub), int(start)))


def _last_index_of(text: CelValue, sub: CelValue) -> CelValue:
    return ct.IntType(str(text).rfind(str(sub)))


def _split(text: CelValue, sep: CelValue) -> CelValue:
    return ct.ListType([ct.StringType(p) for p in str(text).split(str(sep))])


def _join(items: CelValue, sep: CelValue = "") -> CelValue:
    return ct.StringType(str(sep).join(str(i) for i in items))


def _replace(text: CelValue, old: CelValue, new: CelValue) -> CelValue:
    return ct.StringType(str(text).replace(str(old), str(new)))


def _url(text: CelValue) -> URL:
    try:
        return parse_request_uri(str(text))
    except ValueError as exc:
        raise ValueError(f"URL parse error during conversion from string: {exc}") from exc


def _is_url(text: CelValue) -> CelValue:
    try:
        parse_request_uri(str(text))
    except ValueError:
        return ct.BoolType(False)
    return ct.BoolType(True)


def _url_part(part: Callable[[URL], str]) -> Callable[[URL], CelValue]:
    return lambda url: ct.StringType(part(url))


def _errors_first(operator: Callable[[CelValue, CelValue], CelValue]) -> Callable[..., CelValue]:
    """CEL says `error && error` is an error; celpy raises "no such overload",
    which would hide the error a user needs to see (e.g. a failed int())."""

    def apply(x: CelValue, y: CelValue) -> CelValue:
        if isinstance(x, CELEvalError) and isinstance(y, CELEvalError):
            return x
        return operator(x, y)

    return apply


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "_&&_": _errors_first(ct.logical_and),
    "_||_": _errors_first(ct.logical_or),
    "duration": _duration,
    "int": _int,
    "matches": _matches,
    "substring": _substring,
    "indexOf": _index_of,
    "lastIndexOf": _last_index_of,
    "charAt": lambda s, i: ct.StringType(str(s)[int(i) : int(i) + 1]),
    "lowerAscii": lambda s: ct.StringType(str(s).lower()),
    "upperAscii": lambda s: ct.StringType(str(s).upper()),
    "trim": lambda s: ct.StringType(str(s).strip()),
    "split": _split,
    "join": _join,
    "replace": _replace,
    "url": _url,
    "isURL": _is_url,
    "getScheme": _url_part(lambda u: u.scheme),
    "getHost": _url_part(lambda u: u.host),
    "getHostname": _url_part(lambda u: u.hostname),
    "getPort": _url_part(lambda u: u.port),
    "getEscapedPath": _url_part(lambda u: u.path),
    "getQuery": _url_part(lambda u: u.query),
}
