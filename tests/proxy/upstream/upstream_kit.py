"""Building clusters for tests from Envoy-style dicts, as a control plane would send them."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster as ClusterProto
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from google.protobuf import json_format

from pilotfish.proxy.upstream import (
    Cluster,
    Host,
    compile_cluster,
    compile_load_assignment,
)


def cluster_proto(**fields: Any) -> ClusterProto:
    data = {"name": "svc", "type": "STATIC", "connect_timeout": "1s", **fields}
    return json_format.ParseDict(data, ClusterProto())


def endpoint(
    port: int, health: str = "HEALTHY", weight: int = 1, addr: str = "10.0.0.1"
) -> dict[str, Any]:
    return {
        "endpoint": {"address": {"socket_address": {"address": addr, "port_value": port}}},
        "health_status": health,
        "load_balancing_weight": weight,
    }


def localities(*groups: dict[str, Any], **policy: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"cluster_name": "svc", "endpoints": list(groups)}
    if policy:
        out["policy"] = policy
    return out


def level(
    priority: int, healthy: int, unhealthy: int = 0, degraded: int = 0, base: int = 0
) -> dict[str, Any]:
    """One priority level with so many hosts of each health (ports from `base`)."""
    base += 8000
    eps = [endpoint(base + i) for i in range(healthy)]
    eps += [endpoint(base + healthy + i, "UNHEALTHY") for i in range(unhealthy)]
    eps += [endpoint(base + healthy + unhealthy + i, "DEGRADED") for i in range(degraded)]
    return {"priority": priority, "lb_endpoints": eps}


def make_cluster(assignment: dict[str, Any], seed: int = 1, **fields: Any) -> Cluster:
    spec = compile_cluster(cluster_proto(load_assignment=assignment, **fields))
    return Cluster(spec, random.Random(seed))


def eds_assignment(data: dict[str, Any]) -> Any:
    return compile_load_assignment(json_format.ParseDict(data, ClusterLoadAssignment()))


def spread(cluster: Cluster, n: int, seed: int = 7) -> Counter[Host | None]:
    rng = random.Random(seed)
    return Counter(cluster.pick(rng=rng) for _ in range(n))


def share_by_priority(cluster: Cluster, n: int = 20000) -> dict[int, float]:
    counts = Counter(h.priority for h in spread(cluster, n).elements() if h is not None)
    return {p: round(100 * c / n) for p, c in sorted(counts.items())}
