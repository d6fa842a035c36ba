"""The ADS server driven over a real gRPC channel: subscriptions, ACK and
NACK, stale nonces, debounced pushes of only what changed, proxy types."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from xds_harness import (
    CDS,
    EDS,
    LDS,
    RDS,
    SIDECAR,
    AdsStream,
    MutableMesh,
    instance,
    node,
    reviews_and_ratings,
    service,
)

from pilotfish.xds.connection import SyncState
from pilotfish.xds.server import AdsServer, BindError

REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"


@pytest.fixture
def mesh() -> MutableMesh:
    return reviews_and_ratings()


@pytest.fixture
def server(mesh: MutableMesh) -> Iterator[AdsServer]:
    ads = AdsServer(mesh.snapshot, "127.0.0.1:0", debounce=0.05, debounce_max=0.5)
    ads.start()
    yield ads
    ads.stop()


@pytest.fixture
def stream(server: AdsServer) -> Iterator[AdsStream]:
    client = AdsStream(f"127.0.0.1:{server.port}", node(SIDECAR, NAMESPACE="default"))
    yield client
    client.close()


def cluster_names(response: object) -> list[str]:
    out = []
    for resource in response.resources:  # type: ignore[attr-defined]
        cluster = Cluster()
        resource.Unpack(cluster)
        out.append(cluster.name)
    return out


def endpoints_of(response: object) -> list[int]:
    ports = []
    for resource in response.resources:  # type: ignore[attr-defined]
        cla = ClusterLoadAssignment()
        resource.Unpack(cla)
        for group in cla.endpoints:
            ports += [e.endpoint.address.socket_address.port_value for e in group.lb_endpoints]
    return sorted(ports)


def state_of(server: AdsServer, type_url: str) -> SyncState:
    (conn,) = server.connections()
    return conn.watched[type_url].state


def wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_wildcard_cds_then_eds_by_name_and_ack(server: AdsServer, stream: AdsStream) -> None:
    stream.send(CDS)
    cds = stream.receive()
    assert cds.type_url == CDS and REVIEWS in cluster_names(cds)
    assert cds.version_info and cds.nonce
    wait_for(lambda: state_of(server, CDS) is SyncState.STALE)
    stream.ack(cds)
    stream.send(EDS, [REVIEWS])
    eds = stream.receive()
    assert eds.type_url == EDS and endpoints_of(eds) == [19081]
    wait_for(lambda: state_of(server, CDS) is SyncState.SYNCED)


def test_nack_is_recorded_and_not_answered(server: AdsServer, stream: AdsStream) -> None:
    stream.send(LDS)
    lds = stream.receive()
    stream.nack(lds, "listener rejected: bad filter")
    wait_for(lambda: state_of(server, LDS) is SyncState.NACK)
    (conn,) = server.connections()
    nack = conn.watched[LDS].nack
    assert nack is not None and nack.message == "listener rejected: bad filter"
    assert stream.nothing_within(0.3)


def test_stale_nonce_is_ignored(server: AdsServer, stream: AdsStream) -> None:
    stream.send(CDS)
    first = stream.receive()
    stream.send(CDS, ["unknown"], nonce="not-a-nonce-we-sent")
    assert stream.nothing_within(0.3)
    stream.ack(first, [])
    wait_for(lambda: state_of(server, CDS) is SyncState.SYNCED)


def test_push_after_change_sends_only_changed_types(
    server: AdsServer, stream: AdsStream, mesh: MutableMesh
) -> None:
    stream.send(CDS)
    stream.ack(cds := stream.receive())
    stream.send(EDS, [REVIEWS])
    stream.ack(eds := stream.receive())
    stream.send(LDS)
    stream.ack(stream.receive())
    # A new endpoint of reviews: endpoints change, clusters and listeners do not.
    mesh.instances.append(instance("reviews", "v2", 19082))
    server.changed()
    pushed = stream.receive()
    assert pushed.type_url == EDS and endpoints_of(pushed) == [19081, 19082]
    assert pushed.version_info != eds.version_info
    stream.ack(pushed)
    assert stream.nothing_within(0.4)
    assert cds.version_info  # CDS was not re-sent: nothing else arrived


def test_burst_of_changes_is_debounced_into_one_push(
    server: AdsServer, stream: AdsStream, mesh: MutableMesh
) -> None:
    stream.send(CDS)
    stream.ack(stream.receive())
    builds = mesh.builds
    for i in range(20):
        mesh.objects.append(service(f"extra{i}"))
        server.changed()
        time.sleep(0.005)
    pushed = stream.receive()
    assert len([n for n in cluster_names(pushed) if "extra" in n]) == 20
    assert stream.nothing_within(0.3)
    assert mesh.builds - builds <= 2


def test_unchanged_push_sends_nothing(server: AdsServer, stream: AdsStream) -> None:
    stream.send(CDS)
    stream.ack(stream.receive())
    server.changed()
    assert stream.nothing_within(0.4)


def test_new_names_on_ack_are_answered(server: AdsServer, stream: AdsStream) -> None:
    stream.send(EDS, [REVIEWS])
    eds = stream.receive()
    ratings = "outbound|9080||ratings.default.svc.cluster.local"
    stream.ack(eds, [REVIEWS, ratings])
    again = stream.receive()
    assert endpoints_of(again) == [19081, 19091]


def test_proxyless_client_gets_api_listener_named_after_target(server: AdsServer) -> None:
    client = AdsStream(
        f"127.0.0.1:{server.port}",
        node("client-1", GENERATOR="grpc", NAMESPACE="default"),
    )
    try:
        target = "reviews.default.svc.cluster.local:9080"
        client.send(LDS, [target])
        lds = client.receive()
        (resource,) = lds.resources
        listener = Listener()
        resource.Unpack(listener)
        assert listener.name == target and listener.HasField("api_listener")
        client.ack(lds, [target])
        client.send(RDS, [REVIEWS])
        rds = client.receive()
        assert rds.type_url == RDS and len(rds.resources) == 1
    finally:
        client.close()


def test_first_request_without_node_is_rejected(server: AdsServer) -> None:
    client = AdsStream(f"127.0.0.1:{server.port}", node(""))
    try:
        client.send(CDS)
        with pytest.raises(grpc.RpcError) as raised:
            client.receive()
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    finally:
        client.close()


def test_port_in_use_fails_to_start(server: AdsServer, mesh: MutableMesh) -> None:
    second = AdsServer(mesh.snapshot, f"127.0.0.1:{server.port}")
    with pytest.raises(BindError):
        second.start()


def test_disconnect_removes_connection(server: AdsServer, stream: AdsStream) -> None:
    stream.send(CDS)
    stream.receive()
    assert len(server.connections()) == 1
    stream.close()
    wait_for(lambda: not server.connections())


class TokenEcho:
    """A synchronous unary service in the CA's style: reads the metadata and
    the peer, and aborts when the caller says nothing."""

    def call(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = dict(context.invocation_metadata())
        if "authorization" not in metadata:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "who are you?")
        return f"{metadata['authorization']} from {context.peer()[:4]}: ".encode() + request

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(self.call)
        return grpc.method_handlers_generic_handler("test.TokenEcho", {"Call": method})


def test_a_synchronous_service_shares_the_port(mesh: MutableMesh) -> None:
    ads = AdsServer(mesh.snapshot, "127.0.0.1:0", services=[TokenEcho().handler()])
    ads.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{ads.port}") as channel:
            call = channel.unary_unary("/test.TokenEcho/Call")
            assert call(b"hi", metadata=[("authorization", "t")], timeout=5) == b"t from ipv4: hi"
            with pytest.raises(grpc.RpcError) as refused:
                call(b"hi", timeout=5)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            assert refused.value.details() == "who are you?"  # type: ignore[attr-defined]
        stream = AdsStream(f"127.0.0.1:{ads.port}", node(SIDECAR, NAMESPACE="default"))
        stream.send(CDS)
        assert stream.receive().type_url == CDS
        stream.close()
    finally:
        ads.stop()
