"""The cluster a forwarded request goes to, kept from the request before
(exchange.LastCluster): it must follow every cluster update."""

from __future__ import annotations

from upstream_kit import cluster_proto

from pilotfish.proxy.exchange import LastCluster
from pilotfish.proxy.stats import StatsRegistry
from pilotfish.proxy.upstream.cluster_set import ClusterSet


def test_the_kept_cluster_follows_each_cluster_update() -> None:
    stats, last, name = StatsRegistry(), LastCluster(), "svc"
    clusters = ClusterSet().with_clusters([cluster_proto()])
    svc = clusters.get(name)
    assert svc is not None
    assert last.find(clusters, name, stats) == (svc, None)
    scope = stats.cluster(name)
    last.keep(clusters, name, stats, svc, scope)
    assert last.find(clusters, name, stats) == (svc, scope)
    # A CDS update that changes the cluster: the new one, looked up again.
    changed = clusters.with_clusters([cluster_proto(lb_policy="RANDOM")])
    newer = changed.get(name)
    assert newer is not None and newer is not svc
    assert last.find(changed, name, stats) == (newer, None)
    # One that removes it: no cluster (the request is answered NC).
    assert last.find(changed.with_clusters([]), name, stats) == (None, None)
    # Another cluster, or another proxy's registry: not the kept one.
    assert last.find(clusters, "other", stats) == (None, None)
    assert last.find(clusters, name, StatsRegistry()) == (svc, None)
