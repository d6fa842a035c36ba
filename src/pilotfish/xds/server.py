"""The ADS server: grpc.aio on an event loop thread of its own.

A stream costs a queue and a reader task, never a thread, so however many
streams clients open, the thread count stays flat; how many they may open,
and what each may make the server hold, is limits.py's. Every stream is a
Connection (connection.py) fed by one queue: the client's requests (moved
there by the reader task, at most a few ahead) and "a push is due" markers
arrive in order, so a stream's state is only ever touched by its handler.
Changes from the registry (any thread) are debounced by a pusher thread
(debounce.py: Istio's PILOT_DEBOUNCE_AFTER and PILOT_DEBOUNCE_MAX); then
every stream regenerates the types the changed kinds can alter for its
proxy (types.affected_types: a VirtualService, a sidecar's routes only) and
sends only those whose version moved. A stream that is slow to read
keeps one pending push, the newest, not a backlog. Regenerating is shared:
proxies that translation cannot tell apart get the same resources,
translated once (generate.Generator).

Who may connect: any loopback peer, as before; from any other address a
stream must carry the control plane's token in its gRPC metadata
(`authorization: Bearer TOKEN`), or a token `accept` takes (a workload's
service account token, as istiod takes a proxy's JWT), or it ends
UNAUTHENTICATED at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import resource
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

import grpc
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest

from pilotfish.addresses import is_loopback
from pilotfish.controlplane.auth import bearer_token, has_token
from pilotfish.model import Proxy, ProxyType, Snapshot
from pilotfish.xds import types
from pilotfish.xds.connection import Connection
from pilotfish.xds.debounce import DEBOUNCE_AFTER_S, DEBOUNCE_MAX_S, Debounce
from pilotfish.xds.delta import DeltaConnection
from pilotfish.xds.generate import Generator, assemble
from pilotfish.xds.handlers import AsyncAdapter
from pilotfish.xds.limits import (
    DEFAULT_LIMITS,
    MAX_REQUEST_BYTES,
    Limits,
    Peer,
    StreamCounts,
    StreamRefused,
    check_request,
)
from pilotfish.xds.node import proxy_from_node

log = logging.getLogger("pilotfish.xds")

DEFAULT_LISTEN = "127.0.0.1:15010"
TokenCheck = Callable[[str], bool]  # whether a bearer token (not the admin's) is one to accept
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
MAX_SEND_BYTES = 64 * 1024 * 1024  # a large mesh's full CDS fits in one response
REQUESTS_AHEAD = 4  # requests read from a stream before its handler took the first
T = TypeVar("T")


@dataclass(frozen=True)
class _Push:
    """A new snapshot, and the types the changes behind it can have altered
    (for sidecars, `sidecar_types`, when narrower)."""

    snapshot: Snapshot
    types: frozenset[str]
    sidecar_types: frozenset[str] | None = None

    def types_for(self, proxy: Proxy) -> frozenset[str]:
        if proxy.type is ProxyType.SIDECAR and self.sidecar_types is not None:
            return self.sidecar_types
        return self.types

    def after(self, newer: _Push) -> _Push:
        """This push not yet sent, merged into `newer`."""
        sidecar = (self.sidecar_types or self.types) | (newer.sidecar_types or newer.types)
        return _Push(newer.snapshot, self.types | newer.types, sidecar)


class _PushDue:
    """Queued once per pending push; the push itself waits on the stream."""


_PUSH_DUE = _PushDue()
Request: TypeAlias = DiscoveryRequest | DeltaDiscoveryRequest
StreamItem: TypeAlias = Request | _PushDue | None  # None: the client hung up


class BindError(Exception):
    """The xDS port could not be bound (in use, or not an address)."""


@dataclass
class _Stream:
    connection: Connection
    peer: Peer
    queue: asyncio.Queue[StreamItem] = field(default_factory=asyncio.Queue)
    room: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(REQUESTS_AHEAD))
    push: _Push | None = None


class AdsServer:
    """Serves state-of-the-world ADS from the snapshots `snapshot_of()` builds.
    `token`: what peers off loopback must present (None: they are all refused)."""

    def __init__(
        self,
        snapshot_of: Callable[[], Snapshot],
        listen: str = DEFAULT_LISTEN,
        *,
        debounce: float = DEBOUNCE_AFTER_S,
        debounce_max: float = DEBOUNCE_MAX_S,
        token: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
        services: Sequence[grpc.GenericRpcHandler] = (),
        secure: tuple[str, grpc.ServerCredentials] | None = None,
        accept: TokenCheck | None = None,
    ) -> None:
        self.listen = listen
        self._accept = accept
        # The same services over TLS too (istiod's 15012): where, and the server's certificate.
        self._secure = secure
        self.secure_port = 0
        # More gRPC services on this port (Istio's CA); synchronous ones run on threads.
        self._services = tuple(AsyncAdapter(service) for service in services)
        self.port = 0
        self.pushes = 0
        self.limits = limits
        self._token = token
        self._snapshot_of = snapshot_of
        self._debounce = Debounce(debounce, debounce_max)
        self._snapshot = Snapshot()
        self._generator = Generator()
        self._pending: frozenset[str] = frozenset()  # types the changes since the last push alter
        self._pending_sidecar: frozenset[str] = frozenset()  # ... for sidecars
        self._streams: dict[str, _Stream] = {}
        self._counts = StreamCounts(limits)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._stopping = threading.Event()
        self._pusher: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"AdsServer({self.listen!r}, {len(self._streams)} streams, pushes={self.pushes})"

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve; BindError if the address cannot be used."""
        self._snapshot = self._snapshot_of()
        self._loop = _server_loop()
        self._server = self._run(self._serve())
        self._pusher = threading.Thread(target=self._push_forever, name="xds-push", daemon=True)
        self._pusher.start()

    async def _serve(self) -> grpc.aio.Server:
        server = grpc.aio.server(options=_server_options(self.limits))
        server.add_generic_rpc_handlers((_ads_handler(self), *self._services))
        self.port = _bind(server, self.listen)
        if self._secure is not None:
            self.secure_port = _bind(server, *self._secure)
        await server.start()
        return server

    def stop(self) -> None:
        self._stopping.set()
        self._debounce.wake()
        if self._server is not None:
            self._run(self._shutdown(self._server))
            self._server = None
        if self._pusher is not None:
            self._pusher.join(timeout=5)

    async def _shutdown(self, server: grpc.aio.Server) -> None:
        for stream in list(self._streams.values()):
            stream.queue.put_nowait(None)
        await server.stop(grace=1.0)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def changed(self, kinds: Iterable[str] = ()) -> None:
        """Something snapshots are built from changed (any thread); `kinds`
        (empty: unknown) narrow the push to the types they can alter."""
        with self._lock:
            self._pending |= types.affected_types(frozenset(kinds))
            self._pending_sidecar |= types.affected_types(frozenset(kinds), sidecar=True)
        self._debounce.event()

    def connections(self) -> list[Connection]:
        """The live streams' states (a copy of the list, safe from any thread)."""
        with self._lock:
            return [s.connection for s in self._streams.values()]

    # -- pushes --------------------------------------------------------------------------

    def _push_forever(self) -> None:
        while not self._stopping.is_set():
            if not self._debounce.wait_for_quiet(self._stopping):
                continue
            with self._lock:  # taken before the snapshot: later changes push again
                affected, self._pending = self._pending, frozenset()
                sidecar, self._pending_sidecar = self._pending_sidecar, frozenset()
            try:
                push = _Push(self._snapshot_of(), affected or types.ALL_TYPES, sidecar or None)
                self._publish(push)
            except Exception:  # a bad snapshot must not stop every later push
                log.exception("building a snapshot failed; proxies keep their config")

    def _publish(self, push: _Push) -> None:
        self._snapshot = push.snapshot
        self.pushes += 1
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._fan_out, push)

    def _fan_out(self, push: _Push) -> None:
        """On the loop: every stream gets the push, merged into any it has not sent yet."""
        for stream in self._streams.values():
            if stream.push is None:
                stream.queue.put_nowait(_PUSH_DUE)
                stream.push = push
            else:
                stream.push = stream.push.after(push)

    # -- one stream ----------------------------------------------------------------------

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for response in self._open(request_iterator, context, Connection):
            yield response

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        async for response in self._open(request_iterator, context, DeltaConnection):
            yield response

    async def _open(
        self,
        request_iterator: AsyncIterator[Request],
        context: grpc.aio.ServicerContext,
        kind: type[Connection],
    ) -> AsyncIterator[bytes]:
        """One stream, SotW or incremental (`kind`), from its opening to its end."""
        address = peer_ip(context.peer())
        try:
            self._authenticate(address, context.invocation_metadata() or ())
            self._counts.open(address)
        except StreamRefused as e:
            await context.abort(grpc.StatusCode[e.code], str(e))
        conn = kind(f"{context.peer()}-{next(self._ids)}", address)
        stream = _Stream(conn, (address, ""))
        reader = asyncio.create_task(_read_requests(request_iterator, stream))
        with self._lock:
            self._streams[conn.conn_id] = stream
        try:
            async for response in self._serve_stream(stream):
                yield response
        except StreamRefused as e:
            log.warning("xDS stream %s refused: %s", conn.conn_id, e)
            await context.abort(grpc.StatusCode[e.code], str(e))
        finally:
            reader.cancel()
            with self._lock:
                self._streams.pop(conn.conn_id, None)
            self._counts.close(stream.peer)
            log.info("xDS stream closed: %r", conn)

    async def _serve_stream(self, stream: _Stream) -> AsyncIterator[bytes]:
        conn = stream.connection
        deadline = time.monotonic() + self.limits.identify_within
        while (item := await self._next(stream, deadline)) is not None:
            if isinstance(item, _PushDue):
                push, stream.push = stream.push, None
                responses = self._push(conn, push) if push is not None else []
            else:
                stream.room.release()
                responses = self._answer(stream, item)
            for response in responses:
                yield response

    async def _next(self, stream: _Stream, deadline: float) -> StreamItem:
        if stream.connection.proxy is not None:
            return await stream.queue.get()
        try:
            return await asyncio.wait_for(stream.queue.get(), deadline - time.monotonic())
        except TimeoutError:
            raise StreamRefused(
                "DEADLINE_EXCEEDED",
                f"no DiscoveryRequest with a node arrived within "
                f"{self.limits.identify_within:g}s of the stream opening",
            ) from None

    def _authenticate(self, address: str, metadata: Sequence[tuple[str, Any]]) -> None:
        authenticate(address, metadata, self._token, self._accept)

    def _answer(self, stream: _Stream, request: Request) -> list[bytes]:
        conn = stream.connection
        if conn.proxy is None:
            self._identify(stream, request)
        assert conn.proxy is not None
        if isinstance(conn, DeltaConnection):
            assert isinstance(request, DeltaDiscoveryRequest)
            return self._answer_delta(conn, request)
        assert isinstance(request, DiscoveryRequest)
        subscribed = {type_url: w.names for type_url, w in conn.watched.items()}
        check_request(request, subscribed, self.limits)
        if not conn.on_request(request):
            _log_nack(conn, request, request.version_info)
            return []
        names = conn.watched[request.type_url].names
        generated = self._generator.generate(self._snapshot, conn.proxy, request.type_url, names)
        return [conn.response(request.type_url, generated)]

    def _answer_delta(self, conn: DeltaConnection, request: DeltaDiscoveryRequest) -> list[bytes]:
        # The limits SotW requests meet, on the names the request would leave.
        names = conn.names_after(request)
        after = DiscoveryRequest(type_url=request.type_url, resource_names=names)
        check_request(after, conn.subscriptions(), self.limits)
        first = request.type_url not in conn.deltas
        if not conn.on_delta_request(request):
            _log_nack(conn, request, conn.watched[request.type_url].acked_version)
            return []
        return self._send_delta(conn, self._snapshot, request.type_url, always=first)

    def _send_delta(
        self, conn: DeltaConnection, snapshot: Snapshot, type_url: str, *, always: bool
    ) -> list[bytes]:
        """What the client lacks of `type_url`; the first answer of a type goes
        even when empty, since the client waits for it to finish starting."""
        assert conn.proxy is not None
        names = conn.deltas[type_url].asks_for(type_url)
        if names is None:
            generated = assemble(type_url, frozenset(), ())
        else:
            generated = self._generator.generate(snapshot, conn.proxy, type_url, names)
        delta = conn.delta(type_url, generated)
        return [conn.delta_response(type_url, generated, delta)] if delta or always else []

    def _identify(self, stream: _Stream, request: Request) -> None:
        """The first request says who the proxy is; it must, within the deadline."""
        if not request.HasField("node") or not request.node.id:
            raise StreamRefused("INVALID_ARGUMENT", "the first request must carry a node id")
        if len(request.node.id.encode()) > self.limits.name_bytes:
            raise StreamRefused(
                "INVALID_ARGUMENT",
                f"the node id is {len(request.node.id.encode())} bytes; the limit is "
                f"{self.limits.name_bytes}",
            )
        address = stream.peer[0]
        self._counts.identify(address, request.node.id)
        stream.peer = (address, request.node.id)
        stream.connection.proxy = proxy_from_node(request.node, address)
        log.info("xDS stream %s: %r", stream.connection.conn_id, stream.connection.proxy)

    def _push(self, conn: Connection, push: _Push) -> list[bytes]:
        if conn.proxy is None:
            return []
        out = []
        for type_url in _push_types(conn, push):
            if isinstance(conn, DeltaConnection):
                out += self._send_delta(conn, push.snapshot, type_url, always=False)
                continue
            names = conn.watched[type_url].names
            generated = self._generator.generate(push.snapshot, conn.proxy, type_url, names)
            if conn.needs_push(type_url, generated):
                out.append(conn.response(type_url, generated))
        return out


def _push_types(conn: Connection, push: _Push) -> list[str]:
    """The types the stream watches that the push can have altered, in
    Envoy's order; other types only on a push of everything."""
    assert conn.proxy is not None
    wanted = push.types_for(conn.proxy)
    others = sorted(set(conn.watched) - set(types.PUSH_ORDER))
    candidates = (*types.PUSH_ORDER, *(others if wanted == types.ALL_TYPES else []))
    skipped = types.ALL_TYPES - wanted
    return [t for t in candidates if t in conn.watched and t not in skipped]


def _ads_handler(server: AdsServer) -> grpc.GenericRpcHandler:
    """The ADS service, answering with responses already serialized
    (Connection.response), so that a response many streams are sent is
    serialized once, not once per stream."""
    return grpc.method_handlers_generic_handler(
        ADS_SERVICE,
        {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                server.StreamAggregatedResources,
                request_deserializer=DiscoveryRequest.FromString,
                response_serializer=_already_bytes,
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                server.DeltaAggregatedResources,
                request_deserializer=DeltaDiscoveryRequest.FromString,
                response_serializer=_already_bytes,
            ),
        },
    )


def _already_bytes(response: bytes) -> bytes:
    return response


_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _server_loop() -> asyncio.AbstractEventLoop:
    """The event loop every AdsServer of the process runs on, started once and
    never closed: grpc.aio delivers all its completions through the first loop
    that used it, so a server whose loop stopped would stall any other."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="xds", daemon=True).start()
        return _loop


def authenticate(
    address: str,
    metadata: Sequence[tuple[str, Any]],
    token: str | None,
    accept: TokenCheck | None = None,
) -> None:
    """A stream on the xDS port (ADS, `pilotfish tap`'s) is served to loopback
    peers, and to others that present `token` or a token `accept` takes;
    StreamRefused otherwise."""
    if is_loopback(address):
        return
    given = [str(v) for k, v in metadata if k == "authorization"]
    if token is not None and given and has_token(given[0], token):
        return
    if accept is not None and given and accept(bearer_token(given[0]) or ""):
        return
    if given:
        raise StreamRefused("UNAUTHENTICATED", "the bearer token in 'authorization' is not valid")
    raise StreamRefused(
        "UNAUTHENTICATED",
        f"xDS from {address} (not loopback) needs the control plane's token: "
        "send gRPC metadata 'authorization: Bearer TOKEN'",
    )


async def _read_requests(requests: AsyncIterator[Request], stream: _Stream) -> None:
    """Move requests to the stream's queue, at most REQUESTS_AHEAD ahead of its
    handler, so a client cannot queue requests faster than they are answered."""
    try:
        async for request in requests:
            await stream.room.acquire()
            stream.queue.put_nowait(request)
    except grpc.RpcError:
        pass  # the client went away; the handler ends below
    finally:
        stream.queue.put_nowait(None)


def _log_nack(conn: Connection, request: Request, version: str) -> None:
    if request.HasField("error_detail") and conn.proxy is not None:
        log.warning(
            "xDS NACK from %s for %s version %s: %s",
            conn.proxy.node_id,
            types.short_name(request.type_url),
            version or "(none)",
            request.error_detail.message,
        )


def _server_options(limits: Limits) -> list[tuple[str, int]]:
    # Connections beyond the cap are closed at once: better a proxy retrying
    # than a process out of file descriptors, its REST API with it.
    soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    connections = limits.connections
    if soft_limit != resource.RLIM_INFINITY:
        connections = min(connections, soft_limit // 2)
    return [
        ("grpc.so_reuseport", 0),  # a second control plane must fail, not share
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
        ("grpc.max_allowed_incoming_connections", connections),
        ("grpc.server_handshake_timeout_ms", int(limits.handshake_within * 1000)),
        ("grpc.max_connection_idle_ms", int(limits.idle_connection * 1000)),
    ]


def _bind(
    server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None = None
) -> int:
    try:
        if credentials is None:
            port = int(server.add_insecure_port(listen))
        else:
            port = int(server.add_secure_port(listen, credentials))
    except RuntimeError as e:
        raise BindError(f"cannot listen on {listen} for xDS: {e}") from e
    if port == 0:
        raise BindError(f"cannot listen on {listen} for xDS: the address is in use or invalid")
    return port


def peer_ip(peer: str) -> str:
    """`ipv4:127.0.0.1:5555` or `ipv6:[::1]:5555` -> the address."""
    _, _, rest = peer.partition(":")
    host = rest.rpartition(":")[0]
    return host.strip("[]") or "127.0.0.1"
