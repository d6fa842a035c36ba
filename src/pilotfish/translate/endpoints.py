"""ClusterLoadAssignments (EDS) for `outbound|PORT|SUBSET|HOST` clusters.

Endpoints are grouped by locality, and every locality carries a weight (the
sum of its endpoints' weights): gRPC's xDS client drops localities without
one. Every requested cluster gets an assignment, an empty one when nothing
serves it, so that a proxy learns a set became empty.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from google.protobuf.wrappers_pb2 import UInt32Value

from pilotfish.model import Endpoint, Proxy, Snapshot
from pilotfish.model.config import labels_match
from pilotfish.translate import names
from pilotfish.translate.clusters import translate_clusters
from pilotfish.translate.mtls import endpoint_metadata
from pilotfish.translate.protos import socket_address


def translate_endpoints(
    snapshot: Snapshot, proxy: Proxy, cluster_names: Iterable[str] | None = None
) -> list[ClusterLoadAssignment]:
    """Assignments for the named clusters (all of this proxy's EDS clusters
    when None), sorted by name; names that are not outbound clusters are skipped."""
    wanted = eds_cluster_names(snapshot, proxy) if cluster_names is None else cluster_names
    out = []
    for name in sorted(set(wanted)):
        parsed = names.parse_cluster(name)
        if parsed is None or parsed.direction != names.OUTBOUND:
            continue
        endpoints = cluster_endpoints(snapshot, proxy, parsed.host, parsed.port, parsed.subset)
        out.append(translate_load_assignment(name, endpoints))
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


def translate_load_assignment(name: str, endpoints: Sequence[Endpoint]) -> ClusterLoadAssignment:
    by_locality: dict[str, list[Endpoint]] = defaultdict(list)
    for e in endpoints:
        by_locality[e.locality].append(e)
    return ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[translate_locality(loc, by_locality[loc]) for loc in sorted(by_locality)],
    )


def translate_locality(locality: str, endpoints: list[Endpoint]) -> ec.LocalityLbEndpoints:
    region, zone, sub_zone = [*locality.split("/"), "", "", ""][:3]
    return ec.LocalityLbEndpoints(
        locality=base_pb2.Locality(region=region, zone=zone, sub_zone=sub_zone),
        lb_endpoints=[
            ec.LbEndpoint(
                endpoint=ec.Endpoint(address=socket_address(e.address, e.port)),
                health_status=health_check_pb2.HEALTHY,
                load_balancing_weight=UInt32Value(value=max(e.weight, 1)),
                metadata=endpoint_metadata(e),
            )
            for e in sorted(endpoints, key=lambda e: (e.address, e.port))
        ],
        load_balancing_weight=UInt32Value(value=sum(max(e.weight, 1) for e in endpoints)),
    )
