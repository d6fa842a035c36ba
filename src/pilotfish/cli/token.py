"""`pilotfish token`: read-only tokens for dashboards and CI, and bootstrap
tokens for node agents joining (kubeadm's `token create/list/delete`),
beside the admin token.

They are kept (hashed) in the control plane's data directory, which a running
control plane re-reads, so a token works, or stops working, at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography import x509

from pilotfish.api.errors import ApiError
from pilotfish.api.gotypes import parse_duration_ns
from pilotfish.ca.pin import ca_cert_hash
from pilotfish.cli.commands import CliError
from pilotfish.cli.output import align
from pilotfish.config import load_client_config
from pilotfish.controlplane.api_tls import ROOT_FILE
from pilotfish.controlplane.auth import (
    create_read_only_token,
    delete_read_only_token,
    read_only_token_names,
)
from pilotfish.controlplane.bootstrap_tokens import (
    TOKEN,
    create_bootstrap_token,
    delete_bootstrap_token,
    read_bootstrap_tokens,
    token_rows,
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
    kind = create.add_mutually_exclusive_group(required=True)
    kind.add_argument(
        "--read-only",
        action="store_true",
        help="the token may read everything (Secrets included) and write nothing",
    )
    kind.add_argument(
        "--bootstrap",
        action="store_true",
        help="a node agent's bootstrap token (ID.SECRET): it may only ask for its node's "
        "certificate (pilotfish node --join)",
    )
    create.add_argument(
        "name", nargs="?", help="who the token is for, as it appears in 403 messages"
    )
    create.add_argument(
        "--ttl",
        default="24h",
        help="how long a bootstrap token lives, a Go duration; 0: for ever (default 24h)",
    )
    create.add_argument("--description", default="", help="a bootstrap token's description")
    create.add_argument(
        "--print-join-command",
        action="store_true",
        help="print the whole `pilotfish node --join` command for the new bootstrap token",
    )
    create.set_defaults(handler=_create)
    listing = verbs.add_parser(
        "list", parents=[data], help="bootstrap tokens (as kubeadm's table) and read-only tokens"
    )
    listing.set_defaults(handler=_list)
    delete = verbs.add_parser("delete", parents=[data], help="revoke a token")
    delete.add_argument("name", help="a read-only token's name, or a bootstrap token's ID")
    delete.set_defaults(handler=_delete)


def _create(args: argparse.Namespace) -> int:
    if args.bootstrap:
        return _create_bootstrap(args)
    if args.name is None:
        raise CliError("a read-only token needs a name: token create --read-only NAME")
    try:
        print(create_read_only_token(args.data_dir, args.name))
    except ApiError as e:  # refused here, not by a server
        raise CliError(e.message) from None
    return 0


def _create_bootstrap(args: argparse.Namespace) -> int:
    if args.name is not None:
        raise CliError("a bootstrap token has no name (its ID is made for it); see --description")
    try:
        ttl_s = parse_duration_ns(args.ttl) / 1e9
    except ValueError as e:
        raise CliError(f"--ttl: {e}") from None
    join = join_command(args.data_dir, "") if args.print_join_command else None  # check first
    try:
        token = create_bootstrap_token(args.data_dir, ttl_s, args.description)
    except ApiError as e:
        raise CliError(e.message) from None
    print(join_command(args.data_dir, token) if join is not None else token)
    return 0


def join_command(data_dir: Path, token: str) -> str:
    """kubeadm's --print-join-command: the server from the control plane's
    client config, the hash of the CA its REST API is verified with."""
    root = next(
        (p for p in (data_dir / ROOT_FILE, data_dir / "ca" / "root-cert.pem") if p.exists()), None
    )
    if root is None:
        raise CliError(
            f"no CA certificate in {data_dir} (is the control plane started with the mesh CA?)"
        )
    pin = ca_cert_hash(x509.load_pem_x509_certificate(root.read_bytes()))
    server = load_client_config().server
    return f"pilotfish node --node-name NODE --join {server} --token {token} --ca-cert-hash {pin}"


def _list(args: argparse.Namespace) -> int:
    rows = token_rows(args.data_dir)
    names = read_only_token_names(args.data_dir)
    if rows:
        headers = ["TOKEN", "TTL", "EXPIRES", "USAGES", "DESCRIPTION", "EXTRA GROUPS"]
        print(align([headers, *rows]))
        if names:
            print("\nREAD-ONLY TOKENS")
    for name in names:
        print(name)
    return 0


def _delete(args: argparse.Namespace) -> int:
    name = args.name
    bootstrap = TOKEN.match(name) is not None or name in read_bootstrap_tokens(args.data_dir)
    try:
        if bootstrap and name not in read_only_token_names(args.data_dir):
            print(f'bootstrap token "{delete_bootstrap_token(args.data_dir, name)}" deleted')
            return 0
        delete_read_only_token(args.data_dir, name)
    except ApiError as e:
        raise CliError(e.message) from None
    print(f'read-only token "{name}" deleted')
    return 0
