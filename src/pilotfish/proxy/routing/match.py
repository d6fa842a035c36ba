"""Route match conditions compiled into small closures.

A condition is `(request view, header index) -> bool`. The index is built once
per request, and only when a route with header conditions is reached, so a
route table made of path matches never touches the headers at all. Path
matches are not closures but data (`PathMatch`): they run for every route
tried, and the table tests the commonest, a prefix, inline.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pilotfish.proxy.grpc import is_grpc_content_type
from pilotfish.proxy.routing.errors import RouteConfigError
from pilotfish.proxy.routing.regex import compile_re2
from pilotfish.proxy.routing.request import (
    PSEUDO_HEADERS,
    RequestView,
    header_getter,
    query_params,
)

Condition = Callable[[RequestView, dict[bytes, bytes]], bool]
ValueTest = Callable[[bytes], bool]

# Path match kinds, tested inline by the table in this order of likelihood.
# Final literals: compiled, the importing modules inline them, where a name
# unpacked from range() is a globals-dict lookup at every use (per route).
PREFIX: Final = 0
PREFIX_NOCASE: Final = 1
EXACT: Final = 2
EXACT_NOCASE: Final = 3
REGEX: Final = 4
SEPARATED: Final = 5
SEPARATED_NOCASE: Final = 6
CONNECT: Final = 7  # connect_matcher: only a CONNECT request, which has no path (proxy/connect.py)
_INT64 = re.compile(rb"\s*[+-]?\d{1,19}\s*")


@dataclass(frozen=True, slots=True)
class PathMatch:
    """kind, and what it tests: `literal` (lower-cased for *_NOCASE kinds) or,
    for REGEX, `regex`. `text` is the configured form, for reprs."""

    kind: int
    literal: bytes
    text: str
    regex: re.Pattern[bytes] | None = None

    def __repr__(self) -> str:
        names = (
            "prefix", "prefix~i", "path", "path~i", "regex", "sep_prefix", "sep_prefix~i",
            "connect",
        )  # fmt: skip
        return f"{names[self.kind]}={self.text!r}"


def compile_path_match(match: Any, path: str) -> PathMatch:
    """RouteMatch's path specifier; case_sensitive applies to all but safe_regex."""
    which = match.WhichOneof("path_specifier")
    nocase = match.HasField("case_sensitive") and not match.case_sensitive.value
    if which == "prefix":
        return _literal(PREFIX, match.prefix, nocase)
    if which == "path":
        return _literal(EXACT, match.path, nocase)
    if which == "path_separated_prefix":
        prefix = match.path_separated_prefix
        if prefix.endswith("/") or "?" in prefix or "#" in prefix:
            reason = "must not end in '/' nor contain '?' or '#'"
            raise RouteConfigError(f"{path}.path_separated_prefix", reason)
        return _literal(SEPARATED, prefix, nocase)
    if which == "safe_regex":
        regex = compile_re2(match.safe_regex.regex, f"{path}.safe_regex.regex")
        return PathMatch(REGEX, b"", match.safe_regex.regex, regex)
    if which == "connect_matcher":
        return PathMatch(CONNECT, b"", "CONNECT")
    raise RouteConfigError(
        path,
        "a route match needs prefix, path, safe_regex, path_separated_prefix or connect_matcher",
    )


def _literal(kind: int, text: str, nocase: bool) -> PathMatch:
    raw = text.encode("utf-8")
    return PathMatch(kind + 1, raw.lower(), text) if nocase else PathMatch(kind, raw, text)


def path_matches(match: PathMatch, path: bytes, bare: bytes) -> bool:
    """`bare` is the path without query: exact, regex and separated prefixes see
    only that, as in Envoy; prefixes see the query too."""
    kind, value = match.kind, match.literal
    if kind == PREFIX:
        return path.startswith(value)
    if kind == PREFIX_NOCASE:
        return path[: len(value)].lower() == value
    if kind == EXACT:
        return bare == value
    if kind == EXACT_NOCASE:
        return bare.lower() == value
    if match.regex is not None:
        return match.regex.fullmatch(bare) is not None
    if kind == CONNECT:  # a request with a path is never a CONNECT
        return False
    head = bare[: len(value)] if kind == SEPARATED else bare[: len(value)].lower()
    return head == value and (len(bare) == len(value) or bare[len(value)] == 0x2F)


def compile_string_matcher(m: Any, path: str) -> ValueTest:
    """envoy.type.matcher.v3.StringMatcher -> a test of a byte value."""
    which = m.WhichOneof("match_pattern")
    if which == "safe_regex":
        if m.ignore_case:
            raise RouteConfigError(f"{path}.ignore_case", "has no effect with safe_regex")
        regex = compile_re2(m.safe_regex.regex, f"{path}.safe_regex.regex")
        return lambda v: regex.fullmatch(v) is not None
    if which not in ("exact", "prefix", "suffix", "contains"):
        raise RouteConfigError(f"{path}.{which or 'match_pattern'}", "not supported")
    want = getattr(m, which).encode("utf-8")
    return _literal_test(which, want.lower() if m.ignore_case else want, m.ignore_case)


def _literal_test(which: str, want: bytes, nocase: bool) -> ValueTest:
    if which == "exact":
        return (lambda v: v.lower() == want) if nocase else want.__eq__
    if which == "prefix":
        return (lambda v: v.lower().startswith(want)) if nocase else (lambda v: v.startswith(want))
    if which == "suffix":
        return (lambda v: v.lower().endswith(want)) if nocase else (lambda v: v.endswith(want))
    return (lambda v: want in v.lower()) if nocase else (lambda v: want in v)


def compile_header_matcher(m: Any, path: str) -> Condition:
    """HeaderMatcher with Envoy's rules: a missing header fails every value test,
    inverted or not, unless treat_missing_header_as_empty; presence tests and
    their inversion are plain logic."""
    name = m.name.lower().encode("utf-8")
    if not name:
        raise RouteConfigError(f"{path}.name", "a header matcher needs a name")
    get = header_getter(name)
    which = m.WhichOneof("header_match_specifier")
    if which is None or which == "present_match":
        want = (m.present_match if which else True) != m.invert_match
        if m.treat_missing_header_as_empty:
            return lambda req, index: want
        return lambda req, index: (get(req, index) is not None) == want
    test = _header_value_test(m, which, path)
    if which == "exact_match" and not m.exact_match:
        test = _any_value  # the deprecated exact_match: "" matches any value
    return _header_condition(name, get, test, m.invert_match, m.treat_missing_header_as_empty)


def _header_value_test(m: Any, which: str, path: str) -> ValueTest:
    if which == "string_match":
        return compile_string_matcher(m.string_match, f"{path}.string_match")
    if which == "safe_regex_match":
        regex = compile_re2(m.safe_regex_match.regex, f"{path}.safe_regex_match.regex")
        return lambda v: regex.fullmatch(v) is not None
    if which == "range_match":
        start, end = m.range_match.start, m.range_match.end
        return lambda v: _INT64.fullmatch(v) is not None and start <= int(v) < end
    kinds = {"exact_match": "exact", "prefix_match": "prefix", "suffix_match": "suffix"}
    return _literal_test(kinds.get(which, "contains"), getattr(m, which).encode("utf-8"), False)


def _any_value(_: bytes) -> bool:
    return True


def _header_condition(
    name: bytes, get: Any, test: ValueTest, invert: bool, missing_as_empty: bool
) -> Condition:
    if missing_as_empty:
        return lambda req, index: test(v if (v := get(req, index)) is not None else b"") != invert
    if not invert and name not in PSEUDO_HEADERS:  # the common shape, one call shorter
        return lambda req, index: (v := index.get(name)) is not None and test(v)
    return lambda req, index: (v := get(req, index)) is not None and test(v) != invert


def compile_query_matcher(m: Any, path: str) -> Condition:
    """QueryParameterMatcher on the raw (undecoded) first value of the name, as Envoy."""
    name = m.name.encode("utf-8")
    if not name:
        raise RouteConfigError(f"{path}.name", "a query parameter matcher needs a name")
    if m.WhichOneof("query_parameter_match_specifier") == "string_match":
        test = compile_string_matcher(m.string_match, f"{path}.string_match")
        return lambda req, _: (v := query_params(req.path).get(name)) is not None and test(v)
    present = m.present_match if m.HasField("present_match") else True
    return lambda req, _: (name in query_params(req.path)) == present


def grpc_condition(req: RequestView, index: dict[bytes, bytes]) -> bool:
    """RouteMatch.grpc: content-type application/grpc, or application/grpc+proto and the like."""
    return is_grpc_content_type(index.get(b"content-type"))
