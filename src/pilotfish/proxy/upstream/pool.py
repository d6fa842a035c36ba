"""Upstream HTTP/1.1 connections, and the keep-alive pool per host.

A connection carries one request at a time and hands the response's events
(protocol/http1's ResponseParser) straight to the exchange using it, in the
callback that read them: nothing is awaited between the head and the body,
so nothing can be lost in between. Connections are reused while both sides
keep them alive, because a new one costs far more than a request (~140 µs).

Envoy's circuit breakers shape the pool: a request with no idle connection
is pending (max_pending_requests) until a connection opens or frees up, and
connections per cluster are bounded (max_connections); a refusal is an
overflow the exchange answers 503 UO.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import TYPE_CHECKING, Final, Protocol

from mypy_extensions import mypyc_attr

from pilotfish.proxy.protocol.express import ExpressResponse, parse_response
from pilotfish.proxy.protocol.http1 import (
    END,
    ProtocolError,
    ResponseEvent,
    ResponseParser,
)
from pilotfish.proxy.stats import StatsRegistry
from pilotfish.proxy.tls import TlsContexts, UpstreamTls, check_sans, failure_reason, peer_uri_sans
from pilotfish.proxy.upstream import Cluster, Host

if TYPE_CHECKING:
    from pilotfish.proxy.exchange import Exchange

MAX_IDLE_PER_HOST: Final = 256
# time.monotonic as a Final name: compiled, a C static, where `time.monotonic`
# is an attribute lookup on the module (~300 instructions) at every call.
MONOTONIC: Final = time.monotonic
SWEEP_INTERVAL_S: Final = 1.0


class ResponseSink(Protocol):
    """What an upstream connection reports to the exchange using it: the
    response's events from one read, or an express response (a head with its
    Content-Length body, or the start of it); `on_flow(True)` when the
    connection's write buffer is full (stop reading the client), False when
    it drained."""

    def on_connection(self, conn: UpstreamConnection) -> None: ...
    def on_connect_failure(self, timed_out: bool, reason: str | None = None) -> None: ...
    def on_response(self, events: list[ResponseEvent] | ExpressResponse) -> None: ...
    def on_upstream_error(self, error: ProtocolError) -> None: ...
    def on_flow(self, paused: bool) -> None: ...


@mypyc_attr(allow_interpreted_subclasses=True)  # h2_pool's H2Stream is one, uncompiled
class UpstreamConnection(asyncio.Protocol):
    multiplexed = False  # an HTTP/2 stream (h2_pool.H2Stream), not a connection of its own
    tls = False  # mutual TLS (set once the handshake and the SAN check passed)
    made_with: UpstreamTls | None = None  # the cluster's TLS settings it was opened with
    peer_principal: str | None = None  # the server certificate's SPIFFE ID under TLS

    def __init__(self, pool: Pool, host: Host, cluster: Cluster) -> None:
        self.pool, self.host, self.cluster = pool, host, cluster
        self.transport: asyncio.Transport | None = None
        # Named beside the protocol so that, compiled, a response reaches an
        # exchange (nearly every sink) by a native call: a call through the
        # protocol alone is a generic method call (about 250 instructions).
        self.sink: Exchange | ResponseSink | None = None
        self.parser = ResponseParser()
        self.reusable = True
        self.requests = 0
        self.idle_since = 0.0
        self.express = False  # the response may be read the express way
        self.remaining = 0  # body bytes of an express response still to come
        # Read once: the cluster a connection was made for stays its cluster,
        # and the spec's objects are interpreted (generic reads per release).
        self.max_requests = cluster.spec.pool.max_requests_per_connection

    def __repr__(self) -> str:
        return f"<UpstreamConnection {self.host} busy={self.sink is not None}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.host.connection_opened()

    def data_received(self, data: bytes) -> None:
        if self.remaining:
            self._express_body(data)
            return
        sink = self.sink
        if self.express and sink is not None:
            self.express = False
            resp = parse_response(data, self.parser.max_head)
            if resp is not None:
                self.remaining = (resp.content_length or 0) - len(resp.body)
                sink.on_response(resp)
                return
        try:
            events = self.parser.feed(data)
        except ProtocolError as error:
            self._fail(error)
            return
        if self.sink is not None and events:
            self.sink.on_response(events)
        elif events and self.sink is None:
            self.close()  # bytes nobody asked for: the connection cannot be trusted

    def eof_received(self) -> bool:
        try:
            events = self.parser.eof()
        except ProtocolError as error:
            self._fail(error)
            return False
        if self.sink is not None and events:
            self.sink.on_response(events)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self.host.connection_closed()
        self.pool.stats.cluster(self.cluster.name).upstream_cx_destroy += 1
        self.pool.lost(self)
        if self.sink is not None:
            if isinstance(exc, ssl.SSLError):
                # A TLS 1.3 server refuses the client's certificate after the
                # client's handshake is done: it is still a TLS failure.
                self._fail(ProtocolError(failure_reason(exc), 503, "UF"))
            else:
                self._fail(ProtocolError("upstream connection reset", 503, "UC"))

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.on_flow(True)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.on_flow(False)

    def send(self, sink: ResponseSink, method: bytes, data: bytes) -> None:
        """Start a request: its head and whatever body is at hand."""
        self.sink = sink
        self.requests += 1
        held = self.parser.next_message(method)
        # HEAD's and CONNECT's responses do not say their end. Two comparisons
        # of bytes, where `in` a frozenset is a generic call.
        self.express = self.parser.idle and method != b"HEAD" and method != b"CONNECT"
        assert self.transport is not None
        self.transport.write(data)
        if held:
            sink.on_response(held)

    def _express_body(self, data: bytes) -> None:
        """The rest of an express response's body; bytes past it were not
        asked for, so the connection is not reused."""
        if len(data) > self.remaining:
            data = data[: self.remaining]
            self.reusable = False
        self.remaining -= len(data)
        sink = self.sink
        if sink is not None:
            sink.on_response([data, END] if not self.remaining else [data])

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def detach(self) -> None:
        """The exchange is done with this connection (response complete)."""
        self.sink = None
        self.express = False

    def close(self) -> None:
        self.reusable = False
        self.sink = None
        self.remaining = 0
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _fail(self, error: ProtocolError) -> None:
        sink, self.sink = self.sink, None
        self.close()
        if sink is not None:
            sink.on_upstream_error(error)

    @property
    def alive(self) -> bool:
        return self.reusable and self.transport is not None and not self.transport.is_closing()


class Pool:
    """Idle keep-alive connections per host, and requests waiting for one."""

    def __init__(self, stats: StatsRegistry | None = None, tls: TlsContexts | None = None) -> None:
        self.stats = stats or StatsRegistry()
        self.tls = tls or TlsContexts(None)
        self.idle: dict[Host, list[UpstreamConnection]] = {}
        self.waiting: dict[Host, deque[tuple[ResponseSink, Cluster]]] = {}
        self.connecting: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        from pilotfish.proxy.upstream.h2_pool import H2Pool  # it builds on this module

        self.h2 = H2Pool(self)

    def __repr__(self) -> str:
        return f"<Pool idle={sum(map(len, self.idle.values()))}>"

    def request(
        self,
        host: Host,
        cluster: Cluster,
        sink: Exchange | ResponseSink,
        *,
        h2_client: bool = False,
    ) -> bool:
        """Give `sink` a connection to `host` now (idle) or soon (connect, or
        wait for one to free up). False: the circuit breakers refused (UO).
        `h2_client`: the request came over HTTP/2, which a cluster with
        use_downstream_protocol_config carries on in."""
        if not cluster.http1_only and self.h2.handles(host, cluster, h2_client):
            return self.h2.request(host, cluster, sink)
        conn = self.take_idle(host, cluster)
        if conn is not None:
            # Named in the union, an exchange (nearly every sink) gets it by a
            # native call, where the protocol's is a generic one.
            sink.on_connection(conn)
            return True
        breakers = cluster.breakers
        if not breakers.try_acquire_pending():
            return False
        self.stats.cluster(cluster.name).upstream_rq_pending_total += 1
        if breakers.try_acquire_connection():
            self._connect(host, cluster, sink)
        else:
            self.waiting.setdefault(host, deque()).append((sink, cluster))
        return True

    def take_idle(self, host: Host, cluster: Cluster) -> UpstreamConnection | None:
        """An idle HTTP/1.1 connection to `host` that `cluster` may reuse, or
        None; the dead and unfit ones met on the way are closed."""
        idle = self.idle.get(host)
        while idle:
            conn = idle.pop()
            if conn.alive and (conn.cluster is cluster or self._still_fits(conn, host, cluster)):
                return conn
            conn.close()
        return None

    def _still_fits(self, conn: UpstreamConnection, host: Host, cluster: Cluster) -> bool:
        """After a CDS push: a connection made under the old cluster is reused
        only if the new one connects the same way (TLS or not, same context)."""
        return conn.made_with == cluster.spec.upstream_tls(host.metadata)

    def cancel(self, host: Host, sink: ResponseSink) -> None:
        """A waiting request gave up (timeout, client gone)."""
        if self.h2.cancel(host, sink):
            return
        queue = self.waiting.get(host)
        if queue:
            for entry in queue:
                if entry[0] is sink:
                    queue.remove(entry)
                    entry[1].breakers.release_pending()
                    return

    def release(self, conn: UpstreamConnection, now: float = 0.0) -> None:
        """The response is complete: the next waiter takes the connection, or
        it idles. `now`: the clock as the caller read it (0.0: read it here)."""
        if conn.multiplexed:  # an HTTP/2 stream ends; its connection goes on
            self.h2.release(conn)
            return
        conn.detach()
        limit = conn.max_requests
        # `reusable`, not `alive`, on the way to the idle list: a transport
        # closing on its own (a write error, the server's FIN) has its
        # connection_lost scheduled, which takes it out of the list, and a
        # request that comes first checks `alive` (request()). One generic
        # is_closing() call less per response; a waiter checks it here.
        if not conn.reusable or conn.transport is None or (
            limit is not None and conn.requests >= limit
        ):
            if conn.alive:
                self.stats.cluster(conn.cluster.name).upstream_cx_max_requests += 1
            conn.close()
            return
        host = conn.host
        if self.waiting:
            queue = self.waiting.get(host)
            if queue:
                if not conn.alive:
                    conn.close()  # its connection_lost connects for the waiter
                    return
                sink, cluster = queue.popleft()
                cluster.breakers.release_pending()
                sink.on_connection(conn)
                return
        idle = self.idle.get(host)
        if idle is None:
            idle = self.idle[host] = []
        elif len(idle) >= MAX_IDLE_PER_HOST:
            conn.close()
            return
        conn.idle_since = now or MONOTONIC()
        idle.append(conn)
        if self._sweeper is None:
            self._arm_sweeper()

    def lost(self, conn: UpstreamConnection) -> None:
        """A connection closed: its slot may let a waiting request connect."""
        conn.cluster.breakers.release_connection()
        idle = self.idle.get(conn.host)
        if idle and conn in idle:
            idle.remove(conn)
        queue = self.waiting.get(conn.host)
        if queue and conn.cluster.breakers.try_acquire_connection():
            sink, cluster = queue.popleft()
            self._connect(conn.host, cluster, sink)

    def _connect(
        self,
        host: Host,
        cluster: Cluster,
        sink: ResponseSink,
        pending: bool = True,
        kind: type[UpstreamConnection] = UpstreamConnection,
    ) -> None:
        """Open a connection (a `kind`) for `sink`, which holds a connection
        slot, and a pending request slot unless `pending` is False."""
        task = asyncio.ensure_future(self._open(host, cluster, sink, pending, kind))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _open(
        self,
        host: Host,
        cluster: Cluster,
        sink: ResponseSink,
        pending: bool,
        kind: type[UpstreamConnection],
    ) -> None:
        loop = asyncio.get_running_loop()
        tls = cluster.spec.upstream_tls(host.metadata)
        try:
            context = self.tls.client(tls) if tls is not None else None
            async with asyncio.timeout(cluster.spec.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: kind(self, host, cluster),
                    host.address,
                    host.port,
                    ssl=context,
                    server_hostname=(tls.sni or None) if tls is not None else None,
                )
        except (OSError, TimeoutError) as e:
            reason = failure_reason(e) if isinstance(e, ssl.SSLError) else None
            self._open_failed(cluster, sink, isinstance(e, TimeoutError), reason, pending=pending)
            return
        conn.made_with = tls
        if tls is not None:
            reason = self._verify(conn, tls)
            if reason is not None:
                conn.close()  # its connection_lost gives the connection slot back
                self._open_failed(cluster, sink, False, reason, slot=False, pending=pending)
                return
        self.stats.cluster(cluster.name).upstream_cx_total += 1
        if pending:
            cluster.breakers.release_pending()
        sink.on_connection(conn)

    def _verify(self, conn: UpstreamConnection, tls: UpstreamTls) -> str | None:
        """None when the server is one of the identities translation expects
        (its service accounts; OpenSSL has checked the chain), else why not."""
        assert conn.transport is not None
        sans = peer_uri_sans(conn.transport.get_extra_info("ssl_object"))
        reason = check_sans(sans, tls.settings.sans)
        conn.peer_principal = sans[0] if sans else None
        stats = self.stats.cluster(conn.cluster.name)
        stats.ssl__handshake += 1
        if reason is None:
            conn.tls = True
        else:
            stats.ssl__fail_verify_san += 1
        return reason

    def _open_failed(
        self,
        cluster: Cluster,
        sink: ResponseSink,
        timed_out: bool,
        reason: str | None,
        slot: bool = True,
        pending: bool = True,
    ) -> None:
        """`slot`: the connection slot is still held (no connection was made)."""
        if slot:
            cluster.breakers.release_connection()
        if pending:
            cluster.breakers.release_pending()
        stats = self.stats.cluster(cluster.name)
        stats.upstream_cx_connect_fail += 1
        if timed_out:
            stats.upstream_cx_connect_timeout += 1
        if reason is not None:
            stats.ssl__connection_error += 1
        sink.on_connect_failure(timed_out, reason)

    def _arm_sweeper(self) -> None:
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle longer than their cluster's idle_timeout."""
        self._sweeper = None
        now = MONOTONIC()
        for idle in self.idle.values():
            for conn in list(idle):
                timeout = conn.cluster.spec.pool.idle_timeout
                if not conn.alive or (timeout is not None and now - conn.idle_since > timeout):
                    if conn.alive:
                        self.stats.cluster(conn.cluster.name).upstream_cx_idle_timeout += 1
                    idle.remove(conn)
                    conn.close()
        if any(self.idle.values()):
            self._arm_sweeper()

    def close(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()
        self.h2.close()
        for task in self.connecting:
            task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
