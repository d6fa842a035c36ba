"""`pilotfish patch` and `pilotfish edit`, as kubectl's.

patch --type:
  merge      RFC 7386, sent to the server as application/merge-patch+json.
  json       RFC 6902 operations, applied here to the live object, which is
             then written back pinned to the resourceVersion read: a write in
             between is a Conflict, never lost.
  strategic  (kubectl's default) Kubernetes' strategic merge, for the core
             kinds only, as Kubernetes (custom resources refuse it): lists
             whose schema names an x-kubernetes-patch-merge-key merge item by
             item on that key, other lists replace, null deletes. Applied here
             and written back as `json` is.

edit opens the object's YAML in $KUBE_EDITOR, $EDITOR or vi and writes back
what was saved, pinned to the resourceVersion read (a Conflict if another
write got in between, with a copy of the edit kept, as kubectl does); an
invalid edit reopens with the server's error on top, and an edit saved
without change cancels.
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pilotfish.api.errors import ApiError, Conflict
from pilotfish.api.kinds import Kind
from pilotfish.cli import output
from pilotfish.cli.commands import CliError, resolve
from pilotfish.client import Client
from pilotfish.objects import Obj

Sub = argparse._SubParsersAction
FIELD_MANAGER = "pilotfish-patch"
EDIT_MANAGER = "pilotfish-edit"
_EDIT_HEADER = (
    "# Please edit the object below. Lines beginning with a '#' will be ignored,\n"
    "# and an empty file will abort the edit. If an error occurs while saving this file "
    "will be\n# reopened with the relevant failures.\n#\n"
)


def add_commands(sub: Sub[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("patch", parents=[common], help="update fields of a resource")
    p.add_argument("target", nargs="+", metavar="TYPE NAME | TYPE/NAME")
    p.add_argument("-p", "--patch", help="the patch, JSON or YAML")
    p.add_argument("--patch-file", type=Path, help="a file holding the patch")
    p.add_argument("--type", choices=["strategic", "merge", "json"], default="strategic")
    p.add_argument(
        "--dry-run", nargs="?", const="server", default="none", choices=["none", "server"]
    )
    p.set_defaults(handler=patch)
    p = sub.add_parser("edit", parents=[common], help="edit a resource in $EDITOR")
    p.add_argument("target", nargs="+", metavar="TYPE NAME | TYPE/NAME")
    p.set_defaults(handler=edit)


def _target(words: list[str]) -> tuple[Kind, str]:
    if len(words) == 1 and "/" in words[0]:
        kind_name, _, name = words[0].partition("/")
    elif len(words) == 2 and "/" not in words[0]:
        kind_name, name = words
    else:
        raise CliError("expected one resource: TYPE NAME or TYPE/NAME")
    return resolve(kind_name), name


# -- patch -----------------------------------------------------------------------------------


def patch(args: argparse.Namespace) -> int:
    kind, name = _target(args.target)
    body = _patch_body(args)
    client = Client.from_config(args.server)
    namespace = args.namespace or "default"
    dry_run = args.dry_run == "server"
    live = client.get(kind, name, namespace)
    if args.type == "merge":
        if not isinstance(body, dict):
            raise CliError("a merge patch must be a JSON object")
        after = client.merge_patch(kind, name, namespace, body, dry_run=dry_run)
    else:
        changed = _patched(kind, live, body, args.type)
        after = (
            live
            if changed == live
            else client.update(changed, manager=FIELD_MANAGER, dry_run=dry_run)
        )
    unchanged = after["metadata"].get("resourceVersion") == live["metadata"].get("resourceVersion")
    note = " (no change)" if unchanged else (" (server dry run)" if dry_run else "")
    print(f"{output.resource_name(kind, name)} patched{note}")
    return 0


def _patch_body(args: argparse.Namespace) -> Any:
    if (args.patch is None) == (args.patch_file is None):
        raise CliError("must specify --patch or --patch-file containing the contents of the patch")
    text = args.patch if args.patch is not None else args.patch_file.read_text()
    try:
        return yaml.safe_load(text)  # YAML is a superset of JSON, as kubectl reads patches
    except yaml.YAMLError as e:
        raise CliError(f"unable to parse the patch: {' '.join(str(e).split())}") from None


def _patched(kind: Kind, live: Obj, body: Any, patch_type: str) -> Obj:
    if patch_type == "json":
        if not isinstance(body, list):
            raise CliError("a json patch must be a list of operations")
        return json_patch(live, body)
    if kind.group:
        raise CliError(
            f"strategic merge patch is not supported for {kind.qualified} (a custom resource, "
            "as in Kubernetes): use --type merge or --type json"
        )
    if not isinstance(body, dict):
        raise CliError("a strategic merge patch must be a JSON object")
    return dict(strategic_merge(live, body, kind.schemas.get(kind.versions[0]) or {}))


def strategic_merge(live: Any, patch: Any, schema: Obj) -> Any:
    """Kubernetes' strategic merge: maps merge, null deletes, lists with a
    patch merge key in the schema merge by that key, other lists replace."""
    if isinstance(patch, list) and isinstance(live, list):
        key = schema.get("x-kubernetes-patch-merge-key")
        if key and schema.get("x-kubernetes-patch-strategy") == "merge":
            return _merge_by_key(live, patch, key, schema.get("items") or {})
        return patch
    if not isinstance(patch, dict) or not isinstance(live, dict):
        return patch
    merged = dict(live)
    properties = schema.get("properties") or {}
    for name, value in patch.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = strategic_merge(live.get(name), value, properties.get(name) or {})
    return merged


def _merge_by_key(live: list[Any], patch: list[Any], key: str, item_schema: Obj) -> list[Any]:
    merged = list(live)
    for item in patch:
        at = next(
            (
                i
                for i, old in enumerate(merged)
                if isinstance(old, dict)
                and isinstance(item, dict)
                and old.get(key) == item.get(key)
            ),
            None,
        )
        if isinstance(item, dict) and item.get("$patch") == "delete":
            if at is not None:
                merged.pop(at)
        elif at is None:
            merged.append(item)
        else:
            merged[at] = strategic_merge(merged[at], item, item_schema)
    return merged


def json_patch(doc: Obj, operations: list[Any]) -> Obj:
    """RFC 6902: add, remove, replace, move, copy, test; all or nothing."""
    result: Any = copy.deepcopy(doc)
    for i, op in enumerate(operations):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise CliError(f"json patch operation {i}: needs op and path")
        try:
            result = _operation(result, op)
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise CliError(f"json patch operation {i} ({op['op']} {op['path']}): {e}") from None
    return dict(result)


def _operation(doc: Any, op: Obj) -> Any:
    kind, path = op["op"], _pointer(op["path"])
    if kind == "test":
        if _get(doc, path) != op.get("value"):
            raise ValueError("testing value failed")
        return doc
    if kind in ("move", "copy"):
        value = copy.deepcopy(_get(doc, _pointer(op["from"])))
        if kind == "move":
            doc = _remove(doc, _pointer(op["from"]))
        return _add(doc, path, value)
    if kind == "remove":
        return _remove(doc, path)
    if kind == "replace":
        _get(doc, path)  # must exist
        return _add(_remove(doc, path), path, op["value"])
    if kind == "add":
        return _add(doc, path, op["value"])
    raise ValueError(f'unknown operation "{kind}"')


def _pointer(text: str) -> list[str]:
    if text == "":
        return []
    if not text.startswith("/"):
        raise ValueError(f'a JSON pointer starts with "/": {text!r}')
    return [p.replace("~1", "/").replace("~0", "~") for p in text[1:].split("/")]


def _get(doc: Any, path: list[str]) -> Any:
    for part in path:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def _add(doc: Any, path: list[str], value: Any) -> Any:
    if not path:
        return value
    parent = _get(doc, path[:-1])
    last = path[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if not 0 <= index <= len(parent):
            raise IndexError(f"index {index} out of range")
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise TypeError(f"cannot add to a {type(parent).__name__}")
    return doc


def _remove(doc: Any, path: list[str]) -> Any:
    if not path:
        raise ValueError("cannot remove the whole document")
    parent = _get(doc, path[:-1])
    if isinstance(parent, list):
        parent.pop(int(path[-1]))
    else:
        del parent[path[-1]]
    return doc


# -- edit ------------------------------------------------------------------------------------


def edit(args: argparse.Namespace) -> int:
    kind, name = _target(args.target)
    client = Client.from_config(args.server)
    live = client.get(kind, name, args.namespace or "default")
    original = output.to_yaml(_editable(live))
    text, error = original, ""
    while True:
        edited = _in_editor(_EDIT_HEADER + _as_comments(error) + text)
        body = _uncommented(edited)
        if not body.strip():
            print("Edit cancelled, no changes made.")
            return 0
        if body == original or (error and body == text):
            return _cancelled(error, edited)
        try:
            changed = yaml.safe_load(body)
            if not isinstance(changed, dict):
                raise CliError("the edited file is not an object")
            client.update(changed, manager=EDIT_MANAGER)
        except (yaml.YAMLError, CliError) as e:
            text, error = body, f"error: {' '.join(str(e).split())}"
            continue
        except Conflict as e:
            return _kept(edited, f"Error from server (Conflict): {e.message}")
        except ApiError as e:
            if not e.from_server:
                raise
            text, error = body, f"Error from server ({e.reason}): {e.message}"
            continue
        print(f"{output.resource_name(kind, name)} edited")
        return 0


def _editable(obj: Obj) -> Obj:
    """The object as kubectl edit shows it: everything but managedFields."""
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


def _in_editor(text: str) -> str:
    editor = os.environ.get("KUBE_EDITOR") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile(
        "w", suffix=".yaml", prefix="pilotfish-edit-", delete=False
    ) as f:
        f.write(text)
        path = Path(f.name)
    try:
        done = subprocess.run([*shlex.split(editor), str(path)], check=False)
        if done.returncode != 0:
            raise CliError(f'there was a problem with the editor "{editor}"')
        return path.read_text()
    finally:
        path.unlink(missing_ok=True)


def _uncommented(text: str) -> str:
    return "".join(
        line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("#")
    )


def _as_comments(error: str) -> str:
    return "".join(f"# {line}\n" for line in error.splitlines()) + ("#\n" if error else "")


def _cancelled(error: str, edited: str) -> int:
    if not error:
        print("Edit cancelled, no changes made.")
        return 0
    return _kept(edited, "error: Edit cancelled, no valid changes were saved.")


def _kept(edited: str, message: str) -> int:
    """Say why the edit was not saved and keep a copy of it, as kubectl does."""
    with tempfile.NamedTemporaryFile(
        "w", suffix=".yaml", prefix="pilotfish-edit-", delete=False
    ) as f:
        f.write(edited)
    print(message, file=sys.stderr)
    print(f'A copy of your changes has been stored to "{f.name}"', file=sys.stderr)
    return 1
