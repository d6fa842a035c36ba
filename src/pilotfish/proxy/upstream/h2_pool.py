"""Upstream HTTP/2: connections that carry many exchanges at once, one stream
each (the asyncio shell over h2_core.H2Client).

A cluster whose HttpProtocolOptions say HTTP/2 gets from `Pool.request` a
stream on a connection to the host that has room (the peer's
SETTINGS_MAX_CONCURRENT_STREAMS, capped by the cluster's
max_concurrent_streams); with none, the request is pending (Envoy's
max_pending_requests) while another connection opens, within
max_connections. Envoy's max_requests already counts every stream (the
exchange takes a request slot), as Envoy counts it for HTTP/2.

Plaintext is HTTP/2 with prior knowledge (h2c). Under TLS, the connection is
HTTP/2 when ALPN selected `h2` or `istio-h2`; a peer that selects neither
(a sidecar that serves HTTP/1.1 inside mTLS) keeps the HTTP/1.1 connection,
and its host is asked HTTP/1.1 from then on, rather than failing every request.

To its exchange, a stream is an UpstreamConnection: `send`, `write`,
`close`, `pause_reading`; `Pool.release` ends the stream, not the connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from pilotfish.proxy.protocol.express import ExpressResponse
from pilotfish.proxy.protocol.http1 import ProtocolError, ResponseEvent
from pilotfish.proxy.stats import ClusterStats
from pilotfish.proxy.upstream import Cluster, Host
from pilotfish.proxy.upstream.pool import Pool, ResponseSink, UpstreamConnection
from pilotfish.proxy.upstream.spec import UpstreamHttp

if TYPE_CHECKING:  # imported with the first HTTP/2 connection: h2, hpack and hyperframe
    # cost every sidecar ~1.5 MiB, and one whose clusters all speak HTTP/1.1 never needs them
    from pilotfish.proxy.upstream.h2_core import Delivery

H2_ALPN = frozenset({"h2", "istio-h2"})


class H2Stream(UpstreamConnection):
    """One exchange's stream on an H2Connection."""

    def __init__(self, link: H2Connection) -> None:
        super().__init__(link.pool.pool, link.host, link.cluster)
        # Set here, not as a class attribute: the compiled base reads its own
        # slot, which an uncompiled subclass's class attribute does not change.
        self.multiplexed = True
        self.link = link
        self.sid = 0  # until the request starts
        self.tls, self.made_with, self.peer_principal = link.tls, link.made_with, link.principal
        self.blocked = False  # its client was paused for the peer's window
        self.ended = False  # the connection is done with it

    def __repr__(self) -> str:
        return f"<H2Stream {self.host} #{self.sid}>"

    def send(self, sink: ResponseSink, method: bytes, data: bytes) -> None:
        self.sink = sink
        self.requests += 1
        self.link.start(self, data)

    def write(self, data: bytes) -> None:
        if self.sid:
            self.link.body(self, data)

    def detach(self) -> None:
        self.sink = None

    def close(self) -> None:
        """The exchange gives up on the stream (reset, timeout, client gone)."""
        self.reusable = False
        self.sink = None
        self.link.end(self, reset=True)

    def pause_reading(self) -> None:
        self.link.pause(self, True)

    def resume_reading(self) -> None:
        self.link.pause(self, False)

    @property
    def alive(self) -> bool:
        return self.reusable and self.link.alive

    def deliver(self, payload: list[ResponseEvent] | ProtocolError) -> None:
        sink = self.sink
        if sink is None:
            return
        if isinstance(payload, ProtocolError):
            self._fail(payload)
        elif payload:
            sink.on_response(payload)


class H2Connection:
    """One upstream HTTP/2 connection, the protocol of its transport once
    the connection (and its TLS) is up."""

    def __init__(self, pool: H2Pool, conn: UpstreamConnection) -> None:
        self.pool, self.h1 = pool, conn
        self.host, self.cluster = conn.host, conn.cluster
        self.tls, self.made_with, self.principal = conn.tls, conn.made_with, conn.peer_principal
        spec = conn.cluster.spec.pool
        self.max_requests = spec.max_requests_per_connection
        self.idle_timeout = spec.idle_timeout
        self.idle_timer: asyncio.TimerHandle | None = None
        from pilotfish.proxy.upstream.h2_core import H2Client

        scheme = b"https" if conn.made_with is not None else b"http"
        self.core = H2Client(scheme, spec.max_concurrent_streams)
        self.streams: dict[int, H2Stream] = {}
        self.started = 0
        self.flush_pending = False  # a send_out is scheduled: see flush
        transport = conn.transport
        assert transport is not None
        self.transport: asyncio.Transport = transport
        transport.set_protocol(self)  # type: ignore[arg-type]
        self.flush()
        self._arm_idle()

    def __repr__(self) -> str:
        return f"<H2Connection {self.host} streams={len(self.streams)}>"

    @property
    def alive(self) -> bool:
        return not self.transport.is_closing() and self.core.broken is None

    @property
    def capacity(self) -> int:
        if not self.alive:
            return 0
        room = self.core.capacity
        if self.max_requests is not None:
            room = min(room, self.max_requests - self.started - self.core.reserved)
        return room

    def attach(self) -> H2Stream:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        self.core.reserved += 1
        return H2Stream(self)

    def flush(self) -> None:
        """Sends what the codec holds once the loop's ready callbacks have run:
        the streams started or read in one iteration share one send."""
        if not self.flush_pending:
            self.flush_pending = True
            asyncio.get_running_loop().call_soon(self.send_out)

    def send_out(self) -> None:
        self.flush_pending = False
        data = self.core.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    # -- from the exchanges ---------------------------------------------------------------

    def start(self, stream: H2Stream, data: bytes) -> None:
        """A stream taken while the connection was fine, started once it no
        longer is (lost, or the peer's GOAWAY came in between), fails as Envoy's would."""
        if not self.alive or self.core.last_stream_id is not None:
            self.end(stream, reset=False)
            from pilotfish.proxy.upstream.h2_core import refused

            lost = ProtocolError("upstream connection reset", 503, "UC")
            self._fail_soon(stream, lost if not self.alive else refused())
            return
        self.started += 1
        sid, error = self.core.send_request(data)
        stream.sid = sid
        self.streams[sid] = stream
        # At once, right after the GOAWAY check above: deferred to the end of
        # the turn, calls were lost to a grpcio server draining with
        # max_connection_age (test_e2e_h2_upstream's GOAWAY test).
        self.send_out()
        self._after_send(stream, error)

    def body(self, stream: H2Stream, data: bytes) -> None:
        error = self.core.send_body(stream.sid, data)
        self.flush()
        self._after_send(stream, error)

    def _after_send(self, stream: H2Stream, error: ProtocolError | None) -> None:
        if error is not None:
            self.streams.pop(stream.sid, None)
            self._fail_soon(stream, error)
        elif self.core.blocked(stream.sid) and not stream.blocked and stream.sink is not None:
            stream.blocked = True
            stream.sink.on_flow(True)

    @staticmethod
    def _fail_soon(stream: H2Stream, error: ProtocolError) -> None:
        """Fail a stream from the exchange's own call: in the next loop turn,
        not inside the exchange's command that is sending."""
        asyncio.get_running_loop().call_soon(stream.deliver, error)

    def end(self, stream: H2Stream, reset: bool) -> None:
        """The exchange is done with `stream`: reset it if it is still open."""
        if stream.ended:
            return
        stream.ended = True
        if not stream.sid:
            self.core.reserved -= 1
        elif self.streams.pop(stream.sid, None) is not None:
            if reset:
                self.core.reset(stream.sid)
                self.pool.stats(self.cluster).upstream_rq_tx_reset += 1
            else:
                self.core.forget(stream.sid)
            self.flush()
        self.pool.drain(self.host)
        self._close_if_spent()

    def pause(self, stream: H2Stream, paused: bool) -> None:
        if stream.sid:
            self.core.pause(stream.sid, paused)
            self.flush()

    # -- from the peer --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass  # made before it was handed over (see __init__)

    def data_received(self, data: bytes) -> None:
        deliveries = self.core.receive(data)
        self.flush()
        if self.core.broken is not None:
            self.pool.stats(self.cluster).upstream_cx_protocol_error += 1
            self.close()
        self._deliver(deliveries)
        self._unblock()
        self.pool.drain(self.host)
        self._close_if_spent()

    def _deliver(self, deliveries: list[Delivery]) -> None:
        for sid, payload in deliveries:
            stream = self.streams.get(sid)
            if stream is None:
                continue
            if isinstance(payload, ProtocolError):
                del self.streams[sid]
            stream.deliver(payload)

    def _unblock(self) -> None:
        for sid, stream in list(self.streams.items()):
            if stream.blocked and not self.core.blocked(sid):
                stream.blocked = False
                if stream.sink is not None:
                    stream.sink.on_flow(False)

    def _close_if_spent(self) -> None:
        """A connection the peer is draining (GOAWAY), or that carried its
        max_requests_per_connection, closes once its last stream is done;
        another waits idle_timeout for its next stream."""
        if self.streams or self.core.reserved or self.transport.is_closing():
            return
        spent = self.max_requests is not None and self.started >= self.max_requests
        if spent:
            self.pool.stats(self.cluster).upstream_cx_max_requests += 1
        if spent or self.core.last_stream_id is not None:
            self.close()
        else:
            self._arm_idle()

    def _arm_idle(self) -> None:
        if self.idle_timeout is not None and self.idle_timer is None:
            loop = asyncio.get_running_loop()
            self.idle_timer = loop.call_later(self.idle_timeout, self._idle_elapsed)

    def _idle_elapsed(self) -> None:
        """Envoy's idle_timeout: no stream for that long, GOAWAY and close."""
        self.idle_timer = None
        if self.streams or self.core.reserved or self.transport.is_closing():
            return
        self.pool.stats(self.cluster).upstream_cx_idle_timeout += 1
        self.core.close()
        self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.pool.forget(self)
        streams, self.streams = list(self.streams.values()), {}
        error = ProtocolError("upstream connection reset", 503, "UC")
        for stream in streams:
            stream.deliver(error)
        self.h1.sink = None
        self.h1.connection_lost(exc)  # the pool's bookkeeping of a closed connection

    def pause_writing(self) -> None:
        for stream in list(self.streams.values()):
            if stream.sink is not None:
                stream.sink.on_flow(True)

    def resume_writing(self) -> None:
        for stream in list(self.streams.values()):
            if stream.sink is not None and not stream.blocked:
                stream.sink.on_flow(False)

    def close(self) -> None:
        self.send_out()  # the GOAWAY or resets the codec holds go first
        self.transport.close()


class H2Pool:
    """The HTTP/2 connections of a Pool, per host, and the requests waiting
    for room on one."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.conns: dict[Host, list[H2Connection]] = {}
        self.waiting: dict[Host, deque[tuple[ResponseSink, Cluster]]] = {}
        self.opening: dict[Host, int] = {}
        self.http1_only: set[Host] = set()  # their TLS peers chose HTTP/1.1 in ALPN

    def __repr__(self) -> str:
        return f"<H2Pool conns={sum(map(len, self.conns.values()))}>"

    def stats(self, cluster: Cluster) -> ClusterStats:
        return self.pool.stats.cluster(cluster.name)

    def handles(self, host: Host, cluster: Cluster, h2_client: bool = False) -> bool:
        """Whether a request to `host` goes HTTP/2: the cluster says so, or it
        says use_downstream_protocol_config and the client spoke HTTP/2."""
        wanted = cluster.spec.pool.http
        if wanted is UpstreamHttp.DOWNSTREAM:
            return h2_client and host not in self.http1_only
        return wanted is UpstreamHttp.HTTP2 and host not in self.http1_only

    def request(self, host: Host, cluster: Cluster, sink: ResponseSink) -> bool:
        conn = self._room(host, cluster)
        if conn is not None:
            sink.on_connection(conn.attach())
            return True
        if not cluster.breakers.try_acquire_pending():
            return False
        self.stats(cluster).upstream_rq_pending_total += 1
        self.waiting.setdefault(host, deque()).append((sink, cluster))
        self._grow(host, cluster)
        return True

    def _room(self, host: Host, cluster: Cluster) -> H2Connection | None:
        for conn in self.conns.get(host, ()):
            if conn.capacity > 0 and (
                conn.cluster is cluster or self.pool._still_fits(conn.h1, host, cluster)
            ):
                return conn
        return None

    def _grow(self, host: Host, cluster: Cluster) -> None:
        """Open one more connection for the waiting requests, unless one is
        opening already (its SETTINGS will tell how many it takes) or the
        circuit breakers say no (then they wait for room)."""
        if self.opening.get(host) or not self.waiting.get(host):
            return
        if cluster.breakers.try_acquire_connection():
            self.opening[host] = self.opening.get(host, 0) + 1
            opener = _Opener(self, host)
            self.pool._connect(host, cluster, opener, pending=False, kind=_Opening)

    def drain(self, host: Host) -> None:
        """Give the waiting requests the room there is, and ask for more."""
        queue = self.waiting.get(host)
        while queue:
            sink, cluster = queue[0]
            conn = self._room(host, cluster)
            if conn is None:
                self._grow(host, cluster)
                return
            queue.popleft()
            cluster.breakers.release_pending()
            sink.on_connection(conn.attach())

    def release(self, stream: UpstreamConnection) -> None:
        """The exchange is through with its stream; the connection goes on."""
        assert isinstance(stream, H2Stream)
        stream.link.end(stream, reset=False)

    def cancel(self, host: Host, sink: ResponseSink) -> bool:
        queue = self.waiting.get(host)
        for entry in queue or ():
            if entry[0] is sink:
                queue.remove(entry)  # type: ignore[union-attr]
                entry[1].breakers.release_pending()
                return True
        return False

    def opened(self, host: Host, conn: UpstreamConnection) -> None:
        assert isinstance(conn, _Opening)
        if conn.transport is None or conn.transport.is_closing():
            self.failed(host, False, None)  # closed by the peer as soon as made
            return
        self.opening[host] -= 1
        ssl_object = conn.transport.get_extra_info("ssl_object") if conn.transport else None
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if ssl_object is not None and alpn not in H2_ALPN:
            self._fall_back(host, conn)
            return
        self.stats(conn.cluster).upstream_cx_http2_total += 1
        link = H2Connection(self, conn)
        self.conns.setdefault(host, []).append(link)
        early = conn.adopt()
        if early:
            link.data_received(early)
        self.drain(host)

    def _fall_back(self, host: Host, conn: _Opening) -> None:
        """The TLS peer chose HTTP/1.1: the waiting requests go that way."""
        self.http1_only.add(host)
        conn.adopt()
        self.pool.release(conn)
        queue = self.waiting.pop(host, deque())
        for sink, cluster in queue:
            cluster.breakers.release_pending()
            if not self.pool.request(host, cluster, sink):
                sink.on_connect_failure(False, "overflow")

    def failed(self, host: Host, timed_out: bool, reason: str | None) -> None:
        """A connection could not open: with none other to wait for, the
        waiting requests fail as Envoy's pending requests do."""
        self.opening[host] -= 1
        if self.opening[host] or self.conns.get(host):
            return
        for sink, cluster in self.waiting.pop(host, deque()):
            cluster.breakers.release_pending()
            sink.on_connect_failure(timed_out, reason)

    def forget(self, conn: H2Connection) -> None:
        conns = self.conns.get(conn.host)
        if conns and conn in conns:
            conns.remove(conn)
        self.drain(conn.host)

    def close(self) -> None:
        for conns in self.conns.values():
            for conn in list(conns):
                conn.close()


class _Opening(UpstreamConnection):
    """A connection opened for HTTP/2: the peer's first frames (its SETTINGS)
    may come before the pool has it, and are kept for the H2Connection."""

    def __init__(self, pool: Pool, host: Host, cluster: Cluster) -> None:
        super().__init__(pool, host, cluster)
        self.early: bytearray | None = bytearray()

    def data_received(self, data: bytes) -> None:
        if self.early is None:
            super().data_received(data)
        else:
            self.early += data

    def adopt(self) -> bytes:
        """What came so far; from now on, bytes go the HTTP/1.1 way."""
        early, self.early = bytes(self.early or b""), None
        return early


class _Opener:
    """What Pool.connect reports an HTTP/2 connection's opening to."""

    def __init__(self, pool: H2Pool, host: Host) -> None:
        self.pool, self.host = pool, host

    def on_connection(self, conn: UpstreamConnection) -> None:
        self.pool.opened(self.host, conn)

    def on_connect_failure(self, timed_out: bool, reason: str | None = None) -> None:
        self.pool.failed(self.host, timed_out, reason)

    def on_response(self, events: list[ResponseEvent] | ExpressResponse) -> None:
        raise AssertionError("an opening connection carries no request")

    def on_upstream_error(self, error: ProtocolError) -> None:
        pass  # nothing was sent on it

    def on_flow(self, paused: bool) -> None:
        pass
