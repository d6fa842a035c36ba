"""Scope keys (translate/scope.py) against translation itself: proxies that
share a key must get byte-identical resources, and the ADS server's shared
Generator must answer exactly what translating for each proxy alone does.
The proxies differ in every field a Proxy has; the config uses everything
that reads a proxy's labels or namespace (sourceLabels, a Sidecar with a
workloadSelector, a gateway, an AuthorizationPolicy's selector)."""

from __future__ import annotations

import dataclasses
import itertools
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType

import pytest
from translate_sim import BOOKINFO_DIR, BOOKINFO_INSTANCES, INGRESS, bookinfo, instance

from pilotfish.model import Proxy, ProxyType, Snapshot, build_snapshot
from pilotfish.translate.scope import Kind, scope_key
from pilotfish.xds import types
from pilotfish.xds.generate import Generator, generate

SOURCE_LABELS_VS = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "ratings", "namespace": "default"},
    "spec": {
        "hosts": ["ratings"],
        "http": [
            {
                "match": [{"sourceLabels": {"app": "reviews", "version": "v2"}}],
                "route": [{"destination": {"host": "ratings", "subset": "v2"}}],
            },
            {"route": [{"destination": {"host": "ratings", "subset": "v1"}}]},
        ],
    },
}
SIDECAR = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "Sidecar",
    "metadata": {"name": "details-only", "namespace": "default"},
    "spec": {
        "workloadSelector": {"labels": {"app": "reviews", "version": "v3"}},
        "egress": [{"hosts": ["./details.default.svc.cluster.local"]}],
    },
}
AUTHZ = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "reviews-v2-deny-post", "namespace": "default"},
    "spec": {
        "selector": {"matchLabels": {"app": "reviews", "version": "v2"}},
        "action": "DENY",
        "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}],
    },
}
KINDS = {
    types.ROUTE: Kind.ROUTES,
    types.ENDPOINT: Kind.ENDPOINTS,
    types.CLUSTER: Kind.CLUSTERS,
    types.LISTENER: Kind.LISTENERS,
}


def _snapshot() -> Snapshot:
    if not BOOKINFO_DIR.exists():
        pytest.skip("Istio's Bookinfo samples are not here")
    files = ("destination-rule-all.yaml", "virtual-service-reviews-test-v2.yaml")
    return bookinfo(*files, "bookinfo-gateway.yaml", extra=[SOURCE_LABELS_VS, SIDECAR, AUTHZ])


def _proxies() -> list[Proxy]:
    """Sidecars of every Bookinfo instance and of none, in two namespaces,
    with and without placing metadata; a gateway; a proxyless client."""
    out = []
    for inst, namespace, port in itertools.product(
        [*BOOKINFO_INSTANCES, None], ["default", "other"], [None, "15101"]
    ):
        name = inst.name if inst else "client-0"
        labels = dict(inst.labels) if inst else {"app": "client"}
        out.append(
            Proxy(
                node_id=f"sidecar~127.0.0.1~{name}.{namespace}~{namespace}.svc.cluster.local",
                namespace=namespace,
                labels=MappingProxyType(labels),
                workload=inst.workload if inst else "client",
                metadata=MappingProxyType({"OUTBOUND_PORT": port} if port else {}),
            )
        )
    grpc = Proxy(node_id="proxyless~1~g.default~x", namespace="default", type=ProxyType.GRPC)
    elsewhere = dataclasses.replace(out[0], locality="us-west/zone-b/sub2")
    return [*out, elsewhere, INGRESS, grpc]


def _names(snapshot: Snapshot, proxy: Proxy, type_url: str) -> frozenset[str]:
    if type_url == types.ROUTE:
        from pilotfish.translate import route_names_for

        return frozenset(route_names_for(snapshot, proxy))
    if type_url == types.ENDPOINT:
        return frozenset(generate(snapshot, proxy, types.CLUSTER, frozenset()).names)
    if type_url == types.SECRET:
        return frozenset({"kubernetes://credential", "kubernetes://credential-cacert"})
    return frozenset()


@pytest.mark.parametrize("type_url", list(KINDS))
def test_proxies_sharing_a_key_get_the_same_resources(type_url: str) -> None:
    snapshot = _snapshot()
    by_key: dict[object, set[str]] = {}
    for proxy in _proxies():
        names = _names(snapshot, proxy, type_url)
        version = generate(snapshot, proxy, type_url, names).version
        key = (names, scope_key(snapshot, proxy, KINDS[type_url]))
        by_key.setdefault(key, set()).add(version)
    assert all(len(versions) == 1 for versions in by_key.values()), by_key
    # and the keys do share: far fewer translations than proxies
    assert len(by_key) < len(_proxies()) / 2 or type_url in (types.CLUSTER, types.LISTENER)


def test_labels_count_only_through_the_configs_selectors() -> None:
    snapshot = _snapshot()
    reviews_v1 = Proxy(node_id="a", namespace="default", labels={"app": "reviews", "version": "v1"})
    other = Proxy(node_id="b", namespace="default", labels={"app": "details", "team": "x"})
    reviews_v2 = Proxy(node_id="c", namespace="default", labels={"app": "reviews", "version": "v2"})
    assert scope_key(snapshot, reviews_v1, Kind.ROUTES) == scope_key(snapshot, other, Kind.ROUTES)
    assert scope_key(snapshot, reviews_v1, Kind.ROUTES) != scope_key(
        snapshot, reviews_v2, Kind.ROUTES
    )


def test_shared_generator_answers_what_each_proxy_alone_gets() -> None:
    snapshot = _snapshot()
    generator = Generator()
    asks = [
        (proxy, type_url, _names(snapshot, proxy, type_url))
        for proxy in _proxies()
        for type_url in KINDS
    ]
    with ThreadPoolExecutor(max_workers=16) as pool:
        shared = list(pool.map(lambda a: generator.generate(snapshot, *a), asks * 2))
    for (proxy, type_url, names), got in zip(asks * 2, shared, strict=True):
        alone = generate(snapshot, proxy, type_url, names)
        assert (got.version, got.names, got.resources) == (
            alone.version,
            alone.names,
            alone.resources,
        ), (proxy, type_url)
    assert generator.translations < len(asks)


def test_a_new_snapshot_is_translated_afresh() -> None:
    generator = Generator()
    proxy = _proxies()[0]
    first = build_snapshot([], BOOKINFO_INSTANCES)
    second = _snapshot()
    empty = generator.generate(first, proxy, types.CLUSTER, frozenset())
    full = generator.generate(second, proxy, types.CLUSTER, frozenset())
    assert empty.version != full.version
    assert full == generate(second, proxy, types.CLUSTER, frozenset())
    extra = instance("reviews", "v9", 19999)
    third = build_snapshot([], [*BOOKINFO_INSTANCES, extra])
    assert generator.generate(third, proxy, types.CLUSTER, frozenset()) == generate(
        third, proxy, types.CLUSTER, frozenset()
    )
