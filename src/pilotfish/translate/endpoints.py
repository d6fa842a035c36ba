"""ClusterLoadAssignments (EDS) for `outbound|PORT|SUBSET|HOST` clusters.

Endpoints are grouped by locality, and every locality carries a weight (the
sum of its endpoints' weights): gRPC's xDS client drops localities without
one. Priorities and weights then follow the caller's locality (locality.py),
so two proxies in different places get different assignments. Every
requested cluster gets an assignment, an empty one when nothing serves it,
so that a proxy learns a set became empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from google.protobuf.wrappers_pb2 import UInt32Value

from pilotfish.model import Endpoint, Proxy, Snapshot
from pilotfish.model.config import labels_match
from pilotfish.model.locality import split_locality
from pilotfish.translate import names
from pilotfish.translate.clusters import translate_clusters
from pilotfish.translate.locality import (
    Caller,
    LocalityGroup,
    LocalityPolicy,
    apply_locality_lb,
    caller,
    cluster_locality_policy,
    group_by_locality,
)
from pilotfish.translate.mtls import endpoint_metadata
from pilotfish.translate.protos import socket_address


def translate_endpoints(
    snapshot: Snapshot, proxy: Proxy, cluster_names: Iterable[str] | None = None
) -> list[ClusterLoadAssignment]:
    """Assignments for the named clusters (all of this proxy's EDS clusters
    when None), sorted by name; names that are not outbound clusters are skipped."""
    wanted = eds_cluster_names(snapshot, proxy) if cluster_names is None else cluster_names
    out = []
    who = caller(snapshot, proxy)
    for name in sorted(set(wanted)):
        parsed = names.parse_cluster(name)
        if parsed is None or parsed.direction != names.OUTBOUND:
            continue
        host, port, subset = parsed.host, parsed.port, parsed.subset
        endpoints = cluster_endpoints(snapshot, proxy, host, port, subset)
        policy = cluster_locality_policy(snapshot, proxy, host, port, subset)
        out.append(translate_load_assignment(name, endpoints, who, policy))
    return out


def eds_cluster_names(snapshot: Snapshot, proxy: Proxy) -> list[str]:
    return [c.name for c in translate_clusters(snapshot, proxy) if c.type == Cluster.EDS]


def cluster_endpoints(
    snapshot: Snapshot, proxy: Proxy, host: str, port: int, subset: str
) -> Sequence[Endpoint]:
    """The service port's endpoints, narrowed to the subset's labels. A subset
    no DestinationRule defines has no endpoints, as in Istio."""
    service = snapshot.service_for(proxy, host)
    if service is None or service.port(port) is None:
        return ()
    endpoints = snapshot.endpoints(service, port)
    if not subset:
        return endpoints
    rule = snapshot.destination_rule(proxy, host)
    found = rule.subset(subset) if rule else None
    if found is None:
        return ()
    return [e for e in endpoints if labels_match(found.labels, e.labels)]


def translate_load_assignment(
    name: str,
    endpoints: Sequence[Endpoint],
    who: Caller | None = None,
    policy: LocalityPolicy | None = None,
) -> ClusterLoadAssignment:
    groups = group_by_locality(endpoints)
    if who is not None and policy is not None:
        groups = apply_locality_lb(groups, who, policy)
    return ClusterLoadAssignment(
        cluster_name=name, endpoints=[translate_locality(g) for g in groups]
    )


def translate_locality(group: LocalityGroup) -> ec.LocalityLbEndpoints:
    region, zone, sub_zone = split_locality(group.locality)
    return ec.LocalityLbEndpoints(
        locality=base_pb2.Locality(region=region, zone=zone, sub_zone=sub_zone),
        lb_endpoints=[
            ec.LbEndpoint(
                endpoint=ec.Endpoint(address=socket_address(e.address, e.port)),
                health_status=health_check_pb2.HEALTHY,
                load_balancing_weight=UInt32Value(value=max(e.weight, 1)),
                metadata=endpoint_metadata(e),
            )
            for e in sorted(group.endpoints, key=lambda e: (e.address, e.port))
        ],
        load_balancing_weight=UInt32Value(value=group.weight),
        priority=group.priority,
    )
