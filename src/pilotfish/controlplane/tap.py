"""`pilotfish tap`'s relay: sidecars' tap streams in, the CLI's watch out.

Each sidecar keeps a tap stream open to the control plane on the xDS port
(proxy/tap_stream.py), authenticated as its ADS stream is. A tap request
on the REST API,

    GET /apis/tap.pilotfish.dev/v1alpha1/watch/namespaces/NS/workloads/NAME/tap
        ?path=PREFIX&method=GET&maxRps=100

starts a tap on every sidecar of the workload connected now, and answers
with newline-delimited JSON: one line per request seen, and a `{"dropped": N}`
line when requests were dropped, by a sidecar (its buffer full) or here (the
reader too slow: the queue is bounded). Leaving stops the tap on them all.
It is a read: open to loopback callers, a token off loopback.

The gRPC side runs on the xDS server's event loop; the REST side on the API
server's threads; they meet through `loop.call_soon_threadsafe` one way and
a bounded `queue.Queue` the other.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from pilotfish.api.errors import BadRequest, MethodNotAllowed, NotFound
from pilotfish.controlplane.api import Request, Response
from pilotfish.objects import Obj
from pilotfish.proxy.tap import DEFAULT_MAX_RPS, InvalidTap, TapFilter
from pilotfish.proxy.tap_stream import METHOD
from pilotfish.xds.limits import StreamRefused
from pilotfish.xds.server import TokenCheck, authenticate, peer_ip

log = logging.getLogger(__name__)

PREFIX = "/apis/tap.pilotfish.dev/v1alpha1/watch/namespaces/"
QUEUE = 1000  # events waiting for a slow reader; more are dropped and counted
HELLO_WITHIN_S = 10.0  # a stream that does not say which workload it is ends


def _same(data: bytes) -> bytes:
    return data


@dataclass(eq=False)
class _Session:
    """One sidecar's tap stream."""

    node: str
    namespace: str
    workload: str
    loop: asyncio.AbstractEventLoop
    commands: asyncio.Queue[Obj] = field(default_factory=asyncio.Queue)

    def send(self, command: Obj) -> None:
        """From any thread."""
        self.loop.call_soon_threadsafe(self.commands.put_nowait, command)


class TapWatch:
    """One `pilotfish tap`: what its sidecars saw, for the HTTP shell to drain."""

    def __init__(self, hub: TapHub, tap_id: str, sessions: list[_Session]) -> None:
        self.hub, self.tap_id, self.sessions = hub, tap_id, sessions
        self.events: queue.Queue[Obj] = queue.Queue(QUEUE)
        self.dropped = 0
        self._reported = 0
        self.done = False

    def __repr__(self) -> str:
        return f"TapWatch({self.tap_id}, {len(self.sessions)} sidecars, dropped={self.dropped})"

    def put(self, event: Obj) -> None:
        try:
            self.events.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def next_line(self, timeout: float) -> bytes | None:
        if self.dropped != self._reported:
            self._reported = self.dropped
            return json.dumps({"dropped": self.dropped}).encode()
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            return None
        return json.dumps(event, separators=(",", ":")).encode()

    def close(self) -> None:
        self.done = True
        self.hub.stop(self)


class TapHub(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no types
    """Served on the xDS port (AdsServer's `services`)."""

    def __init__(self, token: str | None, accept: TokenCheck | None = None) -> None:
        self._token = token
        self._accept = accept
        self._sessions: set[_Session] = set()
        self._watches: dict[str, TapWatch] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"TapHub({len(self._sessions)} sidecars, {len(self._watches)} taps)"

    def service(self, call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if call_details.method != METHOD:
            return None
        return grpc.stream_stream_rpc_method_handler(
            self._serve, request_deserializer=_same, response_serializer=_same
        )

    # -- the sidecars' side (the xDS server's loop) ----------------------------------------

    async def _serve(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        try:
            metadata = context.invocation_metadata() or ()
            authenticate(peer_ip(context.peer()), metadata, self._token, self._accept)
            first = await asyncio.wait_for(anext(aiter(requests)), HELLO_WITHIN_S)
            hello = json.loads(first)["hello"]
            session = _Session(
                str(hello["node"]), str(hello["namespace"]), str(hello["workload"]),
                asyncio.get_running_loop(),
            )  # fmt: skip
        except StreamRefused as e:
            await context.abort(grpc.StatusCode[e.code], str(e))
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no hello arrived in time")
        except (StopAsyncIteration, ValueError, KeyError, TypeError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"expected a hello: {e}")
        reader = asyncio.create_task(self._read(requests, session))
        with self._lock:
            self._sessions.add(session)
        try:
            while True:
                yield json.dumps(await session.commands.get()).encode()
        finally:
            reader.cancel()
            with self._lock:
                self._sessions.discard(session)

    async def _read(self, requests: AsyncIterator[bytes], session: _Session) -> None:
        async for message in requests:  # at most gRPC's 4 MiB each (the xDS port's limit)
            try:
                batch = json.loads(message)
            except ValueError:
                continue
            self._deliver(batch, session)

    def _deliver(self, batch: Any, session: _Session) -> None:
        """A message up from a sidecar: a batch of events, or its refusal of a tap."""
        if not isinstance(batch, dict):
            return
        if "error" in batch:
            log.warning("the sidecar %s refused a tap: %s", session.node, batch["error"])
            refused = self._watches.get(str(batch.get("tap")))
            if refused is not None:
                refused.put({"node": session.node, "error": str(batch["error"])})
            return
        with self._lock:
            watches = list(self._watches.values())
        dropped = batch.get("dropped")
        for watch in watches:  # the sidecar's buffer is shared by the taps on it
            if isinstance(dropped, int) and dropped > 0 and session in watch.sessions:
                watch.dropped += dropped
        for event in batch.get("events") or []:
            taps = event.pop("taps", []) if isinstance(event, dict) else []
            for tap_id in taps if isinstance(taps, list) else []:
                found = self._watches.get(str(tap_id))
                if found is not None:
                    found.put({"node": session.node, **event})

    # -- the CLI's side (the API server's threads) -----------------------------------------

    def start(self, namespace: str, workload: str, command: Obj) -> TapWatch:
        with self._lock:
            sessions = [
                s for s in self._sessions if (s.namespace, s.workload) == (namespace, workload)
            ]
            if not sessions:
                raise NotFound(
                    f'workload "{namespace}/{workload}" has no sidecar connected to this '
                    "control plane: nothing to tap"
                )
            tap_id = f"tap-{next(self._ids)}"
            watch = self._watches[tap_id] = TapWatch(self, tap_id, sessions)
        for session in sessions:
            session.send({"start": {**command, "tap": tap_id}})
        return watch

    def stop(self, watch: TapWatch) -> None:
        with self._lock:
            self._watches.pop(watch.tap_id, None)
        for session in watch.sessions:
            session.send({"stop": watch.tap_id})

    def __call__(self, request: Request, path: str) -> Response | None:
        """The REST extension."""
        if not path.startswith(PREFIX):
            return None
        parts = path[len(PREFIX) :].split("/")
        if len(parts) != 4 or parts[1] != "workloads" or parts[3] != "tap" or not all(parts):
            raise NotFound(f"no such path {path}: expected {PREFIX}NS/workloads/NAME/tap")
        if request.method != "GET":
            raise MethodNotAllowed(f"{request.method} is not supported on {path}")
        command = tap_command(request.query)
        watch = self.start(parts[0], parts[2], command)
        return Response(200, content_type="application/json", stream=watch)


def tap_command(query: Any) -> Obj:
    """The filter a tap asks for, checked here so a bad one is a 400 before any sidecar sees it."""
    command: Obj = {"path": query.get("path") or "", "method": query.get("method") or ""}
    text = query.get("maxRps") or ""
    try:
        command["maxRps"] = float(text) if text else DEFAULT_MAX_RPS
    except ValueError:
        raise BadRequest(f'invalid maxRps "{text[:40]}": expected a number') from None
    try:
        TapFilter.parse({**command, "tap": "check"}, 0.0)
    except InvalidTap as e:
        raise BadRequest(str(e)) from e
    return command
