"""`pilotfish proxy`: its arguments and its run, in a module of its own so that
a sidecar parses its command line without importing the other commands
(cli/main.py's imports reach the API's schemas, the analyzers and the CA:
~10 MiB of a sidecar's memory, for nothing it uses). `pilotfish.cli.run`
sends `pilotfish proxy ...` here directly; cli/main.py lists it with the
other commands, for `pilotfish --help`.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from typing import TYPE_CHECKING

from pilotfish.cli import terminal
from pilotfish.cli.flags import UsageError, pairs

if TYPE_CHECKING:
    from pathlib import Path

    from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap

    from pilotfish.proxy.register import Registrar


def main(argv: list[str]) -> int:
    """`pilotfish proxy ...` (argv[0] is "proxy"), as cli/main.py would run it."""
    parser = argparse.ArgumentParser(prog="pilotfish", formatter_class=formatter)
    add_command(parser.add_subparsers(metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return terminal.EXIT_INTERRUPTED


def formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's help formatter. argparse makes one for every argument added,
    and its default width imports shutil (with zlib, bz2 and lzma: 0.4 MiB
    of every sidecar, docs/benchmarks.md) to ask the terminal; where there
    is none and no COLUMNS, shutil's answer is its fallback of 80 columns,
    given here without asking (argparse keeps 2 of them as margin)."""
    stdout = sys.__stdout__
    if "COLUMNS" in os.environ or (stdout is not None and stdout.isatty()):
        return argparse.HelpFormatter(prog)
    return argparse.HelpFormatter(prog, width=80 - 2)


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "proxy",
        help="run the sidecar proxy from an Envoy-style bootstrap",
        formatter_class=formatter,
    )
    p.add_argument(
        "--bootstrap",
        required=True,
        metavar="FILE",
        help="Envoy v3 bootstrap, YAML or JSON",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--register",
        action="store_true",
        help="keep this instance in the control plane's registry while serving "
        "(who it is from the bootstrap's node metadata: NAME, NAMESPACE, WORKLOAD_NAME, "
        "LABELS, SERVICE_ACCOUNT); deregister at shutdown",
    )
    p.add_argument(
        "--port",
        action="append",
        metavar="NAME=PORT",
        help="with --register: a port callers reach, this sidecar's inbound one (repeatable)",
    )
    p.add_argument(
        "--app-port",
        action="append",
        metavar="NAME=PORT",
        help="with --register: where the application listens behind the port NAME",
    )
    p.add_argument("--server", help="with --register: the control plane URL (as other commands)")
    p.add_argument(
        "--ca-token-file",
        type=_path,
        metavar="FILE",
        help="hold a workload certificate from the control plane's CA (SDS secrets default and "
        "ROOTCA), proving the identity with the service account token in FILE "
        "(`pilotfish create token`)",
    )
    p.set_defaults(handler=run)


def _path(text: str) -> Path:
    """argparse's type for a file only some sidecars name: pathlib (with
    urllib.parse and ipaddress, 0.5 MiB) loads with it, not in every sidecar."""
    from pathlib import Path

    return Path(text)


def run(args: argparse.Namespace) -> int:
    import logging

    from pilotfish.proxy.bootstrap import BootstrapError
    from pilotfish.proxy.process import RegisterWith, run_proxy

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    if (args.port or args.app_port or args.server) and not args.register:
        raise UsageError("--port, --app-port and --server go with --register")
    register: RegisterWith | None = None
    if args.register:
        ports = pairs(args.port, "--port", int)
        app_ports = pairs(args.app_port, "--app-port", int)
        mtls = args.ca_token_file is not None  # a certificate: callers may send mutual TLS
        register = partial(_registrar, ports, app_ports, args.server, mtls)
    try:
        return run_proxy(args.bootstrap, register, args.ca_token_file)
    except (BootstrapError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _registrar(
    ports: dict[str, int],
    app_ports: dict[str, int],
    server: str | None,
    mtls: bool,
    bootstrap: Bootstrap,
) -> Registrar:
    from pilotfish.client import Client
    from pilotfish.proxy.register import Registrar

    admin = bootstrap.admin.address.socket_address.port_value
    client = Client.from_config(server)
    return Registrar.for_node(bootstrap.node, ports, app_ports, admin, client, mtls)
