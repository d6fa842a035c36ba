"""A hand-driven ADS client over a real gRPC channel, for server tests:
send requests, read responses with a timeout."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.ads_pb2_grpc import AggregatedDiscoveryServiceStub
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from google.protobuf import struct_pb2
from google.rpc.status_pb2 import Status

from pilotfish.model import Instance, build_snapshot
from pilotfish.xds import types

Obj = dict[str, Any]


def node(node_id: str, **metadata: Any) -> Node:
    meta = struct_pb2.Struct()
    meta.update(metadata)
    return Node(id=node_id, metadata=meta)


class AdsStream:
    def __init__(
        self, target: str, node_: Node, metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.channel = grpc.insecure_channel(target)
        self.node = node_
        self._requests: queue.Queue[Any] = queue.Queue()  # DiscoveryRequest, or delta's
        self.responses: queue.Queue[Any] = queue.Queue()
        self._first = True
        self.names: dict[str, list[str]] = {}  # what each type last asked for
        self._call = self._open(AggregatedDiscoveryServiceStub(self.channel), metadata)
        threading.Thread(target=self._pump, daemon=True).start()

    def _open(self, stub: Any, metadata: tuple[tuple[str, str], ...]) -> Any:
        return stub.StreamAggregatedResources(self._iterate(), metadata=metadata)

    def _iterate(self) -> Iterator[DiscoveryRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def _pump(self) -> None:
        try:
            for response in self._call:
                self.responses.put(response)
        except Exception as e:
            self.responses.put(e)

    def send(
        self,
        type_url: str,
        names: list[str] | None = None,
        *,
        version: str = "",
        nonce: str = "",
        error: str = "",
    ) -> None:
        self.names[type_url] = names = self.names.get(type_url, []) if names is None else names
        request = DiscoveryRequest(
            type_url=type_url,
            resource_names=names,
            version_info=version,
            response_nonce=nonce,
        )
        self._put(request, error)

    def _put(self, request: Any, error: str) -> None:
        """Send `request`, a NACK when `error`; the first one carries the node."""
        if error:
            request.error_detail.CopyFrom(Status(code=3, message=error))
        if self._first:
            request.node.CopyFrom(self.node)
            self._first = False
        self._requests.put(request)

    def ack(self, response: DiscoveryResponse, names: list[str] | None = None) -> None:
        self.send(response.type_url, names, version=response.version_info, nonce=response.nonce)

    def nack(self, response: DiscoveryResponse, error: str, names: list[str] | None = None) -> None:
        self.send(response.type_url, names, nonce=response.nonce, error=error)

    def send_raw(self, request: DiscoveryRequest) -> None:
        self._requests.put(request)

    def refusal(self, timeout: float = 5.0) -> grpc.RpcError:
        """The status the server ended the stream with."""
        try:
            answer = self.receive(timeout)
        except grpc.RpcError as e:
            return e
        raise AssertionError(f"the stream was answered, not refused: {answer.type_url}")

    def receive(self, timeout: float = 5.0) -> DiscoveryResponse:
        item = self.responses.get(timeout=timeout)
        if isinstance(item, Exception):
            raise item
        return item

    def nothing_within(self, seconds: float) -> bool:
        try:
            item = self.responses.get(timeout=seconds)
        except queue.Empty:
            return True
        self.responses.put(item)
        return False

    def close(self) -> None:
        self._requests.put(None)
        self.channel.close()


class DeltaStream(AdsStream):
    """An incremental ADS client (DeltaAggregatedResources), as Envoy speaks it."""

    def _open(self, stub: Any, metadata: tuple[tuple[str, str], ...]) -> Any:
        return stub.DeltaAggregatedResources(self._iterate(), metadata=metadata)

    def send(  # type: ignore[override]
        self,
        type_url: str,
        subscribe: Sequence[str] = (),
        unsubscribe: Sequence[str] = (),
        *,
        nonce: str = "",
        error: str = "",
        initial: dict[str, str] | None = None,
    ) -> None:
        request = DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=subscribe,
            resource_names_unsubscribe=unsubscribe,
            response_nonce=nonce,
            initial_resource_versions=initial or {},
        )
        self._put(request, error)

    def ack(self, response: DeltaDiscoveryResponse, **changes: Any) -> None:  # type: ignore[override]
        self.send(response.type_url, nonce=response.nonce, **changes)


def service(name: str, port: int = 9080, port_name: str = "http") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"app": name}, "ports": [{"name": port_name, "port": port}]},
    }


def instance(app: str, version: str, port: int, address: str = "127.0.0.1") -> Instance:
    return Instance(
        name=f"{app}-{version}-0",
        namespace="default",
        workload=f"{app}-{version}",
        address=address,
        ports={"http": port},
        labels={"app": app, "version": version},
    )


class MutableMesh:
    """A snapshot source tests change by hand."""

    def __init__(self, objects: list[Obj], instances: list[Instance]) -> None:
        self.objects, self.instances = objects, instances
        self.builds = 0

    def snapshot(self) -> Any:
        self.builds += 1
        return build_snapshot(list(self.objects), list(self.instances))


def reviews_and_ratings() -> MutableMesh:
    """Two services of one instance each (ports 19081, 19091)."""
    return MutableMesh(
        [service("reviews"), service("ratings")],
        [instance("reviews", "v1", 19081), instance("ratings", "v1", 19091)],
    )


SIDECAR = "sidecar~127.0.0.1~productpage-v1-0.default~default.svc.cluster.local"
CDS, EDS, LDS, RDS = types.CLUSTER, types.ENDPOINT, types.LISTENER, types.ROUTE
