"""request/response_headers_to_add and _to_remove, compiled into one ordered
list of operations per route (and per weighted cluster).

Envoy evaluates each level's removals and then its additions, levels ordered
from most specific (weighted cluster, route) to least (virtual host, route
configuration) so that the least specific has the last word, or the other way
round with `most_specific_header_mutations_wins`. The weighted cluster's
level always comes first. Levels are merged once at compile time, so a request
pays for one pass over a short tuple, and routes without mutations for nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pilotfish.proxy.routing.errors import RouteConfigError

# append_action values (envoy.config.core.v3.HeaderValueOption.HeaderAppendAction)
APPEND_IF_EXISTS_OR_ADD, ADD_IF_ABSENT, OVERWRITE_IF_EXISTS_OR_ADD, OVERWRITE_IF_EXISTS = range(4)
REMOVE = -1
_ACTION_NAMES = ("append", "add-if-absent", "overwrite", "overwrite-if-exists")

# (action, lower-case name, value); REMOVE ops carry an empty value.
HeaderOp = tuple[int, bytes, bytes]


@dataclass(frozen=True, slots=True)
class HeaderMutation:
    """Ordered header operations on a list of (lower-case name, value) pairs."""

    ops: tuple[HeaderOp, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __repr__(self) -> str:
        shown = [
            f"-{n.decode()}" if a == REMOVE else f"{_ACTION_NAMES[a]} {n.decode()}: {v.decode()}"
            for a, n, v in self.ops
        ]
        return f"HeaderMutation({', '.join(shown)})"

    def apply(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Mutate `headers` in place; names in it must be lower-case."""
        for action, name, value in self.ops:
            if action == APPEND_IF_EXISTS_OR_ADD:
                headers.append((name, value))
            elif action == REMOVE:
                headers[:] = [h for h in headers if h[0] != name]
            elif action == ADD_IF_ABSENT:
                if not any(h[0] == name for h in headers):
                    headers.append((name, value))
            else:
                _overwrite(headers, name, value, action == OVERWRITE_IF_EXISTS_OR_ADD)


NO_HEADERS = HeaderMutation()


def _overwrite(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes, add: bool) -> None:
    """The first occurrence takes the value in place; later ones go."""
    found = [i for i, h in enumerate(headers) if h[0] == name]
    if found:
        headers[found[0]] = (name, value)
        for i in reversed(found[1:]):
            del headers[i]
    elif add:
        headers.append((name, value))


def compile_level(
    to_add: Sequence[Any],
    to_remove: Iterable[str],
    path: str,
    kind: str,
) -> tuple[HeaderOp, ...]:
    """One level (route, vhost, ...): removals first, as Envoy's HeaderParser does."""
    prefix = f"{path}.{kind}" if path else kind
    ops: list[HeaderOp] = []
    for i, name in enumerate(to_remove):
        ops.append((REMOVE, _name(name, f"{prefix}_headers_to_remove[{i}]"), b""))
    for i, option in enumerate(to_add):
        op = _add_op(option, f"{prefix}_headers_to_add[{i}]")
        if op is not None:
            ops.append(op)
    return tuple(ops)


def merge_levels(levels: Sequence[tuple[HeaderOp, ...]]) -> HeaderMutation:
    return HeaderMutation(tuple(op for level in levels for op in level))


def _add_op(option: Any, path: str) -> HeaderOp | None:
    name = _name(option.header.key, f"{path}.header.key")
    raw = option.header.raw_value or option.header.value.encode("utf-8")
    value = _value(raw, f"{path}.header")
    if option.HasField("append") and option.append_action != APPEND_IF_EXISTS_OR_ADD:
        raise RouteConfigError(path, "append and append_action are mutually exclusive")
    action = int(option.append_action)
    if option.HasField("append"):
        action = APPEND_IF_EXISTS_OR_ADD if option.append.value else OVERWRITE_IF_EXISTS_OR_ADD
    if not value and not option.keep_empty_value:
        return None  # Envoy drops additions whose value is empty
    return (action, name, value)


def _name(name: str, path: str) -> bytes:
    lowered = name.lower()
    if not lowered or lowered.startswith(":") or lowered == "host":
        raise RouteConfigError(path, f"header {name!r} cannot be modified (pseudo-header or host)")
    if any(c in lowered for c in " \t\r\n:\x00"):
        raise RouteConfigError(path, f"invalid header name {name!r}")
    return lowered.encode("utf-8")


def _value(raw: bytes, path: str) -> bytes:
    if any(c in raw for c in b"\r\n\x00"):
        raise RouteConfigError(path, "header values cannot contain CR, LF or NUL")
    if b"%" in raw.replace(b"%%", b""):
        raise RouteConfigError(path, "header value formatters (%COMMAND%) are not supported")
    return raw.replace(b"%%", b"%")
