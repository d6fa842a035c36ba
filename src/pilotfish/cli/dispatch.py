"""Running one parsed command with kubectl's exit codes, and `pilotfish
apply` parsed on its own: a change leaves the CLI before the rest of the
command line (the analyzers, the servers, the sidecar: 0.9 s of imports on a
loaded machine) would even have loaded. Only the client library and the
kinds are imported here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from pilotfish.api.errors import ApiError
from pilotfish.cli import commands, terminal
from pilotfish.cli.flags import UsageError, common_options, dry_run, files
from pilotfish.cli.manifests import ManifestError
from pilotfish.config import certificate_authority

Handler = Callable[[argparse.Namespace], int]
APPLY_HELP = "create or update resources (server-side apply)"


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse `argv` and run the command it names; errors as kubectl reports them."""
    terminal.whole_writes()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        with certificate_authority(getattr(args, "certificate_authority", None)):
            code = handler(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except (commands.CliError, ManifestError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
    except ApiError as e:
        commands.server_error(e)
    except KeyboardInterrupt:
        return terminal.EXIT_INTERRUPTED
    except BrokenPipeError:
        return terminal.closed_pipe()
    return 1


def add_apply(sub: Any, common: argparse.ArgumentParser) -> None:
    """`apply` among the other commands (`pilotfish --help` lists it)."""
    _apply_options(sub.add_parser("apply", parents=[common], help=APPLY_HELP))


def apply_parser() -> argparse.ArgumentParser:
    """`apply` alone: the same options and help as `add_apply`'s."""
    parser = argparse.ArgumentParser(prog="pilotfish apply", parents=[common_options()])
    _apply_options(parser)
    return parser


def _apply_options(p: argparse.ArgumentParser) -> None:
    files(p)
    p.add_argument(
        "--force-conflicts",
        action="store_true",
        help="take ownership of fields another manager owns",
    )
    dry_run(p)
    p.set_defaults(handler=commands.apply)
