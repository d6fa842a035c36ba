"""Command-line values every command reads the same way, in a module light
enough for `pilotfish proxy` (cli/sidecar.py) to import."""

from __future__ import annotations

from pilotfish.objects import Obj


class UsageError(Exception):
    """A bad argument, found before asking the server."""


def pairs(values: list[str] | None, flag: str, convert: type) -> Obj:
    out: Obj = {}
    for text in values or []:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {text!r}: expected NAME=VALUE")
        try:
            out[key] = convert(value)
        except ValueError:
            raise UsageError(f"{flag} {text!r}: {value!r} is not a number") from None
    return out
