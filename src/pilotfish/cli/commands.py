"""What each `pilotfish` subcommand does. Handlers print and return an exit code."""

from __future__ import annotations

import argparse
import difflib
import sys
import time
from datetime import datetime
from typing import Any

from pilotfish.api.errors import ApiError, NotFound
from pilotfish.api.kinds import Kind, registry
from pilotfish.cli import output
from pilotfish.cli.manifests import Document, read_documents
from pilotfish.client import Client
from pilotfish.model.snapshot import SECURITY
from pilotfish.translate.jwt import selects

Obj = dict[str, Any]
FIELD_MANAGER = "pilotfish"
DELETE_POLL_S = 0.5  # how often delete --wait looks whether a held object is gone
# Fields the server owns; showing them in a diff would only be noise.
SERVER_FIELDS = ("resourceVersion", "generation", "managedFields", "uid", "creationTimestamp")


class CliError(Exception):
    """A mistake found before asking the server: printed as `error: ...`."""


def resolve(name: str) -> Kind:
    try:
        return registry().resolve(name)
    except ApiError as e:
        raise CliError(e.message) from e


def warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)


def server_error(error: ApiError, context: str = "") -> None:
    if error.code == 401:  # kubectl's words for a missing or rejected token
        print("error: You must be logged in to the server (Unauthorized)", file=sys.stderr)
        return
    where = f"{context}: " if context else ""
    print(f"Error from server ({error.reason}): {where}{error.message}", file=sys.stderr)


def _client(args: argparse.Namespace) -> Client:
    return Client.from_config(args.server)


def _with_namespace(obj: Obj, kind: Kind, namespace: str | None) -> Obj:
    """Fill the namespace from -n when the document has none; a document that
    names another namespace than -n is an error, as in kubectl."""
    if not kind.namespaced:
        return obj
    meta = obj.setdefault("metadata", {})
    if namespace and meta.get("namespace") not in (None, namespace):
        raise CliError(
            f'the namespace from the provided object "{meta["namespace"]}" does not match '
            f"the namespace \"{namespace}\". You must pass '--namespace={meta['namespace']}'"
        )
    meta.setdefault("namespace", namespace or "default")
    return obj


def apply(args: argparse.Namespace) -> int:
    docs = read_documents(args.filename, args.recursive)
    ok = apply_documents(
        _client(args),
        docs,
        args.namespace,
        force=args.force_conflicts,
        dry_run=args.dry_run == "server",
    )
    return 0 if ok else 1


def apply_documents(
    client: Client,
    docs: list[Document],
    namespace: str | None,
    *,
    force: bool = False,
    dry_run: bool = False,
) -> bool:
    """Apply each document, printing one line per object as kubectl does; a
    document that fails is reported and the others still go. True if all went."""
    failed = False
    for doc in docs:
        try:
            kind, _ = registry().for_object(doc.obj)
            obj = _with_namespace(doc.obj, kind, namespace)
        except (ApiError, CliError) as e:
            failed = True
            print(f'error: "{doc.source}": {e}', file=sys.stderr)
            continue
        try:
            verb = _apply_one(client, kind, obj, force, dry_run)
        except ApiError as e:
            failed = True
            server_error(e, f'error when applying "{doc.source}"')
            continue
        suffix = " (server dry run)" if dry_run else ""
        print(f"{output.resource_name(kind, obj['metadata'].get('name', ''))} {verb}{suffix}")
    return not failed


def _apply_one(client: Client, kind: Kind, obj: Obj, force: bool, dry_run: bool) -> str:
    meta = obj.get("metadata", {})
    before = _get_or_none(client, kind, meta.get("name", ""), meta.get("namespace"))
    after, warnings = client.apply(obj, manager=FIELD_MANAGER, force=force, dry_run=dry_run)
    for w in warnings:
        warn(f"{output.resource_name(kind, meta.get('name', ''))}: {w}")
    if before is None:
        return "created"
    same = _strip(before) == _strip(after)
    return "unchanged" if same else "configured"


def _get_or_none(client: Client, kind: Kind, name: str, namespace: str | None) -> Obj | None:
    try:
        return client.get(kind, name, namespace)
    except NotFound:
        return None


def _strip(obj: Obj) -> Obj:
    """The object without what the server writes on its own."""
    clean = {k: v for k, v in obj.items() if k != "status"}
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in SERVER_FIELDS}
    return {**clean, "metadata": meta}


def get(args: argparse.Namespace) -> int:
    client = _client(args)
    kinds = [resolve(name) for name in args.kind.split(",") if name]
    namespace = None if args.all_namespaces else (args.namespace or "default")
    if args.watch:
        return _watch(client, kinds[0], namespace, args)
    for i, kind in enumerate(kinds):
        if args.name:
            items = [client.get(kind, n, namespace) for n in args.name]
        else:
            items = client.list(kind, namespace, args.selector).get("items", [])
        if i and items and args.output in (None, "wide"):
            print()
        _print_items(kind, items, args, prefix_kind=len(kinds) > 1)
    return 0


def _print_items(
    kind: Kind, items: list[Obj], args: argparse.Namespace, prefix_kind: bool = False
) -> None:
    if args.output == "yaml":
        print(
            output.to_yaml(items[0] if args.name and len(items) == 1 else _as_list(items)), end=""
        )
    elif args.output == "json":
        print(output.to_json(items[0] if args.name and len(items) == 1 else _as_list(items)))
    elif args.output == "name":
        for item in items:
            print(output.resource_name(kind, item["metadata"]["name"]))
    elif not items:
        where = "" if args.all_namespaces else f" in {args.namespace or 'default'} namespace"
        print(f"No resources found{where if kind.namespaced else ''}.", file=sys.stderr)
    else:
        prefix = output.kind_label(kind) + "/" if prefix_kind else ""
        print(
            output.table(
                kind,
                kind.versions[0],
                items,
                wide=args.output == "wide",
                all_namespaces=args.all_namespaces,
                name_prefix=prefix,
            )
        )


def _as_list(items: list[Obj]) -> Obj:
    return {"apiVersion": "v1", "kind": "List", "items": items}


def _watch(client: Client, kind: Kind, namespace: str | None, args: argparse.Namespace) -> int:
    """Current objects, then every change, until Ctrl-C; table headers print once."""
    header_shown = False
    try:
        for _, obj in client.watch(kind, namespace):
            if args.name and obj["metadata"]["name"] not in args.name:
                continue
            if args.output in (None, "wide"):
                lines = output.table(
                    kind,
                    kind.versions[0],
                    [obj],
                    wide=args.output == "wide",
                    all_namespaces=args.all_namespaces,
                ).splitlines()
                print("\n".join(lines if not header_shown else lines[1:]), flush=True)
                header_shown = True
            else:
                _print_items(kind, [obj], args)
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    return 0


def describe(args: argparse.Namespace) -> int:
    client, kind = _client(args), resolve(args.kind)
    namespace = args.namespace or "default"
    if args.name:
        items = [client.get(kind, args.name, namespace)]
    else:
        items = client.list(kind, namespace, args.selector).get("items", [])
    instances = client.instances() if kind.group == SECURITY else []
    texts = [
        describe_text(kind, item, events_of(client, item), selected_workloads(item, instances))
        for item in items
    ]
    print("\n\n".join(texts))
    return 0


def selected_workloads(policy: Obj, instances: list[Obj]) -> list[str] | None:
    """A security policy's workloads, as `namespace/instance (workload)`; None
    for other kinds. Istio's scope: mesh-wide from the root namespace,
    namespace-wide without a selector, else the selector's matches."""
    if not str(policy.get("apiVersion", "")).startswith(SECURITY + "/"):
        return None
    return [
        f"{i.get('namespace', '')}/{i.get('name', '')} ({i.get('workload', '')})"
        for i in instances
        if selects(policy, str(i.get("namespace", "")), i.get("labels") or {})
    ]


def events_of(client: Client, obj: Obj) -> list[Obj]:
    """The Events about `obj`, oldest first (none for a cluster-scoped one)."""
    namespace = obj.get("metadata", {}).get("namespace")
    if not namespace:
        return []
    return events_about(obj, client.list(resolve("Event"), namespace).get("items", []))


def events_about(obj: Obj, events: list[Obj]) -> list[Obj]:
    """Those of `events` whose involvedObject is `obj` (by kind and name, and
    by uid when both have one, as kubectl describe matches them), oldest first."""
    meta = obj.get("metadata", {})
    uid = meta.get("uid")

    def about(event: Obj) -> bool:
        involved = event.get("involvedObject") or {}
        if (involved.get("kind"), involved.get("name")) != (obj.get("kind"), meta.get("name")):
            return False
        return not (uid and involved.get("uid") and involved["uid"] != uid)

    return sorted(filter(about, events), key=_event_time)


def _event_time(event: Obj) -> tuple[str, str]:
    """When an event last happened, then its name to break ties."""
    meta = event.get("metadata", {})
    last = event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
    return str(last or meta.get("creationTimestamp") or ""), str(meta.get("name", ""))


def event_age(event: Obj, now: datetime | None = None) -> str:
    """kubectl's Age of an event: `3m`, or `3m (x4 over 10m)` when repeated."""
    seen = output.age(_event_time(event)[0] or None, now)
    count = int(event.get("count") or 1)
    if count > 1 and event.get("firstTimestamp"):
        seen += f" (x{count} over {output.age(event['firstTimestamp'], now)})"
    return seen


def events_table(events: list[Obj], now: datetime | None = None) -> str:
    """kubectl describe's Events section: Type, Reason, Age, From, Message."""
    if not events:
        return "Events:       <none>"
    rows = [
        ["Type", "Reason", "Age", "From", "Message"],
        ["----", "------", "----", "----", "-------"],
    ]
    for e in events:
        source = e.get("source") or {}
        origin = ", ".join(str(source[k]) for k in ("component", "host") if source.get(k))
        message = " ".join(str(e.get("message", "")).split())
        rows.append([e.get("type", ""), e.get("reason", ""), event_age(e, now), origin, message])
    return "Events:\n" + "\n".join("  " + line for line in output.align(rows).splitlines())


def describe_text(
    kind: Kind, obj: Obj, events: list[Obj] | None = None, selected: list[str] | None = None
) -> str:
    """kubectl describe's layout: identity first, then spec and status as indented
    text; `selected`: the workloads a policy applies to."""
    meta = obj.get("metadata", {})
    lines = [
        f"Name:         {meta.get('name', '')}",
        *([f"Namespace:    {meta.get('namespace', '')}"] if kind.namespaced else []),
        f"Labels:       {_pairs(meta.get('labels'))}",
        f"Annotations:  {_pairs(meta.get('annotations'))}",
        f"API Version:  {obj.get('apiVersion', '')}",
        f"Kind:         {obj.get('kind', '')}",
        "Metadata:",
        f"  Creation Timestamp:  {meta.get('creationTimestamp', '')}",
        f"  Generation:          {meta.get('generation', '')}",
        f"  Resource Version:    {meta.get('resourceVersion', '')}",
        f"  UID:                 {meta.get('uid', '')}",
        f"  Managers:            {', '.join(_managers(meta))}",
    ]
    for section in ("spec", "data", "stringData", "status"):
        if section in obj:
            lines.append(f"{section[0].upper()}{section[1:]}:")
            lines.extend("  " + line for line in output.to_yaml(obj[section]).splitlines())
    if selected is not None:
        lines.append("Selected Workloads:" + ("" if selected else "  <none>"))
        lines.extend(f"  {w}" for w in selected)
    lines.append(events_table(events or []))
    return "\n".join(lines)


def _pairs(mapping: Obj | None) -> str:
    if not mapping:
        return "<none>"
    return "\n              ".join(f"{k}={v}" for k, v in sorted(mapping.items()))


def _managers(meta: Obj) -> list[str]:
    return sorted(
        {f"{m.get('manager')} ({m.get('operation')})" for m in meta.get("managedFields", [])}
    )


def delete(args: argparse.Namespace) -> int:
    client, failed, held = _client(args), False, []
    dry_run = args.dry_run == "server"
    for kind, name, namespace in _targets(args):
        try:
            deleted = client.delete(kind, name, namespace, dry_run=dry_run)
        except ApiError as e:
            failed = True
            server_error(e)
            continue
        print(f'{output.kind_label(kind)} "{name}" deleted{" (server dry run)" if dry_run else ""}')
        if "deletionTimestamp" in deleted["metadata"] and not dry_run:
            held.append((kind, name, namespace))
    if args.wait == "true" and not _gone(client, held, args.timeout):
        failed = True
    return 1 if failed else 0


def _gone(client: Client, held: list[tuple[Kind, str, str | None]], timeout_s: float) -> bool:
    """Wait until objects their finalizers held are gone, as kubectl delete does."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    for kind, name, namespace in held:
        while True:
            try:
                client.get(kind, name, namespace)
            except NotFound:
                break
            if deadline is not None and time.monotonic() > deadline:
                print(
                    f"error: timed out waiting for the condition on {kind.plural}/{name}",
                    file=sys.stderr,
                )
                return False
            time.sleep(DELETE_POLL_S)
    return True


def _targets(args: argparse.Namespace) -> list[tuple[Kind, str, str | None]]:
    if args.filename:
        found = []
        for doc in read_documents(args.filename, args.recursive):
            kind, _ = registry().for_object(doc.obj)
            obj = _with_namespace(doc.obj, kind, args.namespace)
            found.append((kind, obj["metadata"]["name"], obj["metadata"].get("namespace")))
        return found
    if not args.kind or not args.names:
        raise CliError("you must specify a resource type and name(s), or -f FILE")
    kind = resolve(args.kind)
    return [(kind, n, args.namespace or "default") for n in args.names]


def diff(args: argparse.Namespace) -> int:
    """Live object vs what applying would make it (server dry run): exit 1 if they
    differ, 0 if not, as `kubectl diff` does."""
    client, changed = _client(args), False
    for doc in read_documents(args.filename, args.recursive):
        kind, _ = registry().for_object(doc.obj)
        obj = _with_namespace(doc.obj, kind, args.namespace)
        meta = obj["metadata"]
        live = _get_or_none(client, kind, meta["name"], meta.get("namespace"))
        merged, _ = client.apply(
            obj, manager=FIELD_MANAGER, force=args.force_conflicts, dry_run=True
        )
        text = _unified(output.resource_name(kind, meta["name"]), live, merged)
        if text:
            changed = True
            print(text, end="")
    return 1 if changed else 0


def _unified(name: str, live: Obj | None, merged: Obj) -> str:
    before = output.to_yaml(_strip(live)).splitlines(keepends=True) if live else []
    after = output.to_yaml(_strip(merged)).splitlines(keepends=True)
    return "".join(difflib.unified_diff(before, after, f"live/{name}", f"merged/{name}"))


def validate(args: argparse.Namespace) -> int:
    """Offline, like `istioctl validate`: one line per error, non-zero if any."""
    from pilotfish.api.validation import analyze
    from pilotfish.api.validation import validate as check

    docs = read_documents(args.filename, args.recursive)
    invalid = 0
    for doc in docs:
        errors = check(doc.obj)
        invalid += bool(errors)
        for error in errors:
            print(f"{doc.source}: {_label(doc)}: {error}", file=sys.stderr)
    for doc in docs:
        for w in analyze(doc.obj, _lookup_in(docs)):
            warn(f"{doc.source}: {_label(doc)}: {w}")
    valid = len(docs) - invalid
    print(f"{valid} of {len(docs)} document{'s' if len(docs) != 1 else ''} valid")
    return 1 if invalid else 0


def _label(doc: Document) -> str:
    meta = doc.obj.get("metadata") or {}
    name = meta.get("name", f"#{doc.index + 1}") if isinstance(meta, dict) else f"#{doc.index + 1}"
    namespace = meta.get("namespace", "default") if isinstance(meta, dict) else "default"
    return f"{doc.obj.get('kind', '?')} {namespace}/{name}"


def _lookup_in(docs: list[Document]) -> Any:
    def lookup(group: str, kind: str, namespace: str) -> list[Obj]:
        found = []
        for d in docs:
            api_group = str(d.obj.get("apiVersion", "")).rpartition("/")[0]
            ns = (d.obj.get("metadata") or {}).get("namespace", "default")
            if api_group == group and d.obj.get("kind") == kind and ns == namespace:
                found.append(d.obj)
        return found

    return lookup
