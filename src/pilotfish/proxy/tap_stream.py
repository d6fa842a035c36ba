"""The sidecar's tap stream: the I/O shell around proxy/tap.py's `Tap`.

A gRPC stream the sidecar opens to its control plane, on the xDS server's
address with the same credentials as its ADS stream (the bootstrap's
`initial_metadata`, the control plane's token off loopback): the control
plane sends start and stop commands down it, the sidecar sends batches of
tap events up. So only the control plane the sidecar trusts for its config
can tap it, and the sidecar listens on no port for taps. Messages are JSON
(a few per second at most); the first one up says which workload this is.
When the stream breaks every tap stops, and it reconnects with back-off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence

import grpc

from pilotfish.proxy.tap import Tap
from pilotfish.proxy.xds_channel import PLAINTEXT, ControlPlaneChannel
from pilotfish.proxy.xds_client import Metadata

log = logging.getLogger("pilotfish.proxy.tap")
METHOD = "/pilotfish.tap.v1.Tap/Watch"
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 30.0
BATCH_EVERY_S = 0.1  # events go up at most this often, in one message


def _same(data: bytes) -> bytes:
    return data


class TapStream:
    def __init__(
        self,
        tap: Tap,
        targets: Sequence[str],
        metadata: Metadata | Callable[[], Metadata],
        hello: dict[str, str],
        channel: ControlPlaneChannel = PLAINTEXT,
    ) -> None:
        self.tap, self.targets = tap, tuple(targets)
        # May hold a credential: kept out of __repr__. A callable is asked for each stream.
        self._metadata = metadata if callable(metadata) else (lambda: tuple(metadata))
        self._hello = hello  # node id, namespace, workload
        self._channel = channel  # TLS as the ADS stream's
        self._ready = asyncio.Event()
        self._answers: list[dict[str, object]] = []  # refusals of bad commands
        tap.wake = self._ready.set

    def __repr__(self) -> str:
        return f"TapStream({self.targets[0]!r}, taps={len(self.tap.filters)})"

    async def run(self) -> None:
        """Stream until cancelled, reconnecting forever."""
        delay, current = BACKOFF_FIRST_S, 0
        while True:
            try:
                await self._stream(self.targets[current])
                delay = BACKOFF_FIRST_S
            except grpc.aio.AioRpcError as e:
                log.info(
                    "tap stream to %s ended: %s %s",
                    self.targets[current],
                    e.code().name,
                    e.details(),
                )
            finally:
                self.tap.stop_all()
            current = (current + 1) % len(self.targets)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _stream(self, target: str) -> None:
        async with self._channel.open(target) as channel:
            watch = channel.stream_stream(
                METHOD, request_serializer=_same, response_deserializer=_same
            )
            call = watch(self._outgoing(), metadata=self._metadata())
            async for message in call:
                answer = self.tap.command(json.loads(message))
                if answer is not None:
                    self._answers.append(answer)
                    self._ready.set()

    async def _outgoing(self) -> AsyncIterator[bytes]:
        self._answers.clear()
        yield json.dumps({"hello": self._hello}).encode()
        while True:
            await self._ready.wait()
            self._ready.clear()
            for answer in self._answers:
                yield json.dumps(answer).encode()
            self._answers.clear()
            batch = self.tap.take()
            if batch is not None:
                yield json.dumps(batch, separators=(",", ":")).encode()
            await asyncio.sleep(BATCH_EVERY_S)
