"""Properties of server-side apply over random configurations by two appliers and an editor."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilotfish.api.errors import Conflict, NotFound
from pilotfish.store import Key
from pilotfish.store.fields import MISSING, changed, leaf_paths, value_at
from pilotfish.store.managed import read_owners
from pilotfish.store.resources import ResourceStore, _owned_part

KEYS = st.sampled_from(["a", "b", "c"])
SCALARS = st.one_of(st.integers(0, 2), st.sampled_from(["x", "y"]), st.booleans())
VALUES = st.recursive(
    st.one_of(SCALARS, st.lists(st.integers(0, 2), max_size=2)),
    lambda inner: st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=6,
)
CONFIGS = st.dictionaries(KEYS, VALUES, max_size=3)
STEPS = st.lists(
    st.tuples(st.sampled_from(["alice", "bob", "editor"]), CONFIGS, st.booleans()),
    min_size=1,
    max_size=6,
)
NAMES = itertools.count()


def configmap(name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def check_invariants(stored: dict[str, Any]) -> None:
    body = _owned_part(stored)
    owners = read_owners(stored["metadata"].get("managedFields"))
    owned = frozenset().union(*(e.fields for e in owners.values()))
    for path in leaf_paths(body, None):
        assert path in owned or any(path[:i] in owned for i in range(1, len(path))), (
            f"{path} has no owner in {stored}"
        )
    for path in owned:
        assert value_at(body, path) is not MISSING, f"owned {path} is gone: {stored}"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=STEPS)
def test_random_applies_keep_ownership_consistent(store: ResourceStore, steps: list) -> None:
    name = f"cm-{next(NAMES)}"
    key = Key("", "ConfigMap", "default", name)
    for manager, data, force in steps:
        before = _get(store, key)
        if manager == "editor":  # a plain replace (`kubectl edit`), not an apply
            write = store.update if before else store.create
            check_invariants(write(configmap(name, data), manager=manager))
            continue
        try:
            result = store.apply(configmap(name, data), manager=manager, force=force)
        except Conflict:
            assert not force
            assert before is not None and store.get(key) == before, (
                "a refused apply changed the object"
            )
            continue
        # Whatever was applied is now the value (an applied empty map: a map), and it is this manager's.
        applied = leaf_paths({"data": data}, None)
        for path in applied:
            assert not changed(value_at({"data": data}, path), value_at(result, path), None), path
        owners = read_owners(result["metadata"].get("managedFields"))
        assert [e.fields for m, e in owners.items() if m.name == manager] == [applied]
        check_invariants(result)
        # Applying the same thing again is a no-op.
        assert store.apply(configmap(name, data), manager=manager, force=force) == result


def _get(store: ResourceStore, key: Key) -> dict[str, Any] | None:
    try:
        return store.get(key)
    except NotFound:
        return None
