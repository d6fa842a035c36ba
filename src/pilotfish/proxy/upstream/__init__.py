"""Upstream clusters: hosts, load balancers, priorities, outlier detection and circuit breakers.

Pure logic, no I/O and no asyncio, but for pool.py (upstream connections and
the keep-alive pool, the shell's side of this package, imported by the shell
only): the shell owns sockets and timers, and calls in with events and the time.

    spec = compile_cluster(cluster_proto)                 # ClusterConfigError -> NACK
    cluster = Cluster(spec)                                # STATIC: hosts come with the spec
    cluster.set_assignment(compile_load_assignment(cla))   # EDS
    host = cluster.pick(hash_key, exclude, rng)            # None -> 503, flag UH
    if not cluster.breakers.try_acquire_request(): ...     # False -> 503, flag UO
    cluster.report(host, status_or_local_origin, now)      # outlier detection
    cluster.tick(now)                                      # every outlier interval
"""

from pilotfish.proxy.upstream.admin import render_clusters
from pilotfish.proxy.upstream.breakers import CircuitBreakers, Thresholds
from pilotfish.proxy.upstream.cluster import Cluster
from pilotfish.proxy.upstream.compile import compile_cluster, compile_load_assignment
from pilotfish.proxy.upstream.errors import ClusterConfigError
from pilotfish.proxy.upstream.hashing import stable_hash
from pilotfish.proxy.upstream.host import Host, LocalOrigin
from pilotfish.proxy.upstream.outlier import OutlierConfig, OutlierDetector
from pilotfish.proxy.upstream.spec import ClusterSpec, EndpointSpec, LbPolicy, LoadAssignment

__all__ = [
    "CircuitBreakers",
    "Cluster",
    "ClusterConfigError",
    "ClusterSpec",
    "EndpointSpec",
    "Host",
    "LbPolicy",
    "LoadAssignment",
    "LocalOrigin",
    "OutlierConfig",
    "OutlierDetector",
    "Thresholds",
    "compile_cluster",
    "compile_load_assignment",
    "render_clusters",
    "stable_hash",
]
