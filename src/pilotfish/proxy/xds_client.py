"""The ADS stream: the I/O shell around `AdsProtocol`.

One gRPC stream to the control plane; when it breaks, reconnect with
exponential backoff and jitter, and keep serving with the last good config
meanwhile (nothing is torn down on disconnect). Given several control-plane
replicas (the xds cluster's endpoints), a broken stream fails over to the
next one at once; the back-off applies once every replica has failed. Every stream carries the
bootstrap's `initial_metadata` (the control plane's token, off loopback),
over TLS when the xds cluster asks for it (xds_channel.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
from envoy.service.discovery.v3.ads_pb2_grpc import AggregatedDiscoveryServiceStub
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from pilotfish.proxy.ads import AdsProtocol
from pilotfish.proxy.xds_channel import PLAINTEXT, ControlPlaneChannel

log = logging.getLogger("pilotfish.proxy.xds")
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.25, 30.0


Metadata = Sequence[tuple[str, str]]


class AdsClient:
    def __init__(
        self,
        targets: Sequence[str],
        protocol: AdsProtocol,
        metadata: Metadata | Callable[[], Metadata] = (),
        channel: ControlPlaneChannel = PLAINTEXT,
    ) -> None:
        """`metadata` a callable: asked again for each stream (a token file
        that is rotated, read as istio-agent reads its JWT)."""
        if not targets:
            raise ValueError("an ADS client needs at least one server address")
        self.targets, self.protocol = tuple(targets), protocol
        self._current = 0
        # May hold a credential: kept out of __repr__.
        self._metadata = metadata if callable(metadata) else (lambda: tuple(metadata))
        self._channel = channel
        self.connected = asyncio.Event()
        self._outbox: asyncio.Queue[DiscoveryRequest | None] = asyncio.Queue()

    def __repr__(self) -> str:
        return f"AdsClient({self.target!r}, connected={self.connected.is_set()})"

    @property
    def target(self) -> str:
        """The replica streamed to now (or tried next)."""
        return self.targets[self._current]

    def send(self, requests: list[DiscoveryRequest]) -> None:
        """Queue requests raised outside a response (e.g. a new subscription)."""
        for request in requests:
            self._outbox.put_nowait(request)

    async def run(self) -> None:
        """Stream until cancelled, reconnecting forever."""
        delay, failed = BACKOFF_FIRST_S, 0
        while True:
            try:
                await self._stream()
            except grpc.aio.AioRpcError as e:
                log.warning(
                    "xDS stream to %s ended: %s %s", self.target, e.code().name, e.details()
                )
            if self.connected.is_set():  # it had worked: start over
                delay, failed = BACKOFF_FIRST_S, 0
            self.connected.clear()
            self._current = (self._current + 1) % len(self.targets)
            failed += 1
            if failed % len(self.targets):
                continue  # another replica, at once
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _stream(self) -> None:
        self._outbox = asyncio.Queue()
        self.send(self.protocol.start())
        async with self._channel.open(self.target) as channel:
            stub = AggregatedDiscoveryServiceStub(channel)
            call = stub.StreamAggregatedResources(self._requests(), metadata=self._metadata())
            async for response in call:
                self.connected.set()
                self.send(self.protocol.on_response(response))
        log.warning("xDS stream to %s closed by the server", self.target)

    async def _requests(self) -> AsyncIterator[DiscoveryRequest]:
        while (request := await self._outbox.get()) is not None:
            yield request
