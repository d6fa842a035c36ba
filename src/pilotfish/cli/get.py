"""`pilotfish get`, as kubectl get: `TYPE`, `TYPE NAME...`, `TYPE/NAME...`,
`TYPE1,TYPE2`, categories (`all`), `-l`, `-A`, `--watch`, and the output
formats -o yaml|json|wide|name|jsonpath=...|custom-columns=...."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from pilotfish.api.errors import ApiError
from pilotfish.api.kinds import Kind, registry
from pilotfish.cli import instances, jsonpath, output
from pilotfish.cli.commands import CliError, event_time, resolve, server_error
from pilotfish.client import Client
from pilotfish.objects import Obj

FORMATS = ("yaml", "json", "wide", "name", "jsonpath=TEMPLATE", "custom-columns=SPEC")
NONE = "<none>"


@dataclass(frozen=True)
class Request:
    """What to get: each kind with the names asked for (none: list them all)."""

    targets: tuple[tuple[Kind, tuple[str, ...]], ...]
    single: bool  # one object by name: -o yaml/json/jsonpath print it, not a List
    with_kind: bool  # several kinds: names print as kind.group/name, as kubectl does


def parse_targets(words: list[str]) -> Request:
    """kubectl's resource arguments: `TYPE[,TYPE...] [NAME...]` or `TYPE/NAME...`."""
    if not words:
        raise CliError("you must specify the type of resource to get")
    if any("/" in w for w in words):
        if not all("/" in w for w in words):
            raise CliError(
                "there is no need to specify a resource type as a separate argument when "
                "passing arguments in resource/name form (e.g. 'pilotfish get "
                "resource/<resource_name>' instead of 'pilotfish get resource "
                "resource/<resource_name>'"
            )
        pairs = [w.split("/", 1) for w in words]
        if any(not t or not n for t, n in pairs):
            raise CliError(
                f"arguments in resource/name form must have a single resource and name: {words}"
            )
        targets: dict[Kind, list[str]] = {}
        for type_name, name in pairs:
            targets.setdefault(resolve(type_name), []).append(name)
        request = tuple((k, tuple(names)) for k, names in targets.items())
        return Request(request, len(pairs) == 1, len(targets) > 1)
    kinds = _kinds(words[0])
    names = tuple(words[1:])
    if names and len(kinds) > 1:
        raise CliError("you may only specify a single resource type when naming objects")
    grouped = len(kinds) > 1 or any(not _is_kind(t) for t in words[0].split(","))
    return Request(tuple((k, names) for k in kinds), len(names) == 1, grouped)


def _kinds(text: str) -> list[Kind]:
    kinds: list[Kind] = []
    for word in filter(None, text.split(",")):
        found = [resolve(word)] if _is_kind(word) else registry().category(word)
        kinds.extend(k for k in found if k not in kinds)
    return kinds


def _is_kind(word: str) -> bool:
    """A kind's name rather than a category's (`all`, `istio-io`)."""
    return not registry().category(word) or word.lower() in _kind_names()


def _kind_names() -> set[str]:
    names: set[str] = set()
    for k in registry():
        names.update((k.plural, k.singular, k.kind.lower(), *k.short_names))
    return names


def get(args: argparse.Namespace) -> int:
    if args.kind.lower() in instances.NAMES:
        return instances.get_instances(args)
    fmt = Format.of(args.output)
    request = parse_targets([args.kind, *args.name])
    client = Client.from_config(args.server)
    namespace = None if args.all_namespaces else (args.namespace or "default")
    if args.watch:
        return watch(client, request, namespace, args, fmt)
    found: list[tuple[Kind, list[Obj]]] = []
    errors: list[ApiError] = []
    for kind, names in request.targets:
        found.append((kind, _fetch(client, kind, names, namespace, args.selector, errors)))
    fmt.print(found, request, args)
    sys.stdout.flush()
    for error in errors:  # after what was found, as kubectl reports them
        server_error(error)
    return 1 if errors else 0


def _fetch(
    client: Client,
    kind: Kind,
    names: tuple[str, ...],
    namespace: str | None,
    selector: str | None,
    errors: list[ApiError],
) -> list[Obj]:
    """The objects asked for; a name not found goes to `errors` and the rest go on."""
    if not names:
        return list(client.list(kind, namespace, selector).get("items") or [])
    items = []
    for name in names:
        try:
            items.append(client.get(kind, name, namespace))
        except ApiError as e:
            errors.append(e)
    return items


@dataclass(frozen=True)
class Format:
    kind: str  # table, wide, yaml, json, name, jsonpath, custom-columns
    template: tuple[jsonpath.Node, ...] = ()
    columns: tuple[tuple[str, jsonpath.Expr], ...] = ()

    @classmethod
    def of(cls, text: str | None) -> Format:
        if text is None:
            return cls("table")
        name, _, spec = text.partition("=")
        try:
            if name == "jsonpath" and spec:
                return cls("jsonpath", template=jsonpath.parse(spec))
            if name == "custom-columns" and spec:
                return cls("custom-columns", columns=_columns(spec))
        except jsonpath.JsonPathError as e:
            raise CliError(f"error parsing {name} template: {e}") from None
        if text in ("yaml", "json", "wide", "name"):
            return cls(text)
        raise CliError(
            f'unable to match a printer suitable for the output format "{text}", '
            f"allowed formats are: {','.join(FORMATS)}"
        )

    def print(self, found: list[tuple[Kind, list[Obj]]], request: Request, args: Any) -> None:
        items = [item for _, objs in found for item in objs]
        whole = items[0] if request.single and len(items) == 1 else _as_list(items)
        if self.kind == "yaml":
            print(output.to_yaml(whole), end="")
        elif self.kind == "json":
            print(output.to_json(whole))
        elif self.kind == "jsonpath":
            print(jsonpath.render(self.template, whole), end="")  # no newline, as kubectl
        elif self.kind == "name":
            for kind, objs in found:
                for item in objs:
                    print(output.resource_name(kind, item["metadata"]["name"]))
        elif self.kind == "custom-columns":
            if items:
                print(custom_columns(self.columns, items))
        else:
            _tables(found, request, args, wide=self.kind == "wide")
        if not items and self.kind in ("table", "wide", "custom-columns"):
            _none_found(found, request, args)


def _columns(spec: str) -> tuple[tuple[str, jsonpath.Expr], ...]:
    columns = []
    for part in spec.split(","):
        header, sep, path = part.partition(":")
        if not sep or not header:
            raise CliError(f'custom-columns format: expected HEADER:JSONPATH, got "{part}"')
        path = path.strip()
        if path.startswith("{") and path.endswith("}"):
            path = path[1:-1]
        columns.append(
            (header, jsonpath.parse_path(path if path.startswith((".", "[")) else "." + path))
        )
    return tuple(columns)


def custom_columns(columns: tuple[tuple[str, jsonpath.Expr], ...], items: list[Obj]) -> str:
    """kubectl's custom columns: a value per column, several joined by commas,
    `<none>` where there is none."""
    rows = [[header for header, _ in columns]]
    for item in items:
        row = []
        for _, path in columns:
            values = jsonpath.evaluate(path, item)
            row.append(",".join(jsonpath.text(v) for v in values) if values else NONE)
        rows.append(row)
    return output.align(rows)


def _tables(found: list[tuple[Kind, list[Obj]]], request: Request, args: Any, wide: bool) -> None:
    printed = False
    for kind, items in found:
        if not items:
            continue
        if printed:
            print()
        prefix = output.kind_label(kind) + "/" if request.with_kind else ""
        if (kind.group, kind.kind) == ("", "Event") and not wide:
            print(events_table(items, all_namespaces=args.all_namespaces))
            printed = True
            continue
        print(
            output.table(
                kind,
                kind.versions[0],
                items,
                wide=wide,
                all_namespaces=args.all_namespaces,
                name_prefix=prefix,
            )
        )
        printed = True


def events_table(events: list[Obj], *, all_namespaces: bool) -> str:
    """kubectl get events' columns (no NAME, no AGE), oldest first."""
    header = ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    rows = [(["NAMESPACE"] if all_namespaces else []) + header]
    for e in sorted(events, key=event_time):
        involved = e.get("involvedObject") or {}
        obj = f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}"
        rows.append(
            ([e["metadata"].get("namespace", "")] if all_namespaces else [])
            + [
                output.age(event_time(e)[0] or None),
                str(e.get("type", "")),
                str(e.get("reason", "")),
                obj,
                " ".join(str(e.get("message", "")).split()),
            ]
        )
    return output.align(rows)


def _none_found(found: list[tuple[Kind, list[Obj]]], request: Request, args: Any) -> None:
    if any(names for _, names in request.targets):
        return  # each missing name was reported as NotFound
    namespaced = any(kind.namespaced for kind, _ in found)
    where = (
        ""
        if args.all_namespaces or not namespaced
        else f" in {args.namespace or 'default'} namespace"
    )
    print(f"No resources found{where}.", file=sys.stderr)


def _as_list(items: list[Obj]) -> Obj:
    return {"apiVersion": "v1", "kind": "List", "items": items}


def watch(client: Client, request: Request, namespace: str | None, args: Any, fmt: Format) -> int:
    """Current objects, then every change, until Ctrl-C; a table's header
    prints once. One kind, as kubectl watches one."""
    if len(request.targets) != 1:
        raise CliError("you may only specify a single resource type with --watch")
    kind, names = request.targets[0]
    header_shown = False
    try:
        for _, obj in client.watch(kind, namespace, label_selector=args.selector):
            if names and obj["metadata"]["name"] not in names:
                continue
            if fmt.kind in ("table", "wide"):
                lines = output.table(
                    kind,
                    kind.versions[0],
                    [obj],
                    wide=fmt.kind == "wide",
                    all_namespaces=args.all_namespaces,
                ).splitlines()
                print("\n".join(lines if not header_shown else lines[1:]), flush=True)
                header_shown = True
            else:
                fmt.print([(kind, [obj])], Request(request.targets, True, False), args)
                sys.stdout.flush()
    except KeyboardInterrupt:
        return 1  # kubectl's watch ends on Ctrl-C through its interrupt handler: exit 1
    return 0
