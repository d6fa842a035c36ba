"""The proxy's clusters by name, one set per config snapshot.

The clusters themselves are `upstream.Cluster` run-time objects: a CDS push
makes new ones from the old (an EDS cluster keeps its hosts and their state),
an EDS push updates them in place once every assignment has compiled.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from envoy.config.cluster.v3.cluster_pb2 import Cluster as ClusterProto
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from pilotfish.proxy.upstream.cluster import Cluster
from pilotfish.proxy.upstream.compile import compile_cluster, compile_load_assignment


@dataclass(frozen=True)
class ClusterSet:
    clusters: dict[str, Cluster] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.clusters)

    def get(self, name: str) -> Cluster | None:
        return self.clusters.get(name)

    def eds_names(self) -> frozenset[str]:
        return frozenset(c.spec.eds_service_name for c in self.clusters.values() if c.spec.is_eds)

    def with_clusters(self, protos: Iterable[ClusterProto]) -> ClusterSet:
        now = time.monotonic()
        specs = [compile_cluster(p) for p in protos]  # all compile, or nothing changes
        fresh = {}
        for spec in specs:
            old = self.clusters.get(spec.name)
            if old is None:
                fresh[spec.name] = Cluster(spec, now=now)
            else:  # as Envoy, a cluster a push leaves unchanged is kept as it is
                fresh[spec.name] = old if old.spec == spec else old.with_spec(spec, now)
        return ClusterSet(fresh)

    def with_assignments(self, protos: Iterable[ClusterLoadAssignment]) -> ClusterSet:
        assignments = {a.cluster_name: a for a in map(compile_load_assignment, protos)}
        for cluster in self.clusters.values():
            assignment = assignments.get(cluster.spec.eds_service_name)
            if cluster.spec.is_eds and assignment is not None:
                cluster.set_assignment(assignment)
        return ClusterSet(self.clusters)
