"""The ADS server: grpcio's threaded server, one handler thread per stream.

Every stream is a Connection (connection.py) fed by one queue: the client's
requests (moved there by a reader thread) and the server's pushes arrive in
order, so a stream's state is only ever touched by its own handler thread.
Changes from the registry (any thread) are debounced by a pusher thread: a
push starts once changes stop for `debounce` seconds, or `debounce_max` after
the first, whichever comes first; then every stream regenerates the types the
changed kinds can alter (types.affected_types: a VirtualService, routes only)
and sends only those whose version moved. Regenerating is shared: proxies that
translation cannot tell apart get the same resources, translated once
(generate.Generator).

(grpc.aio was tried first: its server cannot be stopped cleanly from an
event loop running on a thread other than the main one.)
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeAlias

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse

from pilotfish.model import Snapshot
from pilotfish.xds import types
from pilotfish.xds.connection import Connection
from pilotfish.xds.generate import Generator
from pilotfish.xds.node import proxy_from_node

log = logging.getLogger("pilotfish.xds")

DEFAULT_LISTEN = "127.0.0.1:15010"
DEBOUNCE_S, DEBOUNCE_MAX_S = 0.1, 1.0
MAX_STREAMS = 2048  # each stream holds a handler thread (and a reader thread)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class _Push:
    """A new snapshot, and the types the changes behind it can have altered."""

    snapshot: Snapshot
    types: frozenset[str]


StreamItem: TypeAlias = DiscoveryRequest | _Push | None  # None: the client hung up


class BindError(Exception):
    """The xDS port could not be bound (in use, or not an address)."""


@dataclass
class _Stream:
    connection: Connection
    queue: queue.SimpleQueue[StreamItem] = field(default_factory=queue.SimpleQueue)


class AdsServer:
    """Serves state-of-the-world ADS from the snapshots `snapshot_of()` builds."""

    def __init__(
        self,
        snapshot_of: Callable[[], Snapshot],
        listen: str = DEFAULT_LISTEN,
        *,
        debounce: float = DEBOUNCE_S,
        debounce_max: float = DEBOUNCE_MAX_S,
        services: Sequence[grpc.GenericRpcHandler] = (),
    ) -> None:
        self.listen = listen
        self._services = tuple(services)  # more gRPC services on this port (Istio's CA)
        self.port = 0
        self.pushes = 0
        self._snapshot_of = snapshot_of
        self._debounce = Debounce(debounce, debounce_max)
        self._snapshot = Snapshot()
        self._generator = Generator()
        self._pending: frozenset[str] = frozenset()  # types the changes since the last push alter
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._server: grpc.Server | None = None
        self._stopping = threading.Event()
        self._pusher: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"AdsServer({self.listen!r}, {len(self._streams)} streams, pushes={self.pushes})"

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve; BindError if the address cannot be used."""
        self._snapshot = self._snapshot_of()
        server = grpc.server(
            ThreadPoolExecutor(max_workers=MAX_STREAMS, thread_name_prefix="xds-stream"),
            options=[
                ("grpc.so_reuseport", 0),  # a second control plane must fail, not share
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
            maximum_concurrent_rpcs=MAX_STREAMS,
        )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)
        server.add_generic_rpc_handlers(self._services)
        self.port = _bind(server, self.listen)
        server.start()
        self._server = server
        self._pusher = threading.Thread(target=self._push_forever, name="xds-push", daemon=True)
        self._pusher.start()

    def stop(self) -> None:
        self._stopping.set()
        self._debounce.wake()
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.queue.put(None)
        if self._server is not None:
            self._server.stop(grace=1.0).wait(timeout=10)
        if self._pusher is not None:
            self._pusher.join(timeout=5)

    def changed(self, kinds: Iterable[str] = ()) -> None:
        """Something snapshots are built from changed (any thread); `kinds`
        (empty: unknown) narrow the push to the types they can alter."""
        with self._lock:
            self._pending |= types.affected_types(frozenset(kinds))
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
            try:
                self._publish(self._snapshot_of(), affected or types.ALL_TYPES)
            except Exception:  # a bad snapshot must not stop every later push
                log.exception("building a snapshot failed; proxies keep their config")

    def _publish(self, snapshot: Snapshot, affected: frozenset[str]) -> None:
        self._snapshot = snapshot
        self.pushes += 1
        push = _Push(snapshot, affected)
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.queue.put(push)

    # -- one stream ----------------------------------------------------------------------

    def StreamAggregatedResources(
        self, request_iterator: Iterator[DiscoveryRequest], context: grpc.ServicerContext
    ) -> Iterator[DiscoveryResponse]:
        stream = _Stream(
            Connection(f"{context.peer()}-{next(self._ids)}", _peer_ip(context.peer()))
        )
        threading.Thread(
            target=_read_requests, args=(request_iterator, stream.queue), daemon=True
        ).start()
        with self._lock:
            self._streams[stream.connection.conn_id] = stream
        try:
            while (item := stream.queue.get()) is not None and context.is_active():
                if isinstance(item, _Push):
                    yield from self._push(stream.connection, item)
                else:
                    yield from self._answer(stream.connection, item, context)
        finally:
            with self._lock:
                self._streams.pop(stream.connection.conn_id, None)
            log.info("xDS stream closed: %r", stream.connection)

    def DeltaAggregatedResources(
        self, request_iterator: Iterator[object], context: grpc.ServicerContext
    ) -> Iterator[object]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "delta xDS is not served; use SotW")
        return iter(())

    def _answer(
        self, conn: Connection, request: DiscoveryRequest, context: grpc.ServicerContext
    ) -> list[DiscoveryResponse]:
        if conn.proxy is None:
            if not request.HasField("node") or not request.node.id:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry a node id"
                )
            conn.proxy = proxy_from_node(request.node, conn.peer)
            log.info("xDS stream %s: %r", conn.conn_id, conn.proxy)
        if not conn.on_request(request):
            _log_nack(conn, request)
            return []
        names = conn.watched[request.type_url].names
        generated = self._generator.generate(self._snapshot, conn.proxy, request.type_url, names)
        return [conn.response(request.type_url, generated)]

    def _push(self, conn: Connection, push: _Push) -> list[DiscoveryResponse]:
        if conn.proxy is None:
            return []
        out = []
        others = sorted(set(conn.watched) - set(types.PUSH_ORDER))
        for type_url in (*types.PUSH_ORDER, *(others if push.types == types.ALL_TYPES else [])):
            watched = conn.watched.get(type_url)
            if watched is None or (type_url in types.ALL_TYPES and type_url not in push.types):
                continue
            generated = self._generator.generate(push.snapshot, conn.proxy, type_url, watched.names)
            if conn.needs_push(type_url, generated):
                out.append(conn.response(type_url, generated))
        return out


class Debounce:
    """Turns a burst of change events into one push: `wait_for_quiet` returns
    True once events stop for `quiet` seconds or `longest` after the first."""

    def __init__(self, quiet: float, longest: float) -> None:
        self.quiet, self.longest = quiet, longest
        self._cond = threading.Condition()
        self._first: float | None = None
        self._last = 0.0

    def __repr__(self) -> str:
        pending = self._first is not None
        return f"Debounce(quiet={self.quiet}, longest={self.longest}, pending={pending})"

    def event(self) -> None:
        with self._cond:
            self._last = time.monotonic()
            if self._first is None:
                self._first = self._last
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_for_quiet(self, stopping: threading.Event) -> bool:
        """Block until a burst settles (True), or `stopping` is set (False)."""
        with self._cond:
            while not stopping.is_set():
                if self._first is None:
                    self._cond.wait()
                    continue
                due = min(self._last + self.quiet, self._first + self.longest)
                left = due - time.monotonic()
                if left <= 0:
                    self._first = None
                    return True
                self._cond.wait(left)
            return False


def _read_requests(
    requests: Iterator[DiscoveryRequest], into: queue.SimpleQueue[StreamItem]
) -> None:
    try:
        for request in requests:
            into.put(request)
    except grpc.RpcError:
        pass  # the client went away; the handler ends below
    finally:
        into.put(None)


def _log_nack(conn: Connection, request: DiscoveryRequest) -> None:
    if request.HasField("error_detail") and conn.proxy is not None:
        log.warning(
            "xDS NACK from %s for %s version %s: %s",
            conn.proxy.node_id,
            types.short_name(request.type_url),
            request.version_info or "(none)",
            request.error_detail.message,
        )


def _bind(server: grpc.Server, listen: str) -> int:
    try:
        port = int(server.add_insecure_port(listen))
    except RuntimeError as e:
        raise BindError(f"cannot listen on {listen} for xDS: {e}") from e
    if port == 0:
        raise BindError(f"cannot listen on {listen} for xDS: the address is in use or invalid")
    return port


def _peer_ip(peer: str) -> str:
    """`ipv4:127.0.0.1:5555` or `ipv6:[::1]:5555` -> the address."""
    _, _, rest = peer.partition(":")
    host = rest.rpartition(":")[0]
    return host.strip("[]") or "127.0.0.1"
