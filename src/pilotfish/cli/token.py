"""`pilotfish token`: read-only tokens for dashboards and CI, beside the admin token.

They are kept (hashed) in the control plane's data directory, which a running
control plane re-reads, so a token works, or stops working, at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pilotfish.api.errors import ApiError
from pilotfish.cli.commands import CliError
from pilotfish.controlplane.auth import (
    create_read_only_token,
    delete_read_only_token,
    read_only_token_names,
)

DEFAULT_DATA_DIR = Path.home() / ".pilotfish" / "data"
Sub = argparse._SubParsersAction


def add_commands(sub: Sub[argparse.ArgumentParser]) -> None:
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="the control plane's data directory"
    )
    p = sub.add_parser("token", help="create, list or delete read-only API tokens")
    verbs = p.add_subparsers(title="commands", metavar="COMMAND", required=True)
    create = verbs.add_parser("create", parents=[data], help="create a token; prints it once")
    create.add_argument(
        "--read-only",
        action="store_true",
        required=True,
        help="the token may read everything (Secrets included) and write nothing",
    )
    create.add_argument("name", help="who the token is for, as it appears in 403 messages")
    create.set_defaults(handler=_create)
    listing = verbs.add_parser("list", parents=[data], help="the names of the read-only tokens")
    listing.set_defaults(handler=_list)
    delete = verbs.add_parser("delete", parents=[data], help="revoke a read-only token")
    delete.add_argument("name")
    delete.set_defaults(handler=_delete)


def _create(args: argparse.Namespace) -> int:
    try:
        print(create_read_only_token(args.data_dir, args.name))
    except ApiError as e:  # refused here, not by a server
        raise CliError(e.message) from None
    return 0


def _list(args: argparse.Namespace) -> int:
    for name in read_only_token_names(args.data_dir):
        print(name)
    return 0


def _delete(args: argparse.Namespace) -> int:
    try:
        delete_read_only_token(args.data_dir, args.name)
    except ApiError as e:
        raise CliError(e.message) from None
    print(f'read-only token "{args.name}" deleted')
    return 0
