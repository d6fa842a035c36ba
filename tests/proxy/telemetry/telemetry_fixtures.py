"""Shared builders: a bootstrap node written the way Istio's agent writes it."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from pilotfish.proxy.bootstrap import parse_bootstrap

PRODUCTPAGE_NODE: dict[str, Any] = {
    "id": "sidecar~10.1.0.7~productpage-v1-5d9b4c9849-abcde.default~default.svc.cluster.local",
    "cluster": "productpage.default",
    "metadata": {
        "NAME": "productpage-v1-5d9b4c9849-abcde",
        "NAMESPACE": "default",
        "WORKLOAD_NAME": "productpage-v1",
        "SERVICE_ACCOUNT": "bookinfo-productpage",
        "CLUSTER_ID": "Kubernetes",
        "ISTIO_VERSION": "1.22.0",
        "MESH_ID": "cluster.local",
        "OWNER": "kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1",
        "INTERCEPTION_MODE": "REDIRECT",
        "LABELS": {
            "app": "productpage",
            "version": "v1",
            "pod-template-hash": "5d9b4c9849",
            "security.istio.io/tlsMode": "istio",
            "service.istio.io/canonical-name": "productpage",
            "service.istio.io/canonical-revision": "v1",
        },
    },
}


def bootstrap_node(node: dict[str, Any] = PRODUCTPAGE_NODE) -> Any:
    """The Node proto, through the same loader `pilotfish proxy --bootstrap` uses."""
    return parse_bootstrap({"node": node}).node


def samples(exposition: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, parsed by prometheus_client."""
    found = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in found, f"duplicate sample {key}"
            found[key] = s.value
    return found


def families(exposition: bytes) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(exposition.decode())}
