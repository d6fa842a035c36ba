"""Field paths and field sets, the vocabulary of server-side apply.

A path is a tuple of elements written as Kubernetes writes them in
`managedFields[].fieldsV1`: `f:spec` names a map key, `k:{"name":"http"}` names
the item of a `x-kubernetes-list-type: map` list by its keys. A field set is a
frozenset of such paths; each is a *leaf* a manager owns: a scalar, an atomic
list, an empty map, or a list-map item itself (FieldsV1's `"."`).

Maps merge per key unless the schema marks them `x-kubernetes-map-type:
atomic`; lists are atomic unless marked `x-kubernetes-list-type: map`, which is
how structured-merge-diff (and so kubectl) treats them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator
from typing import Any, Final

from pilotfish.api.errors import BadRequest
from pilotfish.objects import Obj

Path = tuple[str, ...]
FieldSet = frozenset[Path]


class _Missing:
    """Marks a path with no value, distinct from an explicit null."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


# -- schema navigation -------------------------------------------------------


def child_schema(schema: Obj | None, name: str) -> Obj | None:
    if not schema:
        return None
    props = schema.get("properties")
    if isinstance(props, dict) and name in props:
        child = props[name]
        return child if isinstance(child, dict) else None
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def item_schema(schema: Obj | None) -> Obj | None:
    items = schema.get("items") if schema else None
    return items if isinstance(items, dict) else None


def list_map_keys(schema: Obj | None) -> tuple[str, ...] | None:
    """The keys of a list the schema declares as a map, or None for atomic lists."""
    if not schema or schema.get("x-kubernetes-list-type") != "map":
        return None
    keys = schema.get("x-kubernetes-list-map-keys") or []
    return tuple(str(k) for k in keys) or None


def schema_at(schema: Obj | None, path: Path) -> Obj | None:
    for element in path:
        if schema is None:
            return None
        schema = (
            child_schema(schema, element[2:]) if element.startswith("f:") else item_schema(schema)
        )
    return schema


def _atomic_map(schema: Obj | None) -> bool:
    return schema is not None and schema.get("x-kubernetes-map-type") == "atomic"


# -- path elements -------------------------------------------------------------


def field_element(name: str) -> str:
    return f"f:{name}"


def key_element(item: Obj, keys: tuple[str, ...]) -> str:
    # Sorted, compact JSON: the exact spelling Kubernetes uses, so sets compare as strings.
    present = {k: item[k] for k in keys if k in item}
    return "k:" + json.dumps(present, sort_keys=True, separators=(",", ":"))


def _key_of(element: str) -> Obj:
    parsed = json.loads(element[2:])
    return parsed if isinstance(parsed, dict) else {}


def _matches(item: Any, key: Obj, keys: Iterable[str]) -> bool:
    return isinstance(item, dict) and all(
        same(item.get(k, MISSING), key.get(k, MISSING)) for k in keys
    )


def path_string(path: Path) -> str:
    """`.spec.ports[name="http"].port`, as kubectl prints a conflicting field."""
    out = []
    for element in path:
        if element.startswith("f:"):
            out.append("." + element[2:])
        else:
            key = _key_of(element)
            out.append("[" + ",".join(f"{k}={json.dumps(v)}" for k, v in key.items()) + "]")
    return "".join(out)


# -- values ---------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equality that tells 1 from 1.0 from True, as a JSON document would."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def value_at(obj: Any, path: Path) -> Any:
    node = obj
    for element in path:
        node = _step(node, element)
        if node is MISSING:
            break
    return node


def _step(node: Any, element: str) -> Any:
    if element.startswith("f:"):
        return node.get(element[2:], MISSING) if isinstance(node, dict) else MISSING
    if not isinstance(node, list):
        return MISSING
    key = _key_of(element)
    return next((item for item in node if _matches(item, key, key)), MISSING)


def remove(obj: Any, path: Path) -> None:
    """Delete the value at `path`, if there is one."""
    parent = value_at(obj, path[:-1])
    last = path[-1]
    if last.startswith("f:") and isinstance(parent, dict):
        parent.pop(last[2:], None)
    elif last.startswith("k:") and isinstance(parent, list):
        key = _key_of(last)
        parent[:] = [item for item in parent if not _matches(item, key, key)]


def is_empty_container(value: Any) -> bool:
    return isinstance(value, dict | list) and not value


def is_key_field(path: Path) -> bool:
    """Whether `path` is a key field of a list-map item (`...k:{"name":"a"}, f:name`)."""
    return len(path) >= 2 and path[-2].startswith("k:") and path[-1][2:] in _key_of(path[-2])


def changed(before: Any, after: Any, schema: Obj | None) -> bool:
    """Whether an owner of this path sees a different value. Owning a granular
    map (a list-map item, an empty map applied) is owning its existence, so
    new keys inside it change nothing for that owner."""
    if isinstance(before, dict) and isinstance(after, dict) and not _atomic_map(schema):
        return False
    return not same(before, after)


# -- field sets of values ---------------------------------------------------------


def leaf_paths(value: Any, schema: Obj | None, prefix: Path = ()) -> FieldSet:
    """Every leaf of `value` (see the module docstring), as a field set."""
    return frozenset(_leaves(value, schema, prefix))


def _leaves(value: Any, schema: Obj | None, prefix: Path) -> Iterator[Path]:
    if isinstance(value, dict) and value and not _atomic_map(schema):
        for name, child in value.items():
            yield from _leaves(child, child_schema(schema, name), (*prefix, field_element(name)))
        return
    keys = list_map_keys(schema)
    if isinstance(value, list) and keys and all(isinstance(i, dict) for i in value):
        seen: set[str] = set()
        for item in value:
            _require_keys(item, keys, prefix)
            element = key_element(item, keys)
            if element in seen:
                where = path_string((*prefix, element))
                raise BadRequest(f"{path_string(prefix)}: duplicate entries for key {where}")
            seen.add(element)
            yield (*prefix, element)
            yield from _leaves(item, item_schema(schema), (*prefix, element))
        return
    if prefix:
        yield prefix


def _require_keys(item: Obj, keys: tuple[str, ...], prefix: Path) -> None:
    missing = next((k for k in keys if k not in item), None)
    if missing is not None:
        raise BadRequest(
            f"{path_string(prefix)}: associative list with keys has an element "
            f'that omits key field "{missing}"'
        )


def merge(live: Any, applied: Any, schema: Obj | None) -> Any:
    """`applied` laid over `live`: maps merge per key, list-maps per item, the rest is replaced."""
    if isinstance(live, dict) and isinstance(applied, dict) and not _atomic_map(schema):
        out = dict(live)
        for name, value in applied.items():
            sub = child_schema(schema, name)
            out[name] = merge(live.get(name, MISSING), value, sub)
        return out
    keys = list_map_keys(schema)
    if keys and isinstance(live, list) and isinstance(applied, list):
        return _merge_list_map(live, applied, keys, item_schema(schema))
    return copy.deepcopy(applied)


def _merge_list_map(
    live: list[Any], applied: list[Any], keys: tuple[str, ...], schema: Obj | None
) -> list[Any]:
    """Items keep their live order; new items follow in the order applied."""
    out = list(live)
    for item in applied:
        if not isinstance(item, dict):
            return copy.deepcopy(applied)
        key = {k: item[k] for k in keys if k in item}
        at = next((i for i, old in enumerate(out) if _matches(old, key, keys)), None)
        if at is None:
            out.append(copy.deepcopy(item))
        else:
            out[at] = merge(out[at], item, schema)
    return out


# -- FieldsV1 -------------------------------------------------------------------------


def to_fields_v1(fields: FieldSet) -> Obj:
    """The nested form stored in managedFields: `{"f:spec": {"f:hosts": {}}}`."""
    tree: Obj = {}
    for path in sorted(fields):
        node = tree
        for element in path:
            node = node.setdefault(element, {})
    return _mark_members(tree, fields, ())


def _mark_members(tree: Obj, fields: FieldSet, prefix: Path) -> Obj:
    # A path with children is a member only if it carries ".", as in Kubernetes.
    out: Obj = {}
    for element, children in tree.items():
        if element == ".":
            continue
        path = (*prefix, element)
        sub = _mark_members(children, fields, path)
        if sub and path in fields:
            sub = {".": {}, **sub}
        out[element] = sub
    return out


def from_fields_v1(tree: Obj, prefix: Path = ()) -> FieldSet:
    out: set[Path] = set()
    for element, children in tree.items():
        if element == ".":
            out.add(prefix)
            continue
        path = (*prefix, element)
        if isinstance(children, dict) and children:
            out |= from_fields_v1(children, path)
        else:
            out.add(path)
    return frozenset(out)
