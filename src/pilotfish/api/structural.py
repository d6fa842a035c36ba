"""Structural validation of an object against a CRD's OpenAPI v3 schema.

A small walker rather than a JSON Schema library, because the errors must be
Kubernetes' (`spec.hosts: Required value`, `... in body should be at least 1
chars long`) with Kubernetes' paths, and because a CRD schema is a restricted
dialect: no $ref, types on every node, `x-kubernetes-*` extensions. Each
schema is compiled once into a tree of `Node`s; `check` walks an object and
the tree together, running a node's CEL rules where its value is well typed.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

from pilotfish.api import cel
from pilotfish.api.errors import FieldError
from pilotfish.api.gotypes import parse_rfc3339
from pilotfish.api.names import invalid, required, show

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}
# Fields every object has beside its schema's own (Kubernetes' ObjectMeta/TypeMeta).
_IMPLICIT_TOP = frozenset({"apiVersion", "kind", "metadata"})


NO_DEFAULT: Any = object()  # a schema's `default` may be any JSON value, null included


@dataclass
class Node:
    """One compiled schema node; unset constraints are None."""

    type: str = ""
    properties: dict[str, Node] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    additional: Node | None = None
    items: Node | None = None
    enum: tuple[Any, ...] | None = None
    fmt: str = ""
    minimum: float | None = None
    maximum: float | None = None
    exclusive_min: bool = False
    exclusive_max: bool = False
    min_length: int | None = None
    max_length: int | None = None
    pattern: re.Pattern[str] | None = None
    min_items: int | None = None
    max_items: int | None = None
    min_properties: int | None = None
    max_properties: int | None = None
    nullable: bool = False
    int_or_string: bool = False
    preserve_unknown: bool = False
    list_type: str = ""
    list_map_keys: tuple[str, ...] = ()
    one_of: list[Node] = field(default_factory=list)
    any_of: list[Node] = field(default_factory=list)
    all_of: list[Node] = field(default_factory=list)
    not_: Node | None = None
    rules: list[cel.Rule] = field(default_factory=list)
    transition_rules: int = 0  # rules needing oldSelf, skipped on create
    default: Any = NO_DEFAULT

    def declares(self, name: str) -> bool:
        return name in self.properties


def compile_schema(schema: dict[str, Any]) -> Node:
    return _compile(schema, {})


def _compile(schema: dict[str, Any], memo: dict[int, Node]) -> Node:
    # YAML anchors share one dict between places; compile it once.
    if id(schema) in memo:
        return memo[id(schema)]
    node = Node()
    memo[id(schema)] = node
    node.type = str(schema.get("type", ""))
    node.properties = {k: _compile(v, memo) for k, v in schema.get("properties", {}).items()}
    node.required = tuple(schema.get("required", ()))
    extra = schema.get("additionalProperties")
    node.additional = _compile(extra, memo) if isinstance(extra, dict) else None
    node.preserve_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields")) or (
        extra is True
    )
    node.items = _compile(schema["items"], memo) if isinstance(schema.get("items"), dict) else None
    node.default = schema.get("default", NO_DEFAULT)
    _compile_constraints(node, schema)
    node.one_of = [_compile(s, memo) for s in schema.get("oneOf", ())]
    node.any_of = [_compile(s, memo) for s in schema.get("anyOf", ())]
    node.all_of = [_compile(s, memo) for s in schema.get("allOf", ())]
    node.not_ = _compile(schema["not"], memo) if isinstance(schema.get("not"), dict) else None
    for spec in schema.get("x-kubernetes-validations", ()):
        if cel.is_transition_rule(spec):
            node.transition_rules += 1
        else:
            node.rules.append(cel.compile_rule(spec))
    return node


def _compile_constraints(node: Node, schema: dict[str, Any]) -> None:
    node.enum = tuple(schema["enum"]) if "enum" in schema else None
    node.fmt = str(schema.get("format", ""))
    node.minimum = schema.get("minimum")
    node.maximum = schema.get("maximum")
    node.exclusive_min = bool(schema.get("exclusiveMinimum"))
    node.exclusive_max = bool(schema.get("exclusiveMaximum"))
    node.min_length = schema.get("minLength")
    node.max_length = schema.get("maxLength")
    node.pattern = re.compile(schema["pattern"]) if "pattern" in schema else None
    node.min_items = schema.get("minItems")
    node.max_items = schema.get("maxItems")
    node.min_properties = schema.get("minProperties")
    node.max_properties = schema.get("maxProperties")
    node.nullable = bool(schema.get("nullable"))
    node.int_or_string = bool(schema.get("x-kubernetes-int-or-string"))
    node.list_type = str(schema.get("x-kubernetes-list-type", ""))
    node.list_map_keys = tuple(schema.get("x-kubernetes-list-map-keys", ()))


@dataclass
class Walk:
    """The errors of one walk: schema errors and CEL rule errors, kept apart so
    that schema errors are reported first."""

    schema: list[FieldError] = field(default_factory=list)
    rules: list[FieldError] = field(default_factory=list)

    @property
    def errors(self) -> list[FieldError]:
        return self.schema + self.rules


def apply_defaults(node: Node, value: Any) -> None:
    """Kubernetes' structural defaulting, in place: a missing property whose
    schema has a default gets a copy of it, top-down, so a defaulted object
    gets its own defaults too. Stored objects then say what they mean
    (`replicas: 1`), for every reader and for `get`'s columns."""
    if isinstance(value, dict):
        for name, sub in node.properties.items():
            if name not in value and sub.default is not NO_DEFAULT:
                value[name] = copy.deepcopy(sub.default)
            if name in value:
                apply_defaults(sub, value[name])
        if node.additional is not None:
            for name, item in value.items():
                if name not in node.properties:
                    apply_defaults(node.additional, item)
    elif isinstance(value, list) and node.items is not None:
        for item in value:
            apply_defaults(node.items, item)


def check_object(root: Node, obj: dict[str, Any]) -> list[FieldError]:
    """Every top-level field but metadata, and what lies under it."""
    walk = Walk()
    for name in root.required:
        if name not in obj:
            walk.schema.append(required(name))
    for name, value in obj.items():
        if name in _IMPLICIT_TOP:
            continue
        child = root.properties.get(name)
        if child is None:
            if not root.preserve_unknown:
                walk.schema.append(FieldError(name, "field not declared in schema"))
            continue
        if name == "status":
            if value is not None and not isinstance(value, dict):
                walk.schema.append(_type_error(name, value, "object"))
            continue
        check(child, value, name, walk)
    return walk.errors


def check(node: Node, value: Any, path: str, walk: Walk) -> None:
    if value is None:
        if not node.nullable:
            walk.schema.append(_type_error(path, value, node.type or "object"))
        return
    if not _type_ok(node, value):
        walk.schema.append(_type_error(path, value, node.type))
        return
    before = len(walk.schema)
    _check_value(node, value, path, walk)
    if isinstance(value, dict):
        _check_fields(node, value, path, walk)
    elif isinstance(value, list):
        _check_items(node, value, path, walk)
    _check_combinators(node, value, path, walk)
    if node.rules and len(walk.schema) == before:
        _check_rules(node, value, path, walk)


def _type_ok(node: Node, value: Any) -> bool:
    if node.int_or_string:
        return isinstance(value, (int, str)) and not isinstance(value, bool)
    expected = node.type
    if not expected:
        return True
    if expected == "object":
        return isinstance(value, dict)
    if expected == "array":
        return isinstance(value, list)
    if expected == "integer":
        return _is_integer(value)
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return _JSON_TYPES.get(type(value)) == expected


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _actual_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _type_error(path: str, value: Any, expected: str) -> FieldError:
    actual = _actual_type(value)
    return FieldError(
        path, f'Invalid value: "{actual}": {path} in body must be of type {expected}: "{actual}"'
    )


def _check_value(node: Node, value: Any, path: str, walk: Walk) -> None:
    errors = walk.schema
    if node.enum is not None and value not in node.enum:
        supported = ", ".join(show(v) for v in node.enum)
        errors.append(
            FieldError(path, f"Unsupported value: {show(value)}: supported values: {supported}")
        )
    if isinstance(value, str):
        _check_string(node, value, path, errors)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_number(node, value, path, errors)


def _check_string(node: Node, value: str, path: str, errors: list[FieldError]) -> None:
    if node.min_length is not None and len(value) < node.min_length:
        reason = f"{path} in body should be at least {node.min_length} chars long"
        errors.append(invalid(path, value, reason))
    if node.max_length is not None and len(value) > node.max_length:
        errors.append(FieldError(path, f"Too long: may not be more than {node.max_length} bytes"))
    if node.pattern is not None and not node.pattern.search(value):
        reason = f"{path} in body should match '{node.pattern.pattern}'"
        errors.append(invalid(path, value, reason))
    if node.fmt and not _format_ok(node.fmt, value):
        reason = f'{path} in body must be of type {node.fmt}: "{value}"'
        errors.append(invalid(path, value, reason))


def _format_ok(fmt: str, value: str) -> bool:
    if fmt == "byte":
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return False
        return True
    if fmt == "date-time":
        try:
            parse_rfc3339(value)
        except ValueError:
            return False
    return True  # Kubernetes checks no other format this project's schemas use


def _check_number(node: Node, value: float, path: str, errors: list[FieldError]) -> None:
    low, high = node.minimum, node.maximum
    if low is not None and (value <= low if node.exclusive_min else value < low):
        relation = "greater than" if node.exclusive_min else "greater than or equal to"
        reason = f"{path} in body should be {relation} {_num(low)}"
        errors.append(invalid(path, value, reason))
    if high is not None and (value >= high if node.exclusive_max else value > high):
        relation = "less than" if node.exclusive_max else "less than or equal to"
        reason = f"{path} in body should be {relation} {_num(high)}"
        errors.append(invalid(path, value, reason))


def _num(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def _check_fields(node: Node, value: dict[str, Any], path: str, walk: Walk) -> None:
    for name in node.required:
        if name not in value:
            walk.schema.append(required(f"{path}.{name}"))
    _check_property_count(node, value, path, walk.schema)
    for key, child_value in value.items():
        child = node.properties.get(key)
        if child is not None:
            check(child, child_value, f"{path}.{key}", walk)
        elif node.additional is not None:
            check(node.additional, child_value, f"{path}[{key}]", walk)
        elif not node.preserve_unknown and node.type == "object":
            walk.schema.append(FieldError(f"{path}.{key}", "field not declared in schema"))


def _check_property_count(
    node: Node, value: dict[str, Any], path: str, errors: list[FieldError]
) -> None:
    count = len(value)
    if node.min_properties is not None and count < node.min_properties:
        reason = f"{path} in body should have at least {node.min_properties} properties"
        errors.append(invalid(path, count, reason))
    if node.max_properties is not None and count > node.max_properties:
        errors.append(
            FieldError(path, f"Too many: {count}: must have at most {node.max_properties} items")
        )


def _check_items(node: Node, value: list[Any], path: str, walk: Walk) -> None:
    if node.min_items is not None and len(value) < node.min_items:
        reason = f"{path} in body should have at least {node.min_items} items"
        walk.schema.append(invalid(path, len(value), reason))
    if node.max_items is not None and len(value) > node.max_items:
        walk.schema.append(
            FieldError(path, f"Too many: {len(value)}: must have at most {node.max_items} items")
        )
    if node.items is not None:
        for i, item in enumerate(value):
            check(node.items, item, f"{path}[{i}]", walk)
    if node.list_type in ("set", "map"):
        _check_unique(node, value, path, walk.schema)


def _check_unique(node: Node, value: list[Any], path: str, errors: list[FieldError]) -> None:
    seen: set[str] = set()
    for i, item in enumerate(value):
        if node.list_type == "map" and isinstance(item, dict):
            key: Any = {k: item.get(k) for k in node.list_map_keys}
        else:
            key = item
        token = json.dumps(key, sort_keys=True, separators=(",", ":"))
        if token in seen:
            errors.append(FieldError(f"{path}[{i}]", f"Duplicate value: {token}"))
        seen.add(token)


def _check_combinators(node: Node, value: Any, path: str, walk: Walk) -> None:
    """oneOf/anyOf/allOf/not as Kubernetes uses them: value-only conditions such
    as "at most one of these fields" over the node's own value."""
    for sub in node.all_of:
        # Every branch must hold, so its own errors are the ones to report.
        _check_value(sub, value, path, walk)
        _check_combinators(sub, value, path, walk)
    if node.one_of and sum(_matches(s, value, path) for s in node.one_of) != 1:
        walk.schema.append(invalid(path, value, _one_of_reason(node, value, path)))
    if (
        node.any_of
        and not node.int_or_string
        and not any(_matches(s, value, path) for s in node.any_of)
    ):
        walk.schema.append(
            invalid(path, value, f"{path} in body must validate at least one schema (anyOf)")
        )
    if node.not_ is not None and _matches(node.not_, value, path):
        walk.schema.append(
            invalid(path, value, f"{path} in body must not validate the schema (not)")
        )


def _matches(sub: Node, value: Any, path: str) -> bool:
    probe = Walk()
    if isinstance(value, dict):
        missing = any(name not in value for name in sub.required)
        if missing:
            return False
    if sub.type or sub.int_or_string:
        check(sub, value, path, probe)
    else:
        _check_value(sub, value, path, probe)
        _check_combinators(sub, value, path, probe)
    return not probe.schema


def _one_of_reason(node: Node, value: Any, path: str) -> str:
    """Istio expresses "at most one of these fields" as oneOf over `required`; say so."""
    names = [s.required[0] for s in node.one_of if len(s.required) == 1]
    if isinstance(value, dict) and names:
        present = [n for n in names if n in value]
        if len(present) > 1:
            return f"only one of {', '.join(present)} may be set"
    return f"{path} in body should match exactly one schema in oneOf"


def _check_rules(node: Node, value: Any, path: str, walk: Walk) -> None:
    cel_value = cel.from_json(value, numbers_as_double=node.type == "number")
    type_name = _actual_type(value) if not node.type else node.type
    for rule in node.rules:
        message = cel.evaluate(rule, cel_value)
        if message is not None:
            walk.rules.append(FieldError(path, f'Invalid value: "{type_name}": {message}'))
