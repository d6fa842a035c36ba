"""Incremental ADS (DeltaAggregatedResources) over a real gRPC channel, as
Envoy's xds_protocol describes it: wildcard and explicit subscriptions, only
changed resources sent, removals in removed_resources, ACK/NACK by nonce,
resuming with initial_resource_versions, and SotW streams beside it."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from test_ads_server import REVIEWS, wait_for
from xds_harness import (
    CDS,
    EDS,
    LDS,
    SIDECAR,
    AdsStream,
    DeltaStream,
    MutableMesh,
    instance,
    node,
    reviews_and_ratings,
    service,
)

from pilotfish.xds.connection import SyncState
from pilotfish.xds.limits import Limits
from pilotfish.xds.server import AdsServer
from pilotfish.xds.status import proxy_status

RATINGS = "outbound|9080||ratings.default.svc.cluster.local"
DETAILS = "outbound|9080||details.default.svc.cluster.local"


@pytest.fixture
def mesh() -> MutableMesh:
    return reviews_and_ratings()


@pytest.fixture
def server(mesh: MutableMesh) -> Iterator[AdsServer]:
    ads = AdsServer(
        mesh.snapshot,
        "127.0.0.1:0",
        debounce=0.02,
        debounce_max=0.5,
        limits=Limits(names_per_type=8),
    )
    ads.start()
    yield ads
    ads.stop()


@pytest.fixture
def delta(server: AdsServer) -> Iterator[DeltaStream]:
    client = DeltaStream(f"127.0.0.1:{server.port}", node(SIDECAR, NAMESPACE="default"))
    yield client
    client.close()


def names(response: object) -> list[str]:
    return sorted(r.name for r in response.resources)  # type: ignore[attr-defined]


def ports(response: object) -> dict[str, list[int]]:
    out = {}
    for resource in response.resources:  # type: ignore[attr-defined]
        cla = ClusterLoadAssignment()
        resource.resource.Unpack(cla)
        found = [
            e.endpoint.address.socket_address.port_value
            for g in cla.endpoints
            for e in g.lb_endpoints
        ]
        out[resource.name] = sorted(found)
    return out


def state(server: AdsServer, type_url: str) -> SyncState:
    (conn,) = server.connections()
    return conn.watched[type_url].state


def test_wildcard_cds_sends_every_cluster_with_its_version(
    server: AdsServer, delta: DeltaStream
) -> None:
    delta.send(CDS)
    cds = delta.receive()
    assert cds.type_url == CDS and cds.nonce and not cds.removed_resources
    assert {REVIEWS, RATINGS} <= set(names(cds))
    for resource in cds.resources:
        cluster = Cluster()
        assert resource.resource.Unpack(cluster) and cluster.name == resource.name
        assert len(resource.version) == 16
    wait_for(lambda: state(server, CDS) is SyncState.STALE)
    delta.ack(cds)
    wait_for(lambda: state(server, CDS) is SyncState.SYNCED)
    assert delta.nothing_within(0.2)


def test_a_change_sends_only_the_changed_cluster_and_removals(
    server: AdsServer, delta: DeltaStream, mesh: MutableMesh
) -> None:
    delta.send(CDS)
    first = delta.receive()
    delta.ack(first)
    mesh.objects.append(service("details"))
    server.changed(["Service"])
    added = delta.receive()
    assert names(added) == [DETAILS] and not added.removed_resources
    delta.ack(added)
    mesh.objects = [o for o in mesh.objects if o["metadata"]["name"] != "ratings"]
    server.changed(["Service"])
    removed = delta.receive()
    assert names(removed) == [] and list(removed.removed_resources) == [RATINGS]
    delta.ack(removed)
    server.changed()  # nothing moved: nothing is sent
    assert delta.nothing_within(0.3)


def test_explicit_eds_subscribe_and_unsubscribe(
    server: AdsServer, delta: DeltaStream, mesh: MutableMesh
) -> None:
    delta.send(EDS, [REVIEWS])
    eds = delta.receive()
    assert ports(eds) == {REVIEWS: [19081]}
    delta.ack(eds, subscribe=[RATINGS])
    more = delta.receive()
    assert ports(more) == {RATINGS: [19091]}  # reviews, unchanged, is not sent again
    delta.ack(more, unsubscribe=[REVIEWS])
    assert delta.nothing_within(0.2)
    mesh.instances.append(instance("reviews", "v2", 19082))
    server.changed()
    assert delta.nothing_within(0.3)  # no longer subscribed to reviews
    mesh.instances.append(instance("ratings", "v2", 19092))
    server.changed()
    assert ports(delta.receive()) == {RATINGS: [19091, 19092]}
    (conn,) = server.connections()
    assert proxy_status(conn)["types"]["EDS"]["names"] == [RATINGS]


def test_a_resource_that_does_not_exist_is_reported_removed(
    server: AdsServer, delta: DeltaStream, mesh: MutableMesh
) -> None:
    missing = "outbound|9080||nowhere.default.svc.cluster.local"
    delta.send(CDS, [REVIEWS, missing])
    cds = delta.receive()
    assert names(cds) == [REVIEWS] and list(cds.removed_resources) == [missing]
    delta.ack(cds)
    mesh.objects.append(service("nowhere"))
    server.changed()
    appeared = delta.receive()
    assert names(appeared) == [missing] and not appeared.removed_resources


def test_explicit_wildcard_and_its_unsubscription(
    server: AdsServer, delta: DeltaStream, mesh: MutableMesh
) -> None:
    delta.send(CDS, [REVIEWS])
    only = delta.receive()
    assert names(only) == [REVIEWS]
    delta.ack(only, subscribe=["*"])
    rest = delta.receive()
    assert RATINGS in names(rest) and REVIEWS not in names(rest)
    delta.ack(rest, unsubscribe=["*"])
    assert delta.nothing_within(0.2)
    mesh.objects.append(service("details"))
    server.changed()
    assert delta.nothing_within(0.3)  # details comes through the wildcard only


def test_a_resumed_stream_gets_only_what_it_lacks(server: AdsServer, delta: DeltaStream) -> None:
    delta.send(CDS)
    first = delta.receive()
    held = {r.name: r.version for r in first.resources}
    again = DeltaStream(f"127.0.0.1:{server.port}", node(SIDECAR + "-2", NAMESPACE="default"))
    try:
        stale = {**held, REVIEWS: "0000", "outbound|1||gone.default.svc.cluster.local": "1"}
        again.send(CDS, initial=stale)
        resumed = again.receive()
        # The inbound cluster differs per proxy: a new node id, so it is re-sent too.
        assert REVIEWS in names(resumed) and RATINGS not in names(resumed)
        assert list(resumed.removed_resources) == ["outbound|1||gone.default.svc.cluster.local"]
    finally:
        again.close()


def test_the_first_answer_goes_even_when_nothing_changed(
    server: AdsServer, delta: DeltaStream
) -> None:
    delta.send(LDS)
    lds = delta.receive()
    held = {r.name: r.version for r in lds.resources}
    again = DeltaStream(f"127.0.0.1:{server.port}", node(SIDECAR, NAMESPACE="default"))
    try:
        again.send(LDS, initial=held)
        empty = again.receive()
        assert empty.type_url == LDS and empty.nonce
        assert not empty.resources and not empty.removed_resources
    finally:
        again.close()


def test_nack_is_recorded_and_not_answered(server: AdsServer, delta: DeltaStream) -> None:
    delta.send(CDS)
    cds = delta.receive()
    delta.ack(cds, error="cluster rejected: bad lb policy")
    wait_for(lambda: state(server, CDS) is SyncState.NACK)
    (conn,) = server.connections()
    assert conn.watched[CDS].nack.message == "cluster rejected: bad lb policy"  # type: ignore[union-attr]
    assert delta.nothing_within(0.3)


def test_a_stale_nonce_does_not_acknowledge(
    server: AdsServer, delta: DeltaStream, mesh: MutableMesh
) -> None:
    delta.send(CDS)
    first = delta.receive()
    mesh.objects.append(service("details"))
    server.changed()
    second = delta.receive()
    delta.ack(first)  # an answer to the older response
    assert delta.nothing_within(0.2)
    assert state(server, CDS) is SyncState.STALE
    delta.ack(second)
    wait_for(lambda: state(server, CDS) is SyncState.SYNCED)


def test_limits_hold_for_delta_streams(server: AdsServer, delta: DeltaStream) -> None:
    many = [f"outbound|9080||s{i}.default.svc.cluster.local" for i in range(9)]
    delta.send(EDS, many)
    with pytest.raises(grpc.RpcError) as refused:
        delta.receive()
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "9 resource_names" in refused.value.details()


def test_a_first_request_without_a_node_is_refused(server: AdsServer) -> None:
    anonymous = DeltaStream(f"127.0.0.1:{server.port}", node(""))
    try:
        anonymous.send(CDS)
        with pytest.raises(grpc.RpcError) as refused:
            anonymous.receive()
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        anonymous.close()


def test_sotw_and_delta_streams_side_by_side(
    server: AdsServer, delta: DeltaStream, mesh: MutableMesh
) -> None:
    sotw = AdsStream(f"127.0.0.1:{server.port}", node(SIDECAR + "-sotw", NAMESPACE="default"))
    try:
        sotw.send(CDS)
        sotw.ack(whole := sotw.receive())
        delta.send(CDS)
        delta.ack(delta.receive())
        mesh.objects.append(service("details"))
        server.changed(["Service"])
        assert len(sotw.receive().resources) == len(whole.resources) + 1  # the whole table
        assert names(delta.receive()) == [DETAILS]  # the one new cluster
    finally:
        sotw.close()
