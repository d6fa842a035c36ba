"""What each `pilotfish` subcommand does. Handlers print and return an exit code."""

from __future__ import annotations

import argparse
import difflib
import sys
import time
from datetime import datetime

from pilotfish.api.errors import ApiError, NotFound
from pilotfish.api.kinds import Kind, registry
from pilotfish.cli import output
from pilotfish.cli.manifests import Document, read_documents
from pilotfish.client import Client
from pilotfish.objects import Obj, user_part

FIELD_MANAGER = "pilotfish"
DELETE_POLL_S = 0.5  # how often delete --wait looks whether a held object is gone


class CliError(Exception):
    """A mistake found before asking the server: printed as `error: ...`."""


def resolve(name: str) -> Kind:
    try:
        return registry().resolve(name)
    except ApiError as e:
        raise CliError(e.message) from e


def warn(message: str) -> None:
    print(output.escape_terminal(f"Warning: {message}"), file=sys.stderr)


def server_error(error: ApiError, context: str = "") -> None:
    """kubectl's `Error from server (Reason): ...` for what the server answered;
    `error: ...` for what went wrong on this side (no answer, a bad object)."""
    if error.code == 401 and error.from_server:  # kubectl's words for a rejected token
        print("error: You must be logged in to the server (Unauthorized)", file=sys.stderr)
        return
    where = f"{context}: " if context else ""
    text = f"{where}{error.message}"
    if error.from_server:
        print(
            output.escape_terminal(f"Error from server ({error.reason}): {text}"), file=sys.stderr
        )
    else:
        print(output.escape_terminal(f"error: {text}"), file=sys.stderr)


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
            verb = _apply_one(client, obj, force, dry_run)
        except ApiError as e:
            failed = True
            server_error(e, f'error when applying "{doc.source}"')
            continue
        suffix = " (server dry run)" if dry_run else ""
        print(f"{output.resource_name(kind, obj['metadata'].get('name', ''))} {verb}{suffix}")
    return not failed


def _apply_one(client: Client, obj: Obj, force: bool, dry_run: bool) -> str:
    """One PATCH, as kubectl's --server-side apply sends: the server says
    whether it created, changed or left the object (no GET before)."""
    _, warnings, outcome = client.apply_outcome(
        obj, manager=FIELD_MANAGER, force=force, dry_run=dry_run
    )
    for w in warnings:
        warn(w)  # the server's analysis message, naming its resource, as kubectl prints it
    return outcome


def _get_or_none(client: Client, kind: Kind, name: str, namespace: str | None) -> Obj | None:
    try:
        return client.get(kind, name, namespace)
    except NotFound:
        return None




def describe(args: argparse.Namespace) -> int:
    client, kind = _client(args), resolve(args.kind)
    namespace = args.namespace or "default"
    if args.name:
        items = [client.get(kind, args.name, namespace)]
    else:
        items = client.list(kind, namespace, args.selector).get("items", [])
    text = "\n\n".join(
        describe_text(kind, i, events_of(client, i), _more(client, kind, i)) for i in items
    )
    print(output.escape_terminal(text))
    return 0


def _more(client: Client, kind: Kind, obj: Obj) -> list[str]:
    """What describe shows of a kind beyond its fields."""
    if kind.kind not in ("AuthorizationPolicy", "RequestAuthentication", "PeerAuthentication"):
        return []
    from pilotfish.cli.authz import selected_workloads  # it imports this module

    return [f"Selected Workloads:  {', '.join(selected_workloads(client, obj)) or '<none>'}"]


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

    return sorted(filter(about, events), key=event_time)


def event_time(event: Obj) -> tuple[str, str]:
    """When an event last happened, then its name to break ties."""
    meta = event.get("metadata", {})
    last = event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
    return str(last or meta.get("creationTimestamp") or ""), str(meta.get("name", ""))


def event_age(event: Obj, now: datetime | None = None) -> str:
    """kubectl's Age of an event: `3m`, or `3m (x4 over 10m)` when repeated."""
    seen = output.age(event_time(event)[0] or None, now)
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
    kind: Kind, obj: Obj, events: list[Obj] | None = None, more: list[str] | None = None
) -> str:
    """kubectl describe's layout: identity first, then spec and status as indented text."""
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
    lines.extend(more or [])
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
    before = output.to_yaml(user_part(live)).splitlines(keepends=True) if live else []
    after = output.to_yaml(user_part(merged)).splitlines(keepends=True)
    return "".join(difflib.unified_diff(before, after, f"live/{name}", f"merged/{name}"))


def validate(args: argparse.Namespace) -> int:
    """Offline, like `istioctl validate`: one line per error, non-zero if any;
    then the analysis warnings of the valid documents, taken together.
    Directories are read down to the bottom, as istioctl walks them."""
    from pilotfish.analysis import ANALYZERS, SCHEMA, analyze
    from pilotfish.api.validation import validate as check

    docs = read_documents(args.filename, recursive=True)
    if not docs:
        raise CliError(f"no objects passed to validate (nothing in {', '.join(args.filename)})")
    invalid = 0
    for doc in docs:
        errors = check(doc.obj)
        invalid += bool(errors)
        for error in errors:
            print(f"{doc.source}: {_label(doc)}: {error}", file=sys.stderr)
    others = tuple(a for a in ANALYZERS if a is not SCHEMA)
    for message in analyze([_defaulted(d.obj) for d in docs if not check(d.obj)], others):
        warn(str(message))
    valid = len(docs) - invalid
    files = len({doc.source for doc in docs})
    print(
        f"{valid} of {len(docs)} document{'s' if len(docs) != 1 else ''} valid "
        f"({files} file{'s' if files != 1 else ''} read)"
    )
    return 1 if invalid else 0


def _defaulted(obj: Obj) -> Obj:
    """A document without a namespace lands in `default`, as apply puts it."""
    found = obj.get("metadata")
    meta: Obj = found if isinstance(found, dict) else {}
    if meta.get("namespace") or not registry().for_object(obj)[0].namespaced:
        return obj
    return {**obj, "metadata": {**meta, "namespace": "default"}}


def _label(doc: Document) -> str:
    meta = doc.obj.get("metadata") or {}
    name = meta.get("name", f"#{doc.index + 1}") if isinstance(meta, dict) else f"#{doc.index + 1}"
    namespace = meta.get("namespace", "default") if isinstance(meta, dict) else "default"
    return f"{doc.obj.get('kind', '?')} {namespace}/{name}"
