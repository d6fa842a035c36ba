"""Analyzers read objects validation refuses (istioctl reports IST0106 and
analyzes on), so no value anywhere in a spec may crash one: every subtree of
every object in Istio's analyzer inputs and in pilotfish's examples is
replaced, in turn, by values of the wrong shape."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.analysis.test_analyzer_conformance import INPUTS

from pilotfish.analysis import ANALYZERS, SCHEMA, analyze
from pilotfish.cli.manifests import read_documents

REPO = Path(__file__).resolve().parents[2]

FILES = [
    "virtualservice_destinationhosts.yaml",
    "virtualservice_dupmatches.yaml",
    "authorizationpolicies.yaml",
    "destinationrule-compound-simple-mutual.yaml",
    "envoy-filter-replace-operation.yaml",
    "gateway-duplicate-certificate.yaml",
    "deployment-multi-service.yaml",
    "sidecar-selector.yaml",
    "telemetry-invalid-provider.yaml",
    "serviceentry-missing-addresses-protocol.yaml",
    "incorrect-port-name-external-name-service-type.yaml",
]
JUNK: tuple[Any, ...] = (7, "x", [1], {"x": None})
NOT_SCHEMA = tuple(a for a in ANALYZERS if a is not SCHEMA)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if path:
        yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _paths(child, (*path, i))


def _replaced(obj: dict[str, Any], path: tuple[Any, ...], junk: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    node: Any = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = copy.deepcopy(junk)
    return out


SOURCES = [str(INPUTS / f) for f in FILES] + [
    str(REPO / "examples" / "bookinfo"),
    str(REPO / "examples" / "canary"),
]


@pytest.mark.parametrize("source", SOURCES, ids=[Path(s).name for s in SOURCES])
def test_no_value_of_the_wrong_shape_crashes_an_analyzer(source: str) -> None:
    objects = [d.obj for d in read_documents([source])]
    for i, obj in enumerate(objects):
        paths = [p for p in _paths(obj) if p[0] not in ("apiVersion", "kind")]
        for path in paths:
            for junk in JUNK:
                mutated = [*objects[:i], _replaced(obj, path, junk), *objects[i + 1 :]]
                analyze(mutated, NOT_SCHEMA)  # must not raise
