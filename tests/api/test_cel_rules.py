"""Every x-kubernetes-validations rule in the packaged CRDs compiles and runs.

A rule our CEL environment cannot evaluate (an undeclared function, a parse
error) would otherwise show up only when a user's object reaches it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pilotfish.api import cel
from pilotfish.api.structural import compile_schema
from pilotfish.api.validation import validate

SCHEMAS = Path(__file__).resolve().parents[2] / "src/pilotfish/api/schemas"

CRD_FILES = ("istio-crd-all.gen.yaml", "flagger-crd.yaml", "core-v1.yaml", "pilotfish.yaml")


def _rules(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    if isinstance(node, dict):
        for spec in node.get("x-kubernetes-validations", ()):
            yield path, node, spec
        for key, child in node.items():
            yield from _rules(child, f"{path}.{key}")
    elif isinstance(node, list):
        for child in node:
            yield from _rules(child, path)


def _all_rules() -> list[Any]:
    found: dict[tuple[str, str], Any] = {}
    for filename in CRD_FILES:
        for crd in yaml.safe_load_all((SCHEMAS / filename).read_text(encoding="utf-8")):
            if crd and crd.get("kind") == "CustomResourceDefinition":
                for version in crd["spec"]["versions"]:
                    schema = version["schema"]["openAPIV3Schema"]
                    for path, node, spec in _rules(schema, crd["spec"]["names"]["kind"]):
                        found.setdefault((spec["rule"], node.get("type", "")), (path, node, spec))
    return [pytest.param(*v, id=v[0][-60:]) for v in found.values()]


def _sample(node: dict[str, Any], rule: str, depth: int = 0) -> Any:
    """A plausible value of a schema node, shaped so the rule under test can run."""
    kind = node.get("type")
    if node.get("x-kubernetes-int-or-string"):
        return 80
    if kind == "object":
        if "additionalProperties" in node:
            return {"80": _sample(node["additionalProperties"], rule, depth + 1)}
        props = node.get("properties", {}) if depth < 3 else {}
        return {k: _sample(v, rule, depth + 1) for k, v in props.items()}
    if kind == "array":
        return [_sample(node.get("items", {}), rule, depth + 1)]
    if kind == "integer":
        return 80
    if kind == "number":
        return 5.0
    if kind == "boolean":
        return True
    if "duration(" in rule:
        return "1s"
    if "url(" in rule or "isURL" in rule:
        return "http://example.com/x"
    return node.get("enum", ["80"])[0]


RULES = _all_rules()


def test_the_crds_carry_rules() -> None:
    assert len(RULES) > 30


@pytest.mark.parametrize(("path", "node", "spec"), RULES)
def test_rule_compiles_and_evaluates(path: str, node: dict[str, Any], spec: dict[str, Any]) -> None:
    if cel.is_transition_rule(spec):
        pytest.skip("transition rule: needs the stored object (oldSelf)")
    rule = cel.compile_rule(spec)
    value = cel.from_json(
        _sample(node, spec["rule"]), numbers_as_double=node.get("type") == "number"
    )
    outcome = cel.evaluate(rule, value)
    assert outcome is None or "evaluating rule" not in outcome, outcome


def test_rule_text_is_compiled_once() -> None:
    spec = {"rule": "self.size() == 0", "message": "m"}
    assert cel.compile_rule(spec).program is cel.compile_rule(spec).program


def test_a_rule_that_errors_is_reported_not_passed() -> None:
    rule = cel.compile_rule(
        {"rule": "self.all(key, 0 < int(key))", "message": "port must be numeric"}
    )
    outcome = cel.evaluate(rule, cel.from_json({"http": "x"}))
    assert (
        outcome
        == "type conversion error from 'string' to 'int' evaluating rule: port must be numeric"
    )


def test_go_durations_in_rules() -> None:
    rule = cel.compile_rule({"rule": "duration(self) >= duration('1ms')", "message": "too short"})
    assert cel.evaluate(rule, cel.from_json("1h30m")) is None
    assert cel.evaluate(rule, cel.from_json("500us")) == "too short"
    assert "evaluating rule: too short" in str(cel.evaluate(rule, cel.from_json("apple")))


def test_url_functions() -> None:
    rule = cel.compile_rule(
        {"rule": 'url(self).getScheme() in ["http", "https"]', "message": "scheme"}
    )
    assert cel.evaluate(rule, cel.from_json("https://example.com/jwks")) is None
    assert cel.evaluate(rule, cel.from_json("ftp://example.com")) == "scheme"
    assert "URL parse error" in str(cel.evaluate(rule, cel.from_json("relative/path")))


def test_schema_is_compiled_once_per_kind_and_version() -> None:
    from pilotfish.api.validation import compiled_schema

    first = compiled_schema("networking.istio.io", "VirtualService", "v1")
    assert compiled_schema("networking.istio.io", "VirtualService", "v1") is first
    assert compile_schema({"type": "object"}) is not first


def test_bookinfo_virtual_service_validates_from_the_cache() -> None:
    from pilotfish.api.validation import compiled_schema

    vs = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews"},
        "spec": {
            "hosts": ["reviews"],
            "http": [
                {
                    "route": [
                        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
                        {"destination": {"host": "reviews", "subset": "v3"}, "weight": 50},
                    ],
                    "timeout": "10s",
                }
            ],
        },
    }
    assert validate(vs) == []
    hits = compiled_schema.cache_info().hits
    for _ in range(20):
        assert validate(vs) == []
    assert compiled_schema.cache_info().hits >= hits + 20
