"""Command-line values every command reads the same way, in a module light
enough for `pilotfish proxy` (cli/sidecar.py) to import."""

from __future__ import annotations

import argparse

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


def common_options() -> argparse.ArgumentParser:
    """The options every command that talks to the control plane takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        help="control plane URL (default: $PILOTFISH_SERVER, "
        "then the client config written by the control plane)",
    )
    common.add_argument("-n", "--namespace", help="namespace (default: default)")
    common.add_argument(
        "--certificate-authority",
        metavar="FILE",
        help="verify an HTTPS control plane with this CA (default: "
        "$PILOTFISH_CERTIFICATE_AUTHORITY, then the client config's, then the system's)",
    )
    return common


def files(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=required,
        default=None,
        metavar="FILE",
        help="file, directory or - for stdin (repeatable)",
    )
    p.add_argument("-R", "--recursive", action="store_true", help="read directories recursively")


def dry_run(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dry-run",
        nargs="?",
        const="server",
        default="none",
        choices=["none", "server"],
        help="server: validate and merge, store nothing",
    )
