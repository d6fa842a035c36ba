"""Picks per second for each load-balancing policy, as the proxy's data path calls them.

    .venv/bin/python bench/lb_pick.py [hosts]

Each policy runs over a STATIC cluster of healthy hosts (one priority), then
RING_HASH and MAGLEV again with a hash key per request, and ROUND_ROBIN with a
second priority taking spill-over, to show the cost of the priority roll.
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster as ClusterProto
from google.protobuf import json_format

from pilotfish.proxy.upstream import Cluster, compile_cluster, stable_hash

POLICIES = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV")


def cluster(policy: str, hosts: int, unhealthy: int = 0, backup: int = 0) -> Cluster:
    def ep(i: int, health: str = "HEALTHY") -> dict[str, Any]:
        addr = {"socket_address": {"address": f"10.0.{i // 250}.{i % 250}", "port_value": 8080}}
        return {"endpoint": {"address": addr}, "health_status": health}

    p0 = [ep(i) for i in range(hosts)] + [ep(hosts + i, "UNHEALTHY") for i in range(unhealthy)]
    groups = [{"priority": 0, "lb_endpoints": p0}]
    if backup:
        groups.append({"priority": 1, "lb_endpoints": [ep(1000 + i) for i in range(backup)]})
    data = {
        "name": "bench",
        "type": "STATIC",
        "lb_policy": policy,
        "load_assignment": {"cluster_name": "bench", "endpoints": groups},
    }
    return Cluster(compile_cluster(json_format.ParseDict(data, ClusterProto())), random.Random(1))


def rate(fn: Any, n: int = 200_000) -> float:
    start = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - start)


def main() -> None:
    hosts = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    keys = [stable_hash(f"user-{i}".encode()) for i in range(1024)]
    print(f"{'policy':<34} {'picks/s':>12} {'µs/pick':>9}")
    for policy in POLICIES:
        c = cluster(policy, hosts)
        pick = c.pick
        _report(policy, rate(lambda n, pick=pick: [pick() for _ in range(n)]))
        if policy in ("RING_HASH", "MAGLEV"):
            _report(
                f"{policy} + hash key",
                rate(lambda n, pick=pick: [pick(keys[i & 1023]) for i in range(n)]),
            )
    c = cluster("ROUND_ROBIN", hosts, unhealthy=hosts, backup=hosts)
    pick = c.pick
    _report("ROUND_ROBIN, P0 half down -> P1", rate(lambda n: [pick() for _ in range(n)]))
    c = cluster("ROUND_ROBIN", hosts)
    first = c.pick()
    pick = c.pick
    _report(
        "ROUND_ROBIN, exclude previous", rate(lambda n: [pick(None, {first}) for _ in range(n)])
    )
    started = time.perf_counter()
    cluster("MAGLEV", hosts)
    print(f"maglev table build ({hosts} hosts, 65537 slots): {time.perf_counter() - started:.3f} s")
    started = time.perf_counter()
    key_rate = rate(lambda n: [stable_hash(b"session-cookie-value") for _ in range(n)])
    _report("stable_hash (per hashed request)", key_rate)


def _report(name: str, per_second: float) -> None:
    print(f"{name:<34} {per_second:>12,.0f} {1e6 / per_second:>9.3f}")


if __name__ == "__main__":
    main()
