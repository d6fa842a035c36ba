"""`pilotfish analyze`: istioctl analyze's checks over the live control plane,
files, or files laid over the live state; its output and exit codes."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path
from typing import Any

from pilotfish.analysis import ANALYZERS, Analyzer, config_kinds
from pilotfish.analysis import analyze as run_analyzers
from pilotfish.analysis.config import name_of, namespace_of
from pilotfish.analysis.messages import CODES, DOC_URL, LEVELS, Message, level_at_least
from pilotfish.api.errors import ApiError
from pilotfish.api.kinds import registry
from pilotfish.cli import output
from pilotfish.cli.manifests import ManifestError, read_documents
from pilotfish.client import Client
from pilotfish.objects import Obj

# istioctl's exit codes (istioctl/pkg/util/exitcodes.go).
EXIT_FILE_PARSE = 78
EXIT_ISSUES_FOUND = 79


def add_command(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "analyze",
        parents=[common],
        help="find configuration problems, as istioctl analyze (live, files, or both)",
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="files or directories to analyze")
    p.add_argument("-f", "--filename", action="append", default=[], metavar="FILE", help="as FILE")
    p.add_argument("-R", "--recursive", action="store_true", help="read directories recursively")
    p.add_argument(
        "-L", "--list-analyzers", action="store_true", help="list the analyzers and exit"
    )
    p.add_argument("-A", "--all-namespaces", action="store_true", help="analyze all namespaces")
    p.add_argument(
        "-k",
        "--use-kube",
        type=_boolean,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="read the live control plane (default true); --use-kube=false: files only",
    )
    p.add_argument("-o", "--output", choices=["log", "json", "yaml"], default="log")
    levels = f"one of {', '.join(LEVELS)}"
    p.add_argument(
        "--failure-threshold",
        type=_level,
        default="Error",
        help=f"exit 79 at this level ({levels})",
    )
    p.add_argument(
        "--output-threshold", type=_level, default="Info", help=f"print from this level ({levels})"
    )
    p.add_argument(
        "-S",
        "--suppress",
        action="append",
        default=[],
        metavar="CODE=KIND NAME",
        help='suppress a code on a resource, e.g. "IST0102=Namespace default" or '
        '"IST0101=VirtualService *.default" (repeatable)',
    )
    p.set_defaults(handler=run)


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "t"):
        return True
    if text.lower() in ("false", "0", "f"):
        return False
    raise argparse.ArgumentTypeError(f'invalid boolean "{text}"')


def _level(text: str) -> str:
    for level in LEVELS:
        if text.lower() == level.lower():
            return level
    raise argparse.ArgumentTypeError(f"{text} not a valid level: one of {', '.join(LEVELS)}")


def run(args: argparse.Namespace) -> int:
    if args.list_analyzers:
        for analyzer in sorted(ANALYZERS, key=lambda a: a.name):
            print(f"* {analyzer.name}:\n    {analyzer.description}")
        return 0
    suppressions = [_suppression(s) for s in args.suppress]
    namespace = None if args.all_namespaces else (args.namespace or "default")
    paths = list(args.filename) + list(args.files)
    missing = [p for p in paths if p != "-" and not Path(p).exists()]
    if missing:  # istioctl fails the command (exit 1); only a file that does not parse is 78
        raise ManifestError(f'the path "{missing[0]}" does not exist')
    try:
        files = [d.obj for d in read_documents(paths, args.recursive)] if paths else []
    except ManifestError as e:
        print(f"Error(s) adding files: {e}", file=sys.stderr)
        return EXIT_FILE_PARSE
    files = [_with_namespace(obj, namespace) for obj in files]
    live, analyzers = _live(Client.from_config(args.server)) if args.use_kube else ([], ANALYZERS)
    messages = run_analyzers(_overlay(live, files), analyzers)
    if namespace is not None:
        messages = [m for m in messages if m.resource.namespace in ("", namespace)]
    messages = [m for m in messages if not any(_suppressed(m, s) for s in suppressions)]
    shown = [m for m in messages if level_at_least(m.type.level, args.output_threshold)]
    _print(shown, args.output)
    target = f"namespace: {namespace}" if namespace else "all namespaces"
    if not shown:
        what = "\n".join(paths) if paths else target
        print(f"\u2714 No validation issues found when analyzing {what}.", file=sys.stderr)
    if args.output == "log" and any(
        level_at_least(m.type.level, args.failure_threshold) for m in messages
    ):
        print(f"Error: Analyzers found issues when analyzing {target}.", file=sys.stderr)
        print(f"See {DOC_URL} for more information about causes and resolutions.", file=sys.stderr)
        return EXIT_ISSUES_FOUND
    return 0


def _print(messages: list[Message], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps([m.to_dict() for m in messages], indent="\t"))
    elif fmt == "yaml":
        print(output.to_yaml([m.to_dict() for m in messages]), end="")
    else:  # istioctl prints its (maybe empty) text and a newline
        print("\n".join(str(m) for m in messages))


def _live(client: Client) -> tuple[list[Obj], tuple[Analyzer, ...]]:
    """The live objects, and the analyzers they allow: without a token that
    may read Secrets, credentialNames are not checked rather than all
    reported missing."""
    found: list[Obj] = []
    analyzers = ANALYZERS
    for kind in config_kinds():
        try:
            found += client.list(kind, None).get("items", [])
        except ApiError as e:
            if kind.kind != "Secret" or e.code != 403:
                raise
            print(f"Warning: credentialName checks skipped: {e.message}", file=sys.stderr)
            analyzers = tuple(a for a in ANALYZERS if a.name != "gateway.SecretAnalyzer")
    return found, analyzers


def _with_namespace(obj: Obj, namespace: str | None) -> Obj:
    """A file's object without a namespace lands in the one analyzed, as istioctl does."""
    try:
        namespaced = registry().for_object(obj)[0].namespaced
    except ApiError:
        return obj
    if not namespaced or namespace is None or namespace_of(obj):
        return obj
    found = obj.get("metadata")
    meta: Obj = found if isinstance(found, dict) else {}
    return {**obj, "metadata": {**meta, "namespace": namespace}}


def _overlay(live: list[Obj], files: list[Obj]) -> list[Obj]:
    """Files as if applied on top of the live state: a file's object replaces
    the live one of the same kind, namespace and name."""

    def key(obj: Obj) -> tuple[str, str, str, str]:
        return (
            str(obj.get("apiVersion", "")).rpartition("/")[0],
            str(obj.get("kind")),
            namespace_of(obj),
            name_of(obj),
        )

    replaced = {key(o) for o in files}
    return [o for o in live if key(o) not in replaced] + files


def _suppression(text: str) -> tuple[str, str]:
    code, sep, resource = text.partition("=")
    if not sep or "=" in resource:
        raise ManifestError(
            f"{text} is not a valid suppression value. See pilotfish analyze --help"
        )
    if code not in CODES:
        print(
            f"Warning: Supplied message code '{code}' is an unknown message code "
            "and will not have any effect.",
            file=sys.stderr,
        )
    return code, resource


def _suppressed(message: Message, suppression: tuple[str, str]) -> bool:
    """istioctl names a resource `Kind name.namespace`; `Kind namespace/name` works too."""
    code, pattern = suppression
    r = message.resource
    names = {f"{r.kind} {r.name}.{r.namespace}", r.origin} if r.namespace else {r.origin}
    return code == message.type.code and any(fnmatch.fnmatchcase(n, pattern) for n in names)
