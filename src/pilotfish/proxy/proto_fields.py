"""Reading config protos: the fields pilotfish does not honour, and durations.

A proxy that silently ignored a field would behave unlike the Envoy its user
configured for, so every config entry point lists what it supports and
rejects the rest by path (`static_resources.listeners[0].per_connection_buffer_limit_bytes`).
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message


def seconds(duration: Duration) -> float:
    return float(duration.seconds + duration.nanos / 1e9)


def set_fields(msg: Message, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path with indexes, path without) for every field that is set, depth first."""
    for field, value in msg.ListFields():
        path = f"{prefix}.{field.name}" if prefix else field.name
        yield path, _plain(path)
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        if field.is_repeated:
            for i, item in enumerate(value):
                yield from set_fields(item, f"{path}[{i}]")
        elif field.message_type.full_name != "google.protobuf.Any":
            yield from set_fields(value, path)


def unsupported(msg: Message, supported: frozenset[str]) -> list[str]:
    """Paths of set fields outside `supported`. An entry `a.b` allows the field
    and everything under it; list indexes are ignored when matching."""
    found: list[str] = []
    for path, plain in set_fields(msg):
        if not _allowed(plain, supported) and not _covered(path, found):
            found.append(path)
    return found


def _allowed(plain: str, supported: frozenset[str]) -> bool:
    """Inside a supported subtree, or on the way to one."""
    parts = plain.split(".")
    if any(".".join(parts[:i]) in supported for i in range(1, len(parts) + 1)):
        return True
    return any(s.startswith(plain + ".") for s in supported)


def _covered(path: str, found: list[str]) -> bool:
    return any(path.startswith(f + ".") or path.startswith(f + "[") for f in found)


def _plain(path: str) -> str:
    out, depth = [], 0
    for ch in path:
        depth += ch == "["
        if not depth:
            out.append(ch)
        depth -= ch == "]"
    return "".join(out)
