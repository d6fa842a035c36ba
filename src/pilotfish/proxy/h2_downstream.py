"""Downstream HTTP/2 connections: one Exchange per stream.

A `Downstream` that sees the HTTP/2 connection preface as a connection's
first bytes (prior-knowledge h2c, or ALPN `h2` / `istio-h2` under TLS, whose
clients send the same preface) hands its transport to an `H2Downstream`. Its
codec (protocol/http2) turns the client's frames into per-stream events; each
stream is an `H2Stream`, which is to its Exchange what a `Downstream` is to an
HTTP/1.1 one: where the request comes from, and (as its ResponseWriter) where
the response goes.

Flow control both ways: a request's DATA is acknowledged (WINDOW_UPDATE) only
once the exchange has taken it, and not while the exchange holds the body
back (pause_body), so a client can never have more than a window in flight
per stream; response bytes beyond the client's window wait in the codec, and
a stream with more than RESPONSE_HIGH_WATER waiting stops reading its
upstream until the client opens the window again. A client that resets a
stream is a downstream lost (DC); an exchange cut short resets its stream.
On drain the connection sends GOAWAY and closes once its streams are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from pilotfish.proxy import filters
from pilotfish.proxy.exchange import Exchange
from pilotfish.proxy.listeners import CompiledListener
from pilotfish.proxy.protocol.http1 import EndOfMessage, Header, Headers
from pilotfish.proxy.protocol.http2 import (
    INTERNAL_ERROR,
    H2Event,
    H2Limits,
    H2ServerCodec,
    StreamData,
    StreamEnd,
    StreamHead,
    StreamReset,
    Terminated,
    WindowOpened,
)
from pilotfish.proxy.server import check_exchange

if TYPE_CHECKING:
    from pilotfish.proxy.server import Downstream, Runtime

log = logging.getLogger("pilotfish.proxy")
DELAYED_CLOSE_S = 1.0  # Envoy's delayed_close_timeout
RESPONSE_HIGH_WATER = 64 * 1024  # response bytes a stream holds before its upstream pauses
STATS_PREFIX = "http2."  # Envoy roots the downstream codec's stats there


class H2Stream:
    """One request/response on an HTTP/2 connection, as its Exchange sees it."""

    express = False  # a response head is rebuilt as HTTP/2 fields, never spliced

    def __init__(self, conn: H2Downstream, stream_id: int) -> None:
        self.conn, self.stream_id = conn, stream_id
        self.runtime, self.listener, self.stats = conn.runtime, conn.listener, conn.stats
        self.peer, self.peer_address = conn.peer, conn.peer_address
        self.local_address, self.peer_principal = conn.local_address, conn.peer_principal
        self.mtls, self.mesh_peer, self.scheme = conn.mtls, conn.mesh_peer, conn.scheme
        self.filter_view: filters.Connection | None = None
        self.exchange: Exchange | None = None
        self.body_paused = False
        self.unacked = 0  # request bytes taken while paused: acknowledged on resume
        self.upstream_paused = False
        self.moved = 0  # bytes of the exchange moved either way, when the sweep last saw a change
        self.moved_at = time.monotonic()

    def __repr__(self) -> str:
        return f"<H2Stream {self.stream_id} of {self.conn!r}>"

    @property
    def writer(self) -> H2Stream:
        return self

    # -- ResponseWriter -------------------------------------------------------------------

    def head(self, status: int, headers: Headers, chunked: bool) -> bytes:
        codec = self.conn.codec
        codec.send_head(self.stream_id, status, headers, end=False)
        return codec.data_to_send()

    def data(self, data: bytes, chunked: bool) -> bytes:
        codec = self.conn.codec
        codec.send_data(self.stream_id, data)
        if codec.pending(self.stream_id) > RESPONSE_HIGH_WATER:
            self.pause_upstream(True)
        return codec.data_to_send()

    def end(self, trailers: tuple[Header, ...], chunked: bool) -> bytes:
        codec = self.conn.codec
        codec.send_end(self.stream_id, trailers)
        return codec.data_to_send()

    def local_reply(self, status: int, body: bytes, headers: Headers, close: bool) -> bytes:
        """The same response error_response gives an HTTP/1.1 client."""
        codec = self.conn.codec
        fields: Headers = [(b"content-length", b"%d" % len(body))]
        if body:
            fields.append((b"content-type", b"text/plain"))
        codec.send_head(self.stream_id, status, fields + headers, end=not body)
        if body:
            codec.send_data(self.stream_id, body)
            codec.send_end(self.stream_id)
        return codec.data_to_send()

    def informational(self) -> bytes:
        return b""  # requests on a stream never say Expect (protocol/http2.request_head)

    # -- what the exchange calls on its downstream ----------------------------------------

    def write(self, data: bytes) -> None:
        self.conn.write(data)

    def close(self) -> None:
        """The exchange cut its response short: the stream is reset."""
        self.conn.codec.reset(self.stream_id, INTERNAL_ERROR)
        self.conn.flush()

    def pause_body(self) -> None:
        self.body_paused = True

    def resume_body(self) -> None:
        self.body_paused = False
        unacked, self.unacked = self.unacked, 0
        self.conn.codec.consumed(self.stream_id, unacked)
        self.conn.flush()

    def exchange_done(self, ex: Exchange, now: float) -> None:
        self.conn.stream_done(self)

    def took(self, size: int) -> None:
        """`size` request bytes went to the exchange."""
        if self.body_paused:
            self.unacked += size
        else:
            self.conn.codec.consumed(self.stream_id, size)

    def idle_for(self, exchange: Exchange, now: float) -> float:
        """How long no byte of the stream moved, as the timer sweep sees it."""
        moved = exchange.request_bytes + exchange.response_bytes + exchange.responding
        if moved != self.moved:
            self.moved, self.moved_at = moved, now
        return now - self.moved_at

    def pause_upstream(self, paused: bool) -> None:
        conn = self.exchange.conn if self.exchange is not None else None
        if conn is None or paused == self.upstream_paused:
            return
        self.upstream_paused = paused
        if paused:
            conn.pause_reading()
        else:
            conn.resume_reading()


class H2Downstream(asyncio.Protocol):
    """One client's HTTP/2 connection; streams run side by side."""

    def __init__(self, runtime: Runtime, listener: CompiledListener) -> None:
        self.runtime, self.listener = runtime, listener
        http = listener.http
        self.stats = runtime.stats.http(http.stat_prefix or listener.name)
        limits = H2Limits(max_header_list_size=http.max_request_headers)
        self.codec = H2ServerCodec(limits, runtime.stats.network, STATS_PREFIX)
        self.transport: asyncio.Transport | None = None
        self.outgoing: list[bytes] = []  # written, not yet sent: see write
        self.streams: dict[int, H2Stream] = {}
        self.peer = "-"
        self.peer_address: str | None = None
        self.local_address: str | None = None
        self.peer_principal: str | None = None
        self.mtls = self.mesh_peer = False
        self.scheme = b"http"  # the connection's, from the Downstream it takes over
        self.writing_paused = False
        self.going_away = False  # GOAWAY sent: close once the streams are done
        self.idle_since = time.monotonic()
        self.listener_stats = runtime.stats.listener("-")
        self.requests = 0

    def __repr__(self) -> str:
        return f"<H2Downstream {self.peer} on {self.listener.name} streams={len(self.streams)}>"

    def take_over(self, down: Downstream, data: bytes) -> None:
        """Become the protocol of `down`'s connection, whose first bytes are `data`."""
        assert down.transport is not None
        self.transport = down.transport
        self.peer, self.peer_address = down.peer, down.peer_address
        self.local_address, self.peer_principal = down.local_address, down.peer_principal
        self.mtls, self.mesh_peer, self.scheme = down.mtls, down.mesh_peer, down.scheme
        self.listener_stats = down.listener_stats
        self.runtime.downstreams.discard(down)
        self.runtime.downstreams.add(self)
        self.stats.downstream_cx_http2_total += 1
        self.stats.downstream_cx_http2_active += 1
        down.transport.set_protocol(self)
        self.flush()
        self.data_received(data)

    # -- asyncio.Protocol -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        events = self.codec.receive(data)
        for event in events:
            try:
                self.handle(event)
            except Exception:
                # A defect met by one exchange ends its stream, not the
                # connection and every stream multiplexed on it.
                stream_id = getattr(event, "stream_id", 0)
                log.exception("HTTP/2 stream %d on %r failed", stream_id, self)
                self.fail_stream(stream_id)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.downstream_cx_active -= 1
        self.stats.downstream_cx_http2_active -= 1
        self.stats.downstream_cx_destroy += 1
        self.listener_stats.downstream_cx_active -= 1
        self.listener_stats.downstream_cx_destroy += 1
        self.runtime.downstreams.discard(self)
        for stream in list(self.streams.values()):
            if stream.exchange is not None:
                stream.exchange.downstream_lost()
        self.streams.clear()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.codec.set_blocked(True)
        for stream in self.streams.values():
            stream.pause_upstream(True)

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.codec.set_blocked(False)
        self.window_opened()

    # -- streams --------------------------------------------------------------------------

    def handle(self, event: H2Event) -> None:
        kind = event.__class__
        if kind is StreamHead:
            assert isinstance(event, StreamHead)
            self.begin(event)
        elif kind is StreamData:
            assert isinstance(event, StreamData)
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.exchange is not None:
                stream.exchange.request_body(event.data)
                stream.took(len(event.data))
            else:
                self.codec.consumed(event.stream_id, len(event.data))
        elif kind is StreamEnd:
            assert isinstance(event, StreamEnd)
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.exchange is not None:
                stream.exchange.request_end(EndOfMessage(event.trailers))
        elif kind is StreamReset:
            assert isinstance(event, StreamReset)
            self.reset_by_client(event.stream_id)
        elif kind is WindowOpened:
            self.window_opened()
        else:
            assert isinstance(event, Terminated)
            self.terminated(event)

    def begin(self, event: StreamHead) -> None:
        self.requests += 1
        self.idle_since = 0.0
        stream = self.streams[event.stream_id] = H2Stream(self, event.stream_id)
        exchange = stream.exchange = Exchange(stream, event.head)
        exchange.start()

    def fail_stream(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        self.codec.reset(stream_id, INTERNAL_ERROR)
        if stream is not None and stream.exchange is not None:
            with contextlib.suppress(Exception):  # already failing: finish what it holds
                stream.exchange.downstream_lost()

    def reset_by_client(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None and stream.exchange is not None:
            self.stats.downstream_rq_rx_reset += 1
            stream.exchange.downstream_lost()

    def window_opened(self) -> None:
        for stream in self.streams.values():
            low = self.codec.pending(stream.stream_id) <= RESPONSE_HIGH_WATER // 2
            if stream.upstream_paused and not self.writing_paused and low:
                stream.pause_upstream(False)

    def terminated(self, event: Terminated) -> None:
        """A GOAWAY, either way. An error ends every stream at once."""
        if event.error_code or self.codec.terminated is not None:
            self.stats.downstream_cx_protocol_error += 1
            self.flush()
            self.close_after_goaway()
            return
        self.going_away = True
        if not self.streams:
            self.close()

    def close_after_goaway(self) -> None:
        """As Envoy's delayed close: the GOAWAY goes with a FIN, and what the
        client still sends is read and dropped for a moment before the close,
        so that a close with unread bytes (a reset) cannot overtake the
        GOAWAY. A client that does not read would never see it: abort."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.writing_paused:
            transport.abort()
            return
        for stream in list(self.streams.values()):
            if stream.exchange is not None:
                stream.exchange.downstream_lost()
        self.streams.clear()
        self.send_out()
        if transport.can_write_eof():
            transport.write_eof()
        self.runtime.loop.call_later(DELAYED_CLOSE_S, self.close)

    def stream_done(self, stream: H2Stream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        if stream.exchange is not None and not stream.exchange.body_done:
            # Answered before the whole request came: the rest is not wanted
            # (RFC 9113 8.1, RST_STREAM NO_ERROR after a complete response).
            self.codec.abort_request(stream.stream_id)
        self.flush()
        if not self.streams:
            self.idle_since = time.monotonic()
            if self.going_away:
                self.close()

    # -- the connection -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Sent once the loop's ready callbacks have run: the streams answered
        in one iteration (each by its own upstream's read) share one send
        instead of a syscall each."""
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            if not self.outgoing:
                self.runtime.loop.call_soon(self.send_out)
            self.outgoing.append(data)

    def send_out(self) -> None:
        data = b"".join(self.outgoing)
        self.outgoing.clear()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    def flush(self) -> None:
        self.write(self.codec.data_to_send())

    def close(self) -> None:
        if self.transport is not None:
            self.send_out()
            self.transport.close()

    def check_timers(self, now: float) -> None:
        """Called by the runtime's sweep: drain with GOAWAY (the proxy's, or
        this listener's when an update replaced it, as Envoy drains them), the
        idle timeout, request and stream idle timeouts, route timeouts that are near."""
        stale = self.runtime.config.snapshot.listeners.get(self.listener.name) is not self.listener
        if (self.runtime.draining or stale) and not self.going_away:
            self.going_away = True
            self.codec.goaway()
            self.flush()
        http = self.listener.http
        if not self.streams:
            since, limit = self.idle_since, http.idle_timeout
            idle = bool(since and limit and now - since > limit)
            if self.going_away or idle:
                if idle:
                    self.stats.downstream_cx_idle_timeout += 1
                self.close()
            return
        for stream in list(self.streams.values()):
            if stream.exchange is not None:
                check_exchange(stream.exchange, http, self.stats, stream.idle_for, now, 0.5)
