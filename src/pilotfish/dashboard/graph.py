"""The mesh graph, as Kiali's workload graph with service nodes: pure
functions from what each edge counted in a window to nodes and edges with
request rate, error share, latency quantiles, mutual TLS and health.

Which reporter an edge comes from follows Kiali: a call out of a sidecar
the control plane reads is counted where it starts (reporter="source", so
a fault injected by the caller's sidecar, which never reaches the callee,
is seen); a call from outside the mesh only where it lands
(reporter="destination"). The service -> workload hop is the callee's own
count (reporter="destination"), which also says whether it ran mutual TLS.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pilotfish.dashboard.series import TCP_CLOSED, TCP_OPENED, TCP_RECEIVED, TCP_SENT, UNKNOWN, Edge
from pilotfish.rollout.metrics.builtin import Totals
from pilotfish.rollout.metrics.promql import histogram_quantile

Json = dict[str, Any]
# Kiali's default health thresholds for HTTP 5xx on an edge: degraded above 0, failure at 10%.
DEGRADED_ABOVE = 0.0
FAILURE_AT = 0.10
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99))
GATEWAY_APP = "ingressgateway"


def health(errors: float, requests: float) -> str:
    """Kiali's colour for an edge or node: idle, healthy, degraded or failure."""
    if requests <= 0:
        return "idle"
    # Rounded: counts read back from Prometheus as rate x window carry float
    # noise, and 10% of them must not read as 9.999999%.
    share = round(errors / requests, 9)
    if share >= FAILURE_AT:
        return "failure"
    return "degraded" if share > DEGRADED_ABOVE else "healthy"


def metrics(counts: Totals, window_s: float) -> Json:
    """Golden metrics of a sum of series over a window of `window_s` seconds."""
    errors = counts.requests - counts.ok
    found: Json = {
        "requests": counts.requests,
        "rps": counts.requests / window_s,
        "errorRate": errors / counts.requests if counts.requests else None,
        "successRate": counts.ok / counts.requests if counts.requests else None,
        "health": health(errors, counts.requests),
    }
    for name, q in QUANTILES:
        found[name] = histogram_quantile(q, counts.buckets) if counts.requests else None
    if any(counts.tcp.values()):
        found["tcp"] = {
            "opened": counts.tcp.get(TCP_OPENED, 0.0),
            "open": counts.tcp.get(TCP_OPENED, 0.0) - counts.tcp.get(TCP_CLOSED, 0.0),
            "sentBytesPerSecond": counts.tcp.get(TCP_SENT, 0.0) / window_s,
            "receivedBytesPerSecond": counts.tcp.get(TCP_RECEIVED, 0.0) / window_s,
        }
    return found


def workload_id(namespace: str, workload: str) -> str:
    return "unknown" if workload == UNKNOWN else f"workload:{namespace}/{workload}"


def service_id(edge: Edge) -> str:
    """A short host (a caller's sidecar reports the Host it was asked for when
    it answered itself, as for an injected fault) resolves as Kubernetes DNS
    resolves it: in the caller's namespace."""
    host = edge.service
    if "." not in host and host != UNKNOWN and edge.source_namespace != UNKNOWN:
        host = f"{host}.{edge.source_namespace}.svc.cluster.local"
    return f"service:{host}"


def hops(
    counted: Mapping[Edge, Totals], meshed: Collection[tuple[str, str]]
) -> dict[tuple[str, str, str], tuple[Totals, Totals]]:
    """(source node, target node, protocol) -> (counts, counts under mutual TLS)."""
    found: dict[tuple[str, str, str], tuple[Totals, Totals]] = {}

    def add(key: tuple[str, str, str], counts: Totals, mtls: bool) -> None:
        total, secure = found.get(key, (Totals(), Totals()))
        found[key] = (total + counts, secure + counts if mtls else secure)

    for edge, counts in counted.items():
        protocol = "tcp" if edge.protocol == "tcp" else "http"
        mtls = edge.security == "mutual_tls"  # "unknown" on the source side, as in Istio
        src = workload_id(edge.source_namespace, edge.source_workload)
        from_meshed = (edge.source_namespace, edge.source_workload) in meshed
        if edge.reporter == "source" or not from_meshed:
            add((src, service_id(edge), protocol), counts, mtls)
        if edge.reporter == "destination" and edge.destination_workload != UNKNOWN:
            dst = workload_id(edge.destination_namespace, edge.destination_workload)
            add((service_id(edge), dst, protocol), counts, mtls)
    return found


def build_graph(
    counted: Mapping[Edge, Totals],
    window_s: float,
    meshed: Collection[tuple[str, str]],
    at: float,
) -> Json:
    """The graph of one window: every node and edge that carried traffic in it."""
    edges = []
    nodes: dict[str, Json] = {}
    for (src, dst, protocol), (counts, secure) in sorted(hops(counted, meshed).items()):
        found = metrics(counts, window_s)
        found.update(source=src, target=dst, protocol=protocol)
        found["mtls"] = secure.requests / counts.requests if counts.requests else 0.0
        edges.append(found)
        nodes.setdefault(src, _node(src, meshed))
        nodes.setdefault(dst, _node(dst, meshed))
    for edge in edges:  # a node's health is that of the calls it answers
        node = nodes[edge["target"]]
        node["requests"] += edge["requests"]
        node["errors"] += edge["requests"] * (edge["errorRate"] or 0.0)
    for node in nodes.values():
        node["health"] = health(node.pop("errors"), node["requests"])
    return {
        "timestamp": at,
        "windowSeconds": window_s,
        "nodes": sorted(nodes.values(), key=lambda n: str(n["id"])),
        "edges": edges,
    }


def _node(node_id: str, meshed: Collection[tuple[str, str]]) -> Json:
    kind, _, rest = node_id.partition(":")
    if kind == "unknown":
        return {
            "id": node_id,
            "type": "unknown",
            "name": "unknown",
            "namespace": "",
            "requests": 0.0,
            "errors": 0.0,
        }
    if kind == "service":
        name, _, namespace = rest.partition(".svc")[0].partition(".")
        return {
            "id": node_id,
            "type": "service",
            "name": name,
            "namespace": namespace,
            "host": rest,
            "requests": 0.0,
            "errors": 0.0,
        }
    namespace, _, name = rest.partition("/")
    return {
        "id": node_id,
        "type": "workload",
        "name": name,
        "namespace": namespace,
        "gateway": GATEWAY_APP in name,
        "meshed": (namespace, name) in meshed,
        "requests": 0.0,
        "errors": 0.0,
    }
