"""How objects are shown: kubectl's columns, YAML and JSON."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from typing import Any

import yaml

from pilotfish.api.gotypes import parse_rfc3339
from pilotfish.api.kinds import Kind
from pilotfish.cli import jsonpath
from pilotfish.objects import Obj


def to_yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2)


def kind_label(kind: Kind) -> str:
    """`virtualservice.networking.istio.io`, as kubectl names a kind in messages."""
    return f"{kind.singular}.{kind.group}" if kind.group else kind.singular


def resource_name(kind: Kind, name: str) -> str:
    """`virtualservice.networking.istio.io/reviews`, as kubectl prints it."""
    return f"{kind_label(kind)}/{name}"


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """kubectl's short age: 45s, 12m, 3h, 5d."""
    if not timestamp:
        return "<unknown>"
    try:
        then = parse_rfc3339(timestamp)
    except ValueError:
        return "<invalid>"
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit == "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def json_path(obj: Obj, path: str) -> Any:
    """A printer column's value: the first result of its JSONPath, as the
    Kubernetes API server fills CRD columns, or None."""
    found = jsonpath.evaluate(_column_path(path), obj)
    return found[0] if found else None


@functools.cache
def _column_path(path: str) -> jsonpath.Expr:
    return jsonpath.parse_path(path)


def cell(value: Any, column_type: str = "string") -> str:
    if value is None:
        return "" if column_type != "date" else "<unknown>"
    if column_type == "date":
        return age(str(value))
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict) and value and all(isinstance(v, str) for v in value.values()):
        # a label map (a Service's selector): key=value pairs, as kubectl shows selectors
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def table(
    kind: Kind,
    version: str,
    items: list[Obj],
    *,
    wide: bool,
    all_namespaces: bool,
    name_prefix: str = "",
) -> str:
    columns = [c for c in kind.printer_columns.get(version, []) if wide or not c.get("priority")]
    add_age = not any(c.get("jsonPath") == ".metadata.creationTimestamp" for c in columns)
    headers = (["NAMESPACE"] if all_namespaces and kind.namespaced else []) + ["NAME"]
    headers += [c["name"].upper() for c in columns] + (["AGE"] if add_age else [])
    show_ns = all_namespaces and kind.namespaced
    rows = [_row(item, columns, show_ns, add_age, name_prefix) for item in items]
    return align([headers, *rows])


def _row(
    item: Obj, columns: list[Obj], all_namespaces: bool, add_age: bool, name_prefix: str
) -> list[str]:
    meta = item.get("metadata", {})
    row = [meta.get("namespace", "")] if all_namespaces else []
    row.append(name_prefix + meta.get("name", ""))
    row += [cell(json_path(item, c["jsonPath"]), c.get("type", "string")) for c in columns]
    if add_age:
        row.append(age(meta.get("creationTimestamp")))
    return row


def escape_terminal(text: str) -> str:
    """kubectl's EscapeTerminal: text from the server (an Event's message that
    quotes a webhook's answer, a label) cannot move the cursor, retitle the
    window or rewrite earlier lines of the user's terminal."""
    return text.translate(_TERMINAL_ESCAPES)


_TERMINAL_ESCAPES = str.maketrans({"\x1b": "^[", "\r": "\\r"})


def align(rows: list[list[str]]) -> str:
    """Columns separated by three spaces, left-aligned, as kubectl prints them."""
    rows = [[escape_terminal(value) for value in row] for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)
