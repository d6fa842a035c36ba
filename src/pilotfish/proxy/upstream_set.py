"""The proxy's clusters and their endpoints, as one immutable set per snapshot.

A cluster is compiled from `Cluster` (STATIC with a load_assignment, or EDS
with a ClusterLoadAssignment arriving separately) into the hosts the data
path picks from. Picking is round robin over healthy hosts of the highest
priority that has any.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.health_check_pb2 import HealthStatus
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from pilotfish.proxy.proto_fields import unsupported

HEALTHY = (HealthStatus.UNKNOWN, HealthStatus.HEALTHY)
DEFAULT_CONNECT_TIMEOUT_S = 5.0
CLUSTER_FIELDS = frozenset(
    {
        "name",
        "type",
        "connect_timeout",
        "lb_policy",
        "load_assignment",
        "eds_cluster_config",
        "alt_stat_name",
        "metadata",
    }
)


class ClusterError(Exception):
    """A cluster that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Host:
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass
class UpstreamCluster:
    name: str
    eds_name: str  # "" for STATIC
    connect_timeout: float
    hosts: tuple[Host, ...] = ()
    _turn: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def pick(self) -> Host | None:
        """The next host in turn, or None when the cluster has none (503 UH)."""
        if not self.hosts:
            return None
        return self.hosts[next(self._turn) % len(self.hosts)]


def compile_cluster(cluster: Cluster) -> UpstreamCluster:
    where = f"cluster {cluster.name or '(unnamed)'}"
    bad = unsupported(cluster, CLUSTER_FIELDS)
    if bad:
        raise ClusterError(f"{where}: field not supported by pilotfish: {', '.join(bad)}")
    if cluster.type not in (Cluster.STATIC, Cluster.EDS):
        raise ClusterError(f"{where}: type: only STATIC and EDS are supported")
    if cluster.lb_policy != Cluster.ROUND_ROBIN:
        raise ClusterError(f"{where}: lb_policy: only ROUND_ROBIN is supported")
    timeout = cluster.connect_timeout
    seconds = timeout.seconds + timeout.nanos / 1e9 if cluster.HasField("connect_timeout") else 0
    eds = (
        cluster.eds_cluster_config.service_name or cluster.name
        if cluster.type == Cluster.EDS
        else ""
    )
    compiled = UpstreamCluster(cluster.name, eds, seconds or DEFAULT_CONNECT_TIMEOUT_S)
    if cluster.HasField("load_assignment"):
        compiled.hosts = hosts_of(cluster.load_assignment)
    return compiled


def hosts_of(assignment: ClusterLoadAssignment) -> tuple[Host, ...]:
    """Healthy hosts of the highest priority that has any."""
    by_priority: dict[int, list[Host]] = {}
    for locality in assignment.endpoints:
        for lb in locality.lb_endpoints:
            if lb.health_status not in HEALTHY:
                continue
            socket = lb.endpoint.address.socket_address
            by_priority.setdefault(locality.priority, []).append(
                Host(socket.address, socket.port_value)
            )
    return tuple(by_priority[min(by_priority)]) if by_priority else ()


@dataclass(frozen=True)
class ClusterSet:
    clusters: dict[str, UpstreamCluster] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.clusters)

    def get(self, name: str) -> UpstreamCluster | None:
        return self.clusters.get(name)

    def eds_names(self) -> frozenset[str]:
        return frozenset(c.eds_name for c in self.clusters.values() if c.eds_name)

    def with_clusters(self, protos: Iterable[Cluster]) -> ClusterSet:
        """A new set; an EDS cluster that existed keeps its endpoints until new ones come."""
        fresh = {c.name: c for c in map(compile_cluster, protos)}
        for name, cluster in fresh.items():
            old = self.clusters.get(name)
            if old is not None and cluster.eds_name and old.eds_name == cluster.eds_name:
                cluster.hosts = old.hosts
        return ClusterSet(fresh)

    def with_assignments(self, assignments: Iterable[ClusterLoadAssignment]) -> ClusterSet:
        hosts = {a.cluster_name: hosts_of(a) for a in assignments}
        return ClusterSet(
            {
                name: replace(c, hosts=hosts[c.eds_name]) if c.eds_name in hosts else c
                for name, c in self.clusters.items()
            }
        )
