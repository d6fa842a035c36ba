"""kubectl's JSONPath templates (`-o jsonpath=...`, `-o custom-columns=...`).

The dialect of k8s.io/client-go/util/jsonpath: text with `{...}` actions;
inside, `.field`, `['field']`, `[n]`, `[a:b]`, `[*]`, `..field` (recursive),
`[?(@.path OP value)]` filters, `"literal"` text, and `{range EXPR}...{end}`.
Several results of one action are joined by a space; maps and lists print
as compact JSON, other values as text; a missing key prints nothing (kubectl
allows missing keys in its printers).

Pure: a parsed template and an object in, text out.
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<recurse>\.\.)(?P<rname>[\w-]+|\*)
    | \.(?P<name>[\w-]+|\*)
    | \[(?P<bracket>(?:'[^']*'|"[^"]*"|\?\((?:[^()]|\([^()]*\))*\)|[^\]])*)\]
    | (?P<root>[$@])
    )""",
    re.VERBOSE,
)
_FILTER = re.compile(
    r"^\?\(\s*@(?P<path>[^=!<>]*?)\s*(?:(?P<op>==|!=|<=|>=|<|>)\s*(?P<value>.+?))?\s*\)$"
)


class JsonPathError(ValueError):
    """A template kubectl would refuse; the message says where."""


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Expr:
    steps: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Range:
    path: Expr
    body: tuple[Text | Expr | Range, ...]


Node = Text | Expr | Range


def parse(template: str) -> tuple[Node, ...]:
    nodes, rest = _parse_nodes(template, top=True)
    if rest:
        raise JsonPathError(f"unexpected {{end}} in {template!r}")
    return nodes


def _parse_nodes(template: str, top: bool) -> tuple[tuple[Node, ...], str]:
    nodes: list[Node] = []
    while template:
        start = template.find("{")
        if start < 0:
            nodes.append(Text(template))
            break
        if start:
            nodes.append(Text(template[:start]))
        end = _closing(template, start)
        action, template = template[start + 1 : end].strip(), template[end + 1 :]
        if action == "end":
            if top:
                raise JsonPathError("not in range, nothing to end")
            return tuple(nodes), template
        if action.startswith("range "):
            body, template = _parse_nodes(template, top=False)
            nodes.append(Range(parse_path(action[6:]), body))
        elif action.startswith(('"', "'")):
            nodes.append(Text(_literal(action)))
        else:
            nodes.append(parse_path(action))
    if not top:
        raise JsonPathError("unclosed range: {range ...} needs an {end}")
    return tuple(nodes), ""


def _closing(template: str, start: int) -> int:
    quote = ""
    for i in range(start + 1, len(template)):
        c = template[i]
        if quote:
            quote = "" if c == quote and template[i - 1] != "\\" else quote
        elif c in "\"'":
            quote = c
        elif c == "}":
            return i
    raise JsonPathError(f"unclosed action in {template!r}")


def _literal(action: str) -> str:
    try:
        quoted = action if action[0] == '"' else '"' + action[1:-1] + '"'
        return str(json.loads(quoted, strict=False))
    except ValueError:
        raise JsonPathError(f"invalid string literal {action}") from None


def parse_path(expr: str) -> Expr:
    steps: list[tuple[str, Any]] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            raise JsonPathError(f"unrecognized identifier {expr[pos:]!r} in {expr!r}")
        pos = m.end()
        if m["recurse"]:
            steps.append(("recurse", m["rname"]))
        elif m["name"] is not None:
            steps.append(("field", m["name"]))
        elif m["bracket"] is not None:
            steps.append(_bracket(m["bracket"].strip()))
    return Expr(tuple(steps))


def _bracket(inner: str) -> tuple[str, Any]:
    if inner == "*":
        return ("field", "*")
    if inner[:1] in "'\"":
        return ("field", inner[1:-1])
    if inner.startswith("?"):
        m = _FILTER.match(inner)
        if m is None:
            raise JsonPathError(f"invalid filter [{inner}]")
        value = _filter_value(m["value"]) if m["op"] else None
        return ("filter", (parse_path(m["path"]), m["op"], value))
    if ":" in inner:
        parts = [int(p) if p.strip() else None for p in inner.split(":")]
        return ("slice", tuple(parts + [None] * (3 - len(parts))))
    try:
        return ("index", int(inner))
    except ValueError:
        raise JsonPathError(f"invalid array index [{inner}]") from None


def _filter_value(text: str) -> Any:
    text = text.strip()
    if text[:1] in "'\"":
        return text[1:-1]
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- evaluation --------------------------------------------------------------------------


def evaluate(path: Expr, data: Any) -> list[Any]:
    values = [data]
    for op, arg in path.steps:
        values = [out for value in values for out in _step(op, arg, value)]
    return values


def _step(op: str, arg: Any, value: Any) -> list[Any]:
    if op == "field":
        if arg == "*":
            return list(value.values()) if isinstance(value, dict) else _items(value)
        return [value[arg]] if isinstance(value, dict) and arg in value else []
    if op == "index":
        if isinstance(value, list) and -len(value) <= arg < len(value):
            return [value[arg]]
        return []
    if op == "slice":
        return _items(value)[slice(*arg)]
    if op == "recurse":
        return [found for node in _walk(value) for found in _step("field", arg, node)]
    return [item for item in _items(value) if _keep(arg, item)]


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _walk(value: Any) -> list[Any]:
    nodes = [value]
    children = value.values() if isinstance(value, dict) else _items(value)
    for child in children:
        if isinstance(child, dict | list):
            nodes.extend(_walk(child))
    return nodes


def _keep(condition: tuple[Expr, str | None, Any], item: Any) -> bool:
    path, op, expected = condition
    found = evaluate(path, item)
    if op is None:
        return bool(found)
    if not found:
        return False
    actual = found[0]
    if op in ("==", "!="):
        return _same(actual, expected) == (op == "==")
    try:
        return bool(_ORDER[op](actual, expected))
    except TypeError:
        return False


_ORDER = {"<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge}


def _same(actual: Any, expected: Any) -> bool:
    return actual == expected or str(actual) == str(expected)


def render(nodes: tuple[Node, ...], data: Any) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, Text):
            out.append(node.text)
        elif isinstance(node, Range):
            for item in evaluate(node.path, data):
                out.append(render(node.body, item))
        else:
            out.append(" ".join(text(v) for v in evaluate(node, data)))
    return "".join(out)


def text(value: Any) -> str:
    """One result as kubectl prints it: maps and lists as compact JSON."""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "<nil>"
    return str(value)
