"""Label selectors in Kubernetes' string syntax: `a=b,c!=d,e in (x,y),f notin (z),g,!h`.

`parse_selector` raises BadRequest naming the selector and what was wrong, so
a typo in `-l` gets a clear error rather than an empty list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pilotfish.api.errors import BadRequest

Op = Literal["exists", "!", "=", "!=", "in", "notin", "gt", "lt"]

_TOKEN = re.compile(r"\s*(?:(==|!=|=|!|\(|\)|,|<|>)|([^\s,=!()<>]+))")
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_KEY = re.compile(rf"({_PREFIX}/)?{_NAME}")
_VALUE = re.compile(rf"({_NAME})?")
_SET_OPS = {"in": "in", "notin": "notin"}
_COMPARE_OPS: dict[str, Op] = {"=": "=", "==": "=", "!=": "!=", ">": "gt", "<": "lt"}


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op == "exists":
            return value is not None
        if self.op == "!":
            return value is None
        if self.op in ("!=", "notin"):
            return value not in self.values
        if self.op in ("gt", "lt"):
            return _compare(value, self.op, int(self.values[0]))
        return value in self.values


def _compare(value: str | None, op: Op, bound: int) -> bool:
    try:
        number = int(value) if value is not None else None
    except ValueError:
        return False
    if number is None:
        return False
    return number > bound if op == "gt" else number < bound


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return all(r.matches(labels or {}) for r in self.requirements)


def parse_selector(text: str | None) -> Selector:
    """The selector a string means; empty or None selects everything."""
    if not text or not text.strip():
        return Selector(())
    tokens = _tokenize(text)
    parser = _Parser(text, tokens)
    return Selector(tuple(parser.requirements()))


def _tokenize(text: str) -> list[str]:
    tokens, at = [], 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        found = _TOKEN.match(text, at)
        if found is None:  # pragma: no cover - the pattern accepts any non-space
            raise _error(text, f"unexpected character at {at}")
        tokens.append(found.group(1) or found.group(2))
        at = found.end()
    return tokens


def _error(text: str, why: str) -> BadRequest:
    return BadRequest(f'unable to parse label selector "{text}": {why}')


class _Parser:
    def __init__(self, text: str, tokens: list[str]) -> None:
        self._text, self._tokens, self._at = text, tokens, 0

    def _peek(self) -> str | None:
        return self._tokens[self._at] if self._at < len(self._tokens) else None

    def _take(self) -> str | None:
        token = self._peek()
        self._at += 1
        return token

    def _expect(self, wanted: str) -> None:
        token = self._take()
        if token != wanted:
            raise _error(self._text, f"found {_shown(token)}, expected: {wanted!r}")

    def requirements(self) -> list[Requirement]:
        out = [self._requirement()]
        while self._peek() is not None:
            self._expect(",")
            out.append(self._requirement())
        return out

    def _requirement(self) -> Requirement:
        if self._peek() == "!":
            self._take()
            return Requirement(self._key(), "!")
        key = self._key()
        op = self._peek()
        if op is None or op == ",":
            return Requirement(key, "exists")
        self._take()
        if op in _SET_OPS:
            return self._set_requirement(key, _SET_OPS[op])
        if op not in _COMPARE_OPS:
            raise _error(self._text, f"found {_shown(op)}, expected: in, notin, =, ==, !=, >, <")
        return self._compare_requirement(key, _COMPARE_OPS[op])

    def _key(self) -> str:
        token = self._take()
        if token is None or not _KEY.fullmatch(token) or len(token) > 316:
            raise _error(self._text, f"found {_shown(token)}, expected: a label key")
        return token

    def _value(self) -> str:
        token = self._peek()
        if token in (None, ",", ")"):
            return ""  # `a=` selects an empty value, as in Kubernetes
        self._take()
        if token is None or not _VALUE.fullmatch(token):
            raise _error(self._text, f"found {_shown(token)}, expected: a label value")
        return token

    def _compare_requirement(self, key: str, op: Op) -> Requirement:
        value = self._value()
        if op in ("gt", "lt") and not re.fullmatch(r"-?[0-9]+", value):
            raise _error(self._text, f"for '>' and '<', the value must be an integer: {value!r}")
        return Requirement(key, op, (value,))

    def _set_requirement(self, key: str, op: str) -> Requirement:
        self._expect("(")
        values = [self._value()]
        while self._peek() == ",":
            self._take()
            values.append(self._value())
        self._expect(")")
        if values == [""]:
            raise _error(self._text, f"for 'in' and 'notin', the set of values of {key!r} is empty")
        return Requirement(key, "in" if op == "in" else "notin", tuple(values))


def _shown(token: str | None) -> str:
    return "end of string" if token is None else repr(token)


# Field selectors: what Kubernetes serves for every kind (metadata.name and
# metadata.namespace), with =, == and != only. A field selector that is
# ignored would select everything: `delete --field-selector` would take it all.
FIELDS = ("metadata.name", "metadata.namespace")
_FIELD_TERM = re.compile(r"^([^=!]+?)\s*(==|!=|=)\s*(.*)$")


def parse_field_selector(text: str | None) -> Selector:
    """The field selector a string means; BadRequest in Kubernetes' words."""
    if not text or not text.strip():
        return Selector(())
    requirements = []
    for term in text.split(","):
        found = _FIELD_TERM.match(term.strip())
        if found is None:
            raise BadRequest(f"invalid selector: '{text}'; can't understand '{term}'")
        key, op, value = found.group(1).strip(), found.group(2), found.group(3).strip()
        if key not in FIELDS:
            raise BadRequest(
                f'"{key}" is not a known field selector: only "metadata.name", "metadata.namespace"'
            )
        requirements.append(Requirement(key, "!=" if op == "!=" else "=", (value,)))
    return Selector(tuple(requirements))


def object_fields(metadata: Mapping[str, object] | None) -> dict[str, str]:
    """An object's fields that a field selector may name."""
    meta = metadata or {}
    return {
        "metadata.name": str(meta.get("name", "")),
        "metadata.namespace": str(meta.get("namespace", "")),
    }
