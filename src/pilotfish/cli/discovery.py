"""What the API offers, as kubectl shows it: `api-resources` (the server's
discovery documents), `version` (this client and the control plane's
/version) and `explain KIND[.field]` (the kinds' OpenAPI schemas)."""

from __future__ import annotations

import argparse
import sys
import textwrap

from pilotfish.api.errors import ApiError
from pilotfish.api.kinds import Kind
from pilotfish.cli import output
from pilotfish.cli.commands import CliError, resolve, server_error
from pilotfish.client import Client
from pilotfish.objects import Obj

Sub = argparse._SubParsersAction
# kubectl explain's text for the fields every object has, which CRD schemas leave out.
_ENVELOPE: Obj = {
    "apiVersion": {"type": "string", "description": "The versioned schema of this object."},
    "kind": {"type": "string", "description": "The kind of this object, in CamelCase."},
    "metadata": {
        "type": "object",
        "description": "Standard object metadata: name, namespace, labels, annotations.",
    },
}


def add_commands(sub: Sub[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("api-resources", parents=[common], help="the kinds the control plane serves")
    p.add_argument("-o", "--output", choices=["wide", "name"])
    p.add_argument("--namespaced", choices=["true", "false"], help="only (non-)namespaced kinds")
    p.add_argument("--api-group", help="only this group ('' for the core group)")
    p.set_defaults(handler=api_resources)
    p = sub.add_parser("version", parents=[common], help="client and control plane versions")
    p.add_argument("--client", action="store_true", help="the client's version only")
    p.add_argument("-o", "--output", choices=["yaml", "json"])
    p.set_defaults(handler=version)
    p = sub.add_parser("explain", help="the documentation of a kind or one of its fields")
    p.add_argument("path", metavar="KIND[.FIELD...]", help="e.g. vs, virtualservice.spec.http")
    p.add_argument("--api-version", help="the version to explain (default: the storage one)")
    p.add_argument("--recursive", action="store_true", help="every field below, as a tree")
    p.set_defaults(handler=explain)


# -- api-resources ---------------------------------------------------------------------------


def api_resources(args: argparse.Namespace) -> int:
    client = Client.from_config(args.server)
    rows = [r for r in discovered(client) if _wanted(r, args)]
    if args.output == "name":
        for r in rows:
            print(r["name"] + (f".{r['group']}" if r["group"] else ""))
        return 0
    header = ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    header += ["VERBS", "CATEGORIES"] if args.output == "wide" else []
    table = [header]
    for r in rows:
        row = [
            r["name"],
            ",".join(r.get("shortNames") or []),
            r["groupVersion"],
            str(r["namespaced"]).lower(),
            r["kind"],
        ]
        if args.output == "wide":
            row += [",".join(r.get("verbs") or []), ",".join(r.get("categories") or [])]
        table.append(row)
    print(output.align(table))
    return 0


def discovered(client: Client) -> list[Obj]:
    """Every resource (not subresource) of each group's preferred version,
    the core group first, then groups and names in alphabetical order."""
    lists = [client.discovery("/api/v1")]
    for group in sorted(client.discovery("/apis").get("groups") or [], key=lambda g: g["name"]):
        lists.append(client.discovery(f"/apis/{group['preferredVersion']['groupVersion']}"))
    found = []
    for listed in lists:
        group_version = listed.get("groupVersion", "")
        group = group_version.rpartition("/")[0]
        for r in sorted(listed.get("resources") or [], key=lambda r: r["name"]):
            if "/" not in r["name"]:
                found.append({**r, "groupVersion": group_version, "group": group})
    return found


def _wanted(resource: Obj, args: argparse.Namespace) -> bool:
    if args.namespaced is not None and str(resource["namespaced"]).lower() != args.namespaced:
        return False
    return args.api_group is None or resource["group"] == args.api_group


# -- version -------------------------------------------------------------------------------


def version(args: argparse.Namespace) -> int:
    from pilotfish.controlplane.openapi import version_info

    info: Obj = {"clientVersion": version_info()}
    failed = None
    if not args.client:
        try:
            info["serverVersion"] = Client.from_config(args.server).version()
        except ApiError as e:
            failed = e
    if args.output == "json":
        print(output.to_json(info))
    elif args.output == "yaml":
        print(output.to_yaml(info), end="")
    else:
        print(f"Client Version: {info['clientVersion']['gitVersion']}")
        if "serverVersion" in info:
            print(f"Server Version: {info['serverVersion'].get('gitVersion', '')}")
    if failed is not None:
        sys.stdout.flush()
        server_error(failed)
        return 1
    return 0


# -- explain -------------------------------------------------------------------------------


def explain(args: argparse.Namespace) -> int:
    kind_name, *fields = args.path.split(".")
    kind = resolve(kind_name)
    version = args.api_version or kind.versions[0]
    if version not in kind.versions:
        raise CliError(
            f'{kind.kind} has no version "{version}" (it has {", ".join(kind.versions)})'
        )
    schema = _root(kind, version)
    for i, name in enumerate(fields):
        schema = _child(schema, name, f"{kind_name}.{'.'.join(fields[: i + 1])}")
    print(explain_text(kind, version, fields, schema, args.recursive))
    return 0


def _root(kind: Kind, version: str) -> Obj:
    schema = dict(kind.schemas.get(version) or {"type": "object"})
    schema["properties"] = {**_ENVELOPE, **(schema.get("properties") or {})}
    return schema


def _child(schema: Obj, name: str, where: str) -> Obj:
    """A field of an object, looking through arrays (as kubectl explain does)."""
    while schema.get("type") == "array":
        schema = schema.get("items") or {}
    found = (schema.get("properties") or {}).get(name)
    if found is None:
        raise CliError(f'field "{name}" does not exist: {where}')
    return dict(found)


def explain_text(kind: Kind, version: str, fields: list[str], schema: Obj, recursive: bool) -> str:
    lines = [f"GROUP:      {kind.group}", f"KIND:       {kind.kind}", f"VERSION:    {version}", ""]
    if fields:
        lines += [f"FIELD: {fields[-1]} <{type_name(schema)}>", ""]
    if schema.get("enum"):
        lines += [f"ENUM: {', '.join(str(v) for v in schema['enum'])}", ""]
    lines += ["DESCRIPTION:", *_wrapped(schema.get("description") or "<empty>", "    ")]
    body = _fields_of(schema)
    if body:
        lines += ["", "FIELDS:"]
        lines += _tree(body, "  ") if recursive else _field_docs(body)
    return "\n".join(lines)


def _fields_of(schema: Obj) -> Obj:
    while schema.get("type") == "array":
        schema = schema.get("items") or {}
    return dict(schema.get("properties") or {}) | {"__required__": schema.get("required") or []}


def _field_docs(fields: Obj) -> list[str]:
    required = fields.pop("__required__")
    lines = []
    for name, sub in fields.items():
        mark = " -required-" if name in required else ""
        lines.append(f"  {name}\t<{type_name(sub)}>{mark}")
        lines += _wrapped(sub.get("description") or "<no description>", "    ")
        lines.append("")
    return lines[:-1]


def _tree(fields: Obj, indent: str) -> list[str]:
    required = fields.pop("__required__")
    lines = []
    for name, sub in fields.items():
        mark = " -required-" if name in required else ""
        lines.append(f"{indent}{name}\t<{type_name(sub)}>{mark}")
        below = _fields_of(sub)
        if len(below) > 1:
            lines += _tree(below, indent + "  ")
    return lines


def type_name(schema: Obj) -> str:
    """kubectl explain's types: string, integer, boolean, Object, []Object, map[string]string."""
    kind = schema.get("type")
    if kind == "array":
        return "[]" + type_name(schema.get("items") or {})
    if kind == "object" or "properties" in schema:
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and "properties" not in schema:
            return f"map[string]{type_name(extra)}"
        return "Object"
    if schema.get("x-kubernetes-int-or-string"):
        return "IntOrString"
    return str(kind or "Object")


def _wrapped(text: str, indent: str) -> list[str]:
    out = []
    for paragraph in str(text).splitlines() or [""]:
        out += textwrap.wrap(
            paragraph,
            80,
            initial_indent=indent,
            subsequent_indent=indent,
            break_long_words=False,
            break_on_hyphens=False,
        ) or [""]
    return out
