"""The ADS server pushes after a change only the types its kind can alter
(xds/types.py AFFECTED_BY_KIND). Checked against translation: config that
differs only in objects of one kind must give every proxy the same resources
of every other type."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_scope import _names, _proxies
from translate_sim import BOOKINFO_DIR, BOOKINFO_INSTANCES, BOOKINFO_SERVICES, load_file

from pilotfish.model import ProxyType, build_snapshot
from pilotfish.xds import types
from pilotfish.xds.generate import generate

Obj = dict[str, Any]
FILES = (
    "destination-rule-all.yaml",
    "virtual-service-reviews-test-v2.yaml",
    "virtual-service-ratings-test-abort.yaml",
    "bookinfo-gateway.yaml",
)


CREDENTIAL = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "credential", "namespace": "default"},
    "type": "kubernetes.io/tls",
    "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5", "ca.crt": "Y2E="},
}


def _base() -> list[Obj]:
    if not BOOKINFO_DIR.exists():
        pytest.skip("Istio's Bookinfo samples are not here")
    files = (o for f in FILES for o in load_file(f))
    return [*copy.deepcopy(BOOKINFO_SERVICES), *files, copy.deepcopy(CREDENTIAL)]


def _changed(objects: list[Obj], kind: str) -> list[Obj]:
    """`objects` with every object of `kind` changed in what it routes or
    selects, and one more of that kind."""
    out = copy.deepcopy(objects)
    for obj in out:
        if obj["kind"] != kind:
            continue
        spec = obj.get("spec", {})
        if kind == "VirtualService":
            for http in spec["http"]:
                http["timeout"] = "3s"
                http["retries"] = {"attempts": 5, "retryOn": "5xx"}
        elif kind == "DestinationRule":
            spec["subsets"] = spec["subsets"][:1]
            spec["trafficPolicy"] = {"loadBalancer": {"consistentHash": {"httpHeaderName": "x"}}}
        elif kind == "Secret":
            obj["data"]["ca.crt"] = "b3RoZXIgY2E="
        elif kind == "Gateway":
            spec["servers"].append({"port": {"number": 9090, "name": "h", "protocol": "HTTP"}})
            spec["servers"][0]["hosts"] = ["bookinfo.example"]
    extra = copy.deepcopy(next(o for o in out if o["kind"] == kind))
    extra["metadata"]["name"] = "extra"
    return [*out, extra]


@pytest.mark.parametrize("kind", sorted(types.AFFECTED_BY_KIND))
def test_a_change_of_a_kind_alters_only_its_types(kind: str) -> None:
    before = build_snapshot(_base(), BOOKINFO_INSTANCES)
    after = build_snapshot(_changed(_base(), kind), BOOKINFO_INSTANCES)
    moved: set[str] = set()
    for proxy in _proxies():
        sidecar = proxy.type is ProxyType.SIDECAR
        affected = types.affected_types(frozenset({kind}), sidecar=sidecar)
        for type_url in types.PUSH_ORDER:
            names = _names(before, proxy, type_url) | _names(after, proxy, type_url)
            old = generate(before, proxy, type_url, names).version
            new = generate(after, proxy, type_url, names).version
            if old != new:
                assert type_url in affected, (kind, types.short_name(type_url), proxy)
                moved.add(type_url)
    assert moved, f"the {kind} change altered nothing: the test would prove nothing"


def test_other_kinds_and_unknown_changes_push_everything() -> None:
    assert types.affected_types(frozenset()) == types.ALL_TYPES
    for kind in ("Service", "ServiceEntry", "WorkloadEntry", "Sidecar", "Instance"):
        assert types.affected_types(frozenset({kind})) == types.ALL_TYPES
    both = types.affected_types(frozenset({"VirtualService", "Gateway"}))
    assert both == {types.ROUTE, types.LISTENER}
    assert types.affected_types(frozenset({"VirtualService"}), sidecar=True) == {types.ROUTE}
    assert types.affected_types(frozenset({"Service"}), sidecar=True) == types.ALL_TYPES
