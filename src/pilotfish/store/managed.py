"""Field ownership: `metadata.managedFields`, and how apply and update change it.

The rules are structured-merge-diff's, so kubectl users see what they expect:
an apply owns exactly the leaves of its configuration; changing a field that
another manager owns is a conflict unless forced; leaves an applier stops
sending are removed unless someone else still owns them. A plain update owns
what it changed, and takes it away from everyone else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from pilotfish.api.errors import Conflict
from pilotfish.objects import Obj
from pilotfish.store.fields import (
    MISSING,
    FieldSet,
    Path,
    changed,
    from_fields_v1,
    is_empty_container,
    is_key_field,
    leaf_paths,
    merge,
    path_string,
    remove,
    schema_at,
    to_fields_v1,
    value_at,
)

Operation = Literal["Apply", "Update"]


@dataclass(frozen=True, order=True)
class Manager:
    """The identity of one managedFields entry. Appliers are one entry whatever
    apiVersion they send, as in Kubernetes."""

    name: str
    operation: Operation
    subresource: str = ""


@dataclass(frozen=True)
class Entry:
    manager: Manager
    api_version: str
    time: str
    fields: FieldSet

    def describe(self) -> str:
        """`"alice"`, or `"bob" using v1` for an updater, as kubectl words a conflict."""
        name = f'"{self.manager.name}"'
        return name if self.manager.operation == "Apply" else f"{name} using {self.api_version}"


Owners = dict[Manager, Entry]


def read_owners(managed_fields: Any) -> Owners:
    owners: Owners = {}
    for raw in managed_fields if isinstance(managed_fields, list) else []:
        manager = Manager(raw["manager"], raw["operation"], raw.get("subresource", ""))
        fields = from_fields_v1(raw.get("fieldsV1") or {})
        owners[manager] = Entry(manager, raw.get("apiVersion", ""), raw.get("time", ""), fields)
    return owners


def render_owners(owners: Owners) -> list[Obj]:
    out = []
    for entry in owners.values():
        raw: Obj = {
            "manager": entry.manager.name,
            "operation": entry.manager.operation,
            "apiVersion": entry.api_version,
            "time": entry.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(entry.fields),
        }
        if entry.manager.subresource:
            raw["subresource"] = entry.manager.subresource
        out.append(raw)
    return out


def record(
    owners: Owners, sets: dict[Manager, FieldSet], me: Manager, api_version: str, now: str
) -> Owners:
    """New entries from new field sets. An entry whose set is unchanged keeps its
    time, so a repeated apply changes nothing at all; empty entries go."""
    out: Owners = {}
    for manager in [*owners, *(m for m in sets if m not in owners)]:
        fields = sets.get(manager, frozenset())
        old = owners.get(manager)
        if not fields or not manager.name:
            continue  # an anonymous writer takes fields from others but owns none
        if (
            old is not None
            and old.fields == fields
            and (manager != me or old.api_version == api_version)
        ):
            out[manager] = old
        elif old is not None and manager != me:
            out[manager] = replace(old, fields=fields)
        else:
            out[manager] = Entry(manager, api_version, now, fields)
    return out


# -- apply ------------------------------------------------------------------------------


def apply_config(
    live: Obj, config: Obj, owners: Owners, me: Manager, schema: Obj | None, force: bool
) -> tuple[Obj, dict[Manager, FieldSet]]:
    """`config` applied by `me` over `live`: the merged object and every manager's new set."""
    applied = leaf_paths(config, schema)
    merged: Obj = merge(live, config, schema)
    sets = {m: e.fields for m, e in owners.items() if m != me}
    conflicts = [
        (m, p)
        for m in sorted(sets)
        for p in sorted(sets[m])
        if changed(value_at(live, p), value_at(merged, p), schema_at(schema, p))
    ]
    if conflicts and not force:
        raise Conflict(conflict_message([(owners[m], p) for m, p in conflicts]))
    for m, p in conflicts:
        sets[m] = sets[m] - {p}
    previous = owners[me].fields if me in owners else frozenset()
    kept = applied.union(*sets.values())
    prune(merged, previous - applied, kept)
    sets[me] = applied
    return merged, {m: _existing(merged, s) for m, s in sets.items()}


def conflict_message(conflicts: list[tuple[Entry, Path]]) -> str:
    """Kubernetes' wording, field by field and grouped by manager."""
    if len(conflicts) == 1:
        entry, path = conflicts[0]
        return (
            f"Apply failed with 1 conflict: conflict with {entry.describe()}: {path_string(path)}"
        )
    by_manager: dict[str, list[Path]] = {}
    for entry, path in conflicts:
        by_manager.setdefault(entry.describe(), []).append(path)
    lines = []
    for who in sorted(by_manager):
        lines.append(f"conflicts with {who}:")
        lines.extend(f"- {path_string(p)}" for p in by_manager[who])
    return f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)


def prune(obj: Obj, candidates: Iterable[Path], kept: FieldSet) -> None:
    """Remove what nobody owns any more, and the empty maps and lists left behind.
    A path is spared while something owned lies below it, and a list-map item's
    keys stay as long as the item does."""
    above_owned = {q[:i] for q in kept for i in range(1, len(q))}
    for path in sorted(candidates, key=len, reverse=True):
        if path in kept or path in above_owned or is_key_field(path):
            continue
        remove(obj, path)
        _drop_empty_parents(obj, path, kept)


def _drop_empty_parents(obj: Obj, path: Path, kept: FieldSet) -> None:
    for end in range(len(path) - 1, 0, -1):
        parent = path[:end]
        if parent in kept or not is_empty_container(value_at(obj, parent)):
            return
        remove(obj, parent)


def _existing(obj: Obj, fields: FieldSet) -> FieldSet:
    return frozenset(p for p in fields if value_at(obj, p) is not MISSING)


# -- update -----------------------------------------------------------------------------


def update_sets(
    live: Obj, new: Obj, owners: Owners, me: Manager, schema: Obj | None
) -> dict[Manager, FieldSet]:
    """A replace by `me`: it owns what it changed (plus what it owned before and
    is still there); everyone else loses what changed under them."""

    def moved(path: Path) -> bool:
        return changed(value_at(live, path), value_at(new, path), schema_at(schema, path))

    sets = {m: frozenset(p for p in e.fields if not moved(p)) for m, e in owners.items() if m != me}
    before = leaf_paths(live, schema)
    # A leaf is new also when it was not one before: a map emptied by this update.
    touched = {p for p in leaf_paths(new, schema) if p not in before or moved(p)}
    mine = owners[me].fields if me in owners else frozenset()
    sets[me] = _existing(new, mine | touched)
    return sets
