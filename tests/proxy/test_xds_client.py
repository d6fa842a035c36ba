"""The ADS client against a real gRPC server on loopback: ACK, NACK, reconnect."""

import asyncio
from collections.abc import AsyncIterator

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf.any_pb2 import Any as AnyProto
from xds_fixtures import listener_response

from pilotfish.proxy import xds_types
from pilotfish.proxy.ads import AdsProtocol
from pilotfish.proxy.xds_client import AdsClient


def listeners(version: str, *names: str) -> DiscoveryResponse:
    return listener_response(version, f"nonce-{version}", *names)


class OneShotServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Sends the given listener versions, one per stream, and records requests."""

    def __init__(self, versions: list[DiscoveryResponse]) -> None:
        self.versions = versions
        self.requests: asyncio.Queue[DiscoveryRequest] = asyncio.Queue()

    async def StreamAggregatedResources(
        self, request_iterator, context
    ) -> AsyncIterator[DiscoveryResponse]:
        response = self.versions.pop(0)
        sent = False
        async for request in request_iterator:
            await self.requests.put(request)
            if request.type_url == xds_types.LISTENER and not sent:
                sent = True
                yield response
            elif request.response_nonce == response.nonce:
                return  # end this stream after the (N)ACK: the client must reconnect


async def start_server(servicer: OneShotServer) -> tuple[grpc.aio.Server, str]:
    grpc_server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    return grpc_server, f"127.0.0.1:{port}"


async def next_listener_request(servicer: OneShotServer) -> DiscoveryRequest:
    while True:
        request = await asyncio.wait_for(servicer.requests.get(), 10)
        if request.type_url == xds_types.LISTENER and request.response_nonce:
            return request


def test_ack_nack_and_reconnect() -> None:
    async def scenario() -> None:
        servicer = OneShotServer([listeners("1", "a"), listeners("2", "bad"), listeners("3", "b")])
        grpc_server, target = await start_server(servicer)
        applied: list[list[str]] = []

        def apply(type_url: str, resources: list[AnyProto]) -> dict[str, frozenset[str]]:
            names = [Listener.FromString(r.value).name for r in resources]
            if "bad" in names:
                raise ValueError("listener bad: address is required")
            applied.append(names)
            return {}

        client = AdsClient([target], AdsProtocol(Node(id="sidecar-1"), apply))
        task = asyncio.create_task(client.run())
        try:
            ack = await next_listener_request(servicer)
            assert (ack.version_info, ack.response_nonce) == ("1", "nonce-1")
            nack = await next_listener_request(servicer)  # second stream, after reconnect
            assert (nack.version_info, nack.response_nonce) == ("1", "nonce-2")
            assert nack.error_detail.message == "listener bad: address is required"
            ack3 = await next_listener_request(servicer)
            assert ack3.version_info == "3"
            assert applied == [["a"], ["b"]]
        finally:
            task.cancel()
            await grpc_server.stop(None)

    asyncio.run(scenario())


def test_fails_over_to_the_next_replica_at_once_keeping_what_it_had() -> None:
    """Three replicas: the first is down, the second serves once and goes
    away; the client reaches the third without waiting out a back-off."""

    async def scenario() -> None:
        dead = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        dead_port = dead.sockets[0].getsockname()[1]
        dead.close()
        await dead.wait_closed()
        first, second = OneShotServer([listeners("1", "a")]), OneShotServer([listeners("2", "b")])
        (server_a, target_a), (server_b, target_b) = (
            await start_server(first),
            await start_server(second),
        )
        applied: list[list[str]] = []

        def apply(type_url: str, resources: list[AnyProto]) -> dict[str, frozenset[str]]:
            applied.append([Listener.FromString(r.value).name for r in resources])
            return {}

        targets = [f"127.0.0.1:{dead_port}", target_a, target_b]
        client = AdsClient(targets, AdsProtocol(Node(id="sidecar-1"), apply))
        task = asyncio.create_task(client.run())
        started = asyncio.get_running_loop().time()
        try:
            assert (await next_listener_request(first)).version_info == "1"
            await server_a.stop(None)
            assert (await next_listener_request(second)).version_info == "2"
            assert asyncio.get_running_loop().time() - started < 2.0  # no back-off between
            assert applied == [["a"], ["b"]]
        finally:
            task.cancel()
            await server_b.stop(None)

    asyncio.run(scenario())
