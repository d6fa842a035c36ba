"""`envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy`, compiled.

A TCP listener's chains hold one tcp_proxy filter naming a cluster, or
weighted clusters (Istio's `tcp` route weights: a TCP canary moves whole
connections, never bytes). Fields pilotfish does not honour fail the compile
with their path, as everywhere else in the proxy.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from pilotfish.proxy import xds_types
from pilotfish.proxy.listeners import access_log_path
from pilotfish.proxy.proto_fields import seconds, unsupported

TCP_PROXY_NAME = "envoy.filters.network.tcp_proxy"
TCP_PROXY = xds_types.PREFIX + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
DEFAULT_IDLE_TIMEOUT_S = 3600.0  # Envoy's: a connection with no bytes either way for an hour
FIELDS = frozenset(
    {
        "stat_prefix",
        "cluster",
        "weighted_clusters.clusters.name",
        "weighted_clusters.clusters.weight",
        "idle_timeout",
        "max_connect_attempts",
        "access_log",
    }
)


class TcpConfigError(ValueError):
    """A tcp_proxy that cannot be served; the message names the field."""


@dataclass(frozen=True)
class TcpProxy:
    stat_prefix: str
    clusters: tuple[tuple[str, int], ...]  # (name, weight); one entry for `cluster`
    idle_timeout: float  # 0: none
    max_connect_attempts: int
    access_log_paths: tuple[str, ...] = ()  # one line per connection, when it closes

    def __repr__(self) -> str:
        return f"<TcpProxy {self.stat_prefix} {list(self.clusters)}>"

    def choose(self, roll: float) -> str:
        """The cluster for a connection, `roll` uniform in [0, 1): Envoy picks
        by weight once per connection."""
        total = sum(weight for _, weight in self.clusters)
        point = roll * total
        for name, weight in self.clusters:
            if point < weight:
                return name
            point -= weight
        return self.clusters[-1][0]


def compile_tcp_proxy(proto: tcp_proxy_pb2.TcpProxy, where: str) -> TcpProxy:
    bad = unsupported(proto, FIELDS)
    if bad:
        raise TcpConfigError(f"{where}: field not supported by pilotfish: {', '.join(bad)}")
    if not proto.stat_prefix:
        raise TcpConfigError(f"{where}.stat_prefix: value length must be at least 1 characters")
    clusters = _clusters(proto, where)
    attempts = proto.max_connect_attempts.value if proto.HasField("max_connect_attempts") else 1
    if attempts < 1:
        raise TcpConfigError(
            f"{where}.max_connect_attempts: value must be greater than or equal to 1"
        )
    return TcpProxy(
        stat_prefix=proto.stat_prefix,
        clusters=clusters,
        idle_timeout=seconds(proto.idle_timeout)
        if proto.HasField("idle_timeout")
        else DEFAULT_IDLE_TIMEOUT_S,
        max_connect_attempts=attempts,
        access_log_paths=tuple(access_log_path(a, where) for a in proto.access_log),
    )


def _clusters(proto: tcp_proxy_pb2.TcpProxy, where: str) -> tuple[tuple[str, int], ...]:
    which = proto.WhichOneof("cluster_specifier")
    if which == "cluster":
        return ((proto.cluster, 1),)
    if which != "weighted_clusters":
        raise TcpConfigError(
            f"{where}: cluster_specifier: exactly one of cluster, weighted_clusters"
        )
    clusters = tuple((c.name, c.weight) for c in proto.weighted_clusters.clusters)
    if not clusters:
        raise TcpConfigError(
            f"{where}.weighted_clusters.clusters: value must contain at least 1 item(s)"
        )
    for i, (name, weight) in enumerate(clusters):
        at = f"{where}.weighted_clusters.clusters[{i}]"
        if not name:
            raise TcpConfigError(f"{at}.name: value length must be at least 1 characters")
        if weight < 1:
            raise TcpConfigError(f"{at}.weight: value must be greater than or equal to 1")
    return clusters
