"""Downstream HTTP/1.1 connections, and what every connection of the proxy shares.

A `Downstream` feeds the client's bytes to protocol/http1's RequestParser and
hands the events to one `Exchange` at a time. When a request has been read
the parser holds any pipelined bytes and reading stops, until the response is
complete; then the next request starts. Bad bytes are answered (400, 431...)
and the connection closed; slow headers get 408; an idle connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, BinaryIO, Final

from pilotfish.proxy import filters
from pilotfish.proxy.accesslog import AccessLogWriter, AccessRecord
from pilotfish.proxy.config import ProxyConfig
from pilotfish.proxy.connect import connect_tunnel
from pilotfish.proxy.exchange import Exchange
from pilotfish.proxy.forwarding import XFF_LINE
from pilotfish.proxy.listeners import CompiledListener, HttpManager
from pilotfish.proxy.metric_overrides import RequestAttributes
from pilotfish.proxy.protocol.detect import H2_PREFACE as PREFACE  # h2 itself loads later
from pilotfish.proxy.protocol.express import ExpressRequest, encode_lines, parse_request
from pilotfish.proxy.protocol.http1 import (
    EndOfMessage,
    Headers,
    ProtocolError,
    RequestEvent,
    RequestHead,
    RequestParser,
    Tunnel,
    error_response,
    get_header,
)
from pilotfish.proxy.response_writer import H1_WRITER
from pilotfish.proxy.stats import HttpStats, StatsRegistry, count_status, listener_stat_name
from pilotfish.proxy.tap import Tap
from pilotfish.proxy.telemetry import (
    UNKNOWN_SERVICE,
    UNKNOWN_WORKLOAD,
    ServiceInfo,
    Telemetry,
    WorkloadInfo,
    peer_from_header,
    service_from_authority,
)
from pilotfish.proxy.tls import TlsContexts, peer_uri_sans
from pilotfish.proxy.tracing.tracer import Tracer
from pilotfish.proxy.upstream.pool import MONOTONIC, Pool

if TYPE_CHECKING:
    from pilotfish.proxy.h2_downstream import H2Downstream

MAX_HELD_BYTES: Final = 64 * 1024  # pipelined bytes read ahead before reading pauses
TIMER_SWEEP_S: Final = 0.25  # resolution of the 408, idle and outlier-interval timers


@dataclass
class Runtime:
    """What every connection of the proxy shares."""

    config: ProxyConfig
    pool: Pool
    telemetry: Telemetry
    stats: StatsRegistry
    peer_headers: Headers = field(default_factory=list)  # this proxy's metadata exchange
    peer_lines: bytes = field(init=False)  # the same, as header lines (see protocol/express)
    peer_lines_xff: bytes = field(init=False)  # and the x-forwarded-for line's start (forwarding)
    access_logs: dict[str, AccessLogWriter] = field(default_factory=dict)
    files: list[BinaryIO] = field(default_factory=list)
    draining: bool = False
    listeners: dict[str, CompiledListener] = field(default_factory=dict)  # the ones in force
    # Cached: on 3.11 asyncio.get_running_loop() costs a getpid() system call.
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    downstreams: set[Downstream | H2Downstream] = field(default_factory=set)
    ticker: asyncio.TimerHandle | None = None
    tls: TlsContexts = field(default_factory=lambda: TlsContexts(None))
    tap: Tap | None = None  # `pilotfish tap`'s view of finished requests
    tracer: Tracer | None = None  # spans of listeners that trace (proxy/tracing)
    # The snapshot's services as a plain dict, read per request (a get on its
    # MappingProxyType is a generic method call); copied again when a CDS
    # update replaces them (see service_of), so one copy, of the current ones.
    services_seen: Mapping[str, ServiceInfo] | None = field(init=False, repr=False)
    services: dict[str, ServiceInfo] = field(default_factory=dict, init=False, repr=False)
    # The last Host header read for a destination service, and its service.
    authority_seen: bytes = field(init=False, repr=False)
    authority_service: ServiceInfo = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.peer_lines = encode_lines(self.peer_headers)
        self.peer_lines_xff = self.peer_lines + XFF_LINE
        # Here, not as the field's default: compiled, a dataclass field that
        # is not an __init__ argument gets no default.
        self.services_seen = None
        # A true entry: no Host header is no service.
        self.authority_seen, self.authority_service = b"", UNKNOWN_SERVICE

    @property
    def connections(self) -> int:
        return len(self.downstreams)

    def start(self) -> None:
        """Begin the once-a-second sweep of connection timers."""
        self.ticker = self.loop.call_later(TIMER_SWEEP_S, self.tick)

    def tick(self) -> None:
        """Connection timers, and outlier detection's interval (un-ejections)."""
        now = time.monotonic()
        for down in list(self.downstreams):
            down.check_timers(now)
        for cluster in self.config.snapshot.clusters.clusters.values():
            deadline = cluster.next_deadline()
            if deadline is not None and deadline <= now:
                cluster.tick(now)
        self.ticker = self.loop.call_later(TIMER_SWEEP_S, self.tick)

    def observe(self, ex: Exchange, now: float) -> None:
        """Golden metrics, stats and access log lines for an exchange finished
        at `now` (time.monotonic())."""
        elapsed = now - ex.started
        listener = ex.down.listener
        service = UNKNOWN_SERVICE
        if ex.cluster is not None:
            service = self.service_of(ex.cluster.name)
        if service is UNKNOWN_SERVICE:
            service = self.service_by_authority(ex.authority)
        peer = peer_from_header(ex.peer_header) if ex.peer_header else UNKNOWN_WORKLOAD
        reporter = self.telemetry.inbound if listener.inbound else self.telemetry.outbound
        mtls = ex.down.mtls if listener.inbound else ex.upstream_tls
        code = ex.reported_grpc_status()  # Istio labels gRPC requests "grpc", with their status
        protocol, grpc_status = ("http", "") if code is None else ("grpc", str(code))
        if listener.http.metrics is None:
            reporter.record(
                peer, service, ex.status, ex.flags, elapsed * 1000.0, ex.request_bytes,
                ex.response_bytes, protocol, grpc_status, mtls,
            )  # fmt: skip
        else:
            reporter.record_overridden(
                listener.http.metrics, request_attributes(ex, peer),
                (peer, service, ex.status, ex.flags, protocol, grpc_status, mtls),
                elapsed * 1000.0, ex.request_bytes, ex.response_bytes,
            )  # fmt: skip
        http = ex.down.stats
        http.downstream_rq_total += 1
        if ex.status:
            count_status(http, ex.status)
        for path in listener.http.access_log_paths:
            self.access_log(path).log(access_record(ex, elapsed))
        if self.tap is not None and self.tap.filters:  # only while a tap runs
            self.tap.offer(access_record(ex, elapsed), listener.inbound, peer)
        tracing = listener.http.tracing
        if tracing is not None and self.tracer is not None:
            self.tracer.finish(ex, tracing, partial(access_record, ex, elapsed), elapsed)

    def service_of(self, cluster: str) -> ServiceInfo:
        """The destination service a cluster stands for, in the config in force."""
        services = self.config.snapshot.services
        if services is not self.services_seen:
            self.services_seen, self.services = services, dict(services)
        return self.services.get(cluster, UNKNOWN_SERVICE)

    def service_by_authority(self, authority: bytes) -> ServiceInfo:
        """service_from_authority, with the last authority's answer at hand:
        a run of requests to one host costs a bytes comparison, not a decode
        and a call through functools' cache. One entry, of a pure function."""
        if authority != self.authority_seen:
            self.authority_service = service_from_authority(authority.decode("latin-1"))
            self.authority_seen = authority
        return self.authority_service

    def access_log(self, path: str) -> AccessLogWriter:
        writer = self.access_logs.get(path)
        if writer is None:
            file = open(path, "ab")  # noqa: SIM115 - open for the proxy's lifetime
            self.files.append(file)
            writer = self.access_logs[path] = AccessLogWriter(file)
            writer.start()
        return writer

    def close(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
        for writer in self.access_logs.values():
            writer.flush()
        if self.tracer is not None:
            self.tracer.close()
        self.pool.close()


def request_attributes(ex: Exchange, peer: WorkloadInfo) -> RequestAttributes:
    """What Telemetry metric overrides may read of a request."""
    return RequestAttributes(
        host=ex.authority.decode("latin-1"),
        method=ex.method.decode("latin-1"),
        path=ex.original_path.decode("latin-1"),
        code=ex.status,
        header=partial(get_header, ex.headers),
        peer_label=peer.label,
        inbound=ex.down.listener.inbound,
    )


def access_record(ex: Exchange, elapsed: float) -> AccessRecord:
    def header(name: bytes) -> str | None:
        value = get_header(ex.headers, name)
        return None if value is None else value.decode("latin-1")

    generated = ex.generated_id
    return AccessRecord(
        start_time=time.time() - (time.monotonic() - ex.started),
        method=ex.method.decode("latin-1"),
        path=ex.original_path.decode("latin-1"),
        protocol=f"HTTP/{ex.head.version.decode()}",
        response_code=ex.status,
        response_flags=ex.flags,
        bytes_received=ex.request_bytes,
        bytes_sent=ex.response_bytes,
        duration=int(elapsed * 1000),
        x_forwarded_for=header(b"x-forwarded-for"),
        user_agent=header(b"user-agent"),
        request_id=generated.decode("latin-1") if generated else header(b"x-request-id"),
        authority=ex.authority.decode("latin-1"),
        upstream_host=str(ex.last_host) if ex.last_host is not None else None,
        upstream_cluster=ex.cluster.name if ex.cluster is not None else None,
        downstream_remote_address=ex.down.peer_address,
        downstream_local_address=ex.down.local_address,
        downstream_peer_uri_san=ex.down.peer_principal,
        upstream_transport_failure_reason=ex.transport_failure,
        route_name=ex.route.name if ex.route is not None and ex.route.name else None,
        response_code_details=ex.details,
        grpc_status=ex.reported_grpc_status(),
    )


def is_mesh_peer(listener: CompiledListener, transport: asyncio.BaseTransport) -> bool:
    """Whether a connection's client may say which workload it is with Istio's
    metadata-exchange headers (x-envoy-peer-metadata, -id), which label the
    golden metrics. The one place that decides it.

    Outbound, the client is the local app: never; the proxy strips what it
    sent and says who it is itself. Inbound, the client is another workload's
    sidecar: trusted, as Istio trusts these headers on plaintext mesh traffic.
    With mutual TLS this becomes "the peer presented a verified certificate"
    (`transport` will carry it); until then whoever can reach an inbound
    listener directly, bypassing its own sidecar, can still claim a name."""
    del transport  # what the mTLS check will read
    return listener.inbound


class Downstream(asyncio.Protocol):
    """One client connection; requests are answered one at a time, in order.
    One that opens with HTTP/2's preface goes to an H2Downstream (sniff)."""

    writer = H1_WRITER  # how its exchanges' responses are framed (response_writer.py)

    def __init__(self, runtime: Runtime, listener: CompiledListener) -> None:
        self.runtime, self.listener = runtime, listener
        http = listener.http
        self.stats = runtime.stats.http(http.stat_prefix or listener.name)
        self.listener_stats = runtime.stats.listener(
            listener_stat_name(listener.host, listener.port)
        )
        self.parser = RequestParser(http.max_request_headers)
        self.transport: asyncio.Transport | None = None
        self.peer = "-"
        self.peer_address: str | None = None
        self.local_address: str | None = None
        # Under mutual TLS, the client certificate's verified SPIFFE ID (its
        # first URI SAN): who is calling, for RBAC's authenticated principal,
        # the telemetry labels and the peer-metadata trust check. None in plaintext.
        self.peer_principal: str | None = None
        self.mtls = False  # the connection is TLS with a verified client certificate
        self.scheme = b"http"  # b"https" on TLS: the x-forwarded-proto its requests get
        self.exchange: Exchange | None = None
        self.mesh_peer = False  # may say who it is (is_mesh_peer), decided once connected
        self.requests = 0
        self.body_paused = False
        self.reading_paused = False
        self.held = 0  # bytes read past the current request (pipelined)
        self.early: list[bytes] = []  # those bytes, after an express request: not parsed yet
        self.dispatching = False  # inside dispatch: a finished exchange waits for it
        self.next_pending = False
        self.closed = False
        self.head_since = 0.0  # when the first byte of a request's head came; 0: none
        self.idle_since = 0.0  # when the connection last became idle; 0: busy
        # The sweep's view of the exchange in flight, for stream_idle_timeout.
        self.watched: Exchange | None = None
        self.moved = 0  # its bytes moved, both ways, when last seen changing
        self.moved_at = 0.0
        self.filter_view: filters.Connection | None = None  # what filters read of it, once
        self.sniffing = http.http2  # until the first bytes say HTTP/1.1 or HTTP/2
        self.sniffed = b""  # the start of HTTP/2's preface, until the rest comes
        # The listeners map in which this connection's listener was last found
        # in force (see stale): one map per connection, and a connection whose
        # listener was replaced closes after its next request.
        self.current_in: Mapping[str, CompiledListener] | None = None

    def __repr__(self) -> str:
        return f"<Downstream {self.peer} on {self.listener.name} requests={self.requests}>"

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        if peer:
            self.peer, self.peer_address = peer[0], f"{peer[0]}:{peer[1]}"
        if local:
            self.local_address = f"{local[0]}:{local[1]}"
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.scheme = b"https"
            sans = peer_uri_sans(ssl_object)
            self.mtls = bool(sans) or ssl_object.getpeercert() is not None
            self.peer_principal = sans[0] if sans else None
        self.mesh_peer = is_mesh_peer(self.listener, transport)
        self.stats.downstream_cx_total += 1
        self.stats.downstream_cx_active += 1
        self.listener_stats.downstream_cx_total += 1
        self.listener_stats.downstream_cx_active += 1
        self.runtime.downstreams.add(self)
        self.idle_since = time.monotonic()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stats.downstream_cx_active -= 1
        self.stats.downstream_cx_destroy += 1
        self.listener_stats.downstream_cx_active -= 1
        self.listener_stats.downstream_cx_destroy += 1
        self.runtime.downstreams.discard(self)
        if self.exchange is not None:
            self.exchange.downstream_lost()

    def data_received(self, data: bytes) -> None:
        if self.sniffing:
            sniffed = self.sniff(data)
            if sniffed is None:
                return
            data = sniffed
        if self.exchange is None and self.parser.idle:
            express = parse_request(data, self.parser.max_head)
            if express is not None:
                self.begin(express)
                return
        exchange = self.exchange
        if exchange is None:
            if not self.head_since:
                self.head_since = time.monotonic()
        elif exchange.express is not None:
            # The parser never saw the request in flight (it went the express
            # way), so it would start these bytes as a request now, answered
            # before or instead of that one: they wait for its response.
            self.early.append(data)
            self.held += len(data)
            if self.held > MAX_HELD_BYTES:
                self.set_reading()
            return
        elif self.parser.paused:
            # Bytes after the current request wait in the parser. Reading goes on,
            # so that a client who leaves is noticed (DC), up to a bound.
            self.held += len(data)
            if self.held > MAX_HELD_BYTES:
                self.set_reading()
        try:
            events = self.parser.feed(data)
        except ProtocolError as error:
            self.refuse(error)
            return
        self.dispatch(events)

    def sniff(self, data: bytes) -> bytes | None:
        """A connection that opens with HTTP/2's preface (prior-knowledge h2c,
        or ALPN h2 / istio-h2, whose clients send it too) goes to an
        H2Downstream: None. Otherwise the bytes to read as HTTP/1.1."""
        seen = self.sniffed + data
        if seen.startswith(PREFACE):
            self.sniffing = False
            from pilotfish.proxy.h2_downstream import (
                H2Downstream,  # h2 loads on the first h2 client
            )

            H2Downstream(self.runtime, self.listener).take_over(self, seen)
            return None
        if PREFACE.startswith(seen):
            self.sniffed = seen  # a preface in pieces
            return None
        self.sniffing, self.sniffed = False, b""
        return seen

    def eof_received(self) -> bool:
        with contextlib.suppress(ProtocolError):
            self.dispatch(self.parser.eof())
        return False

    def pause_writing(self) -> None:
        conn = self.exchange.conn if self.exchange is not None else None
        if conn is not None:
            conn.pause_reading()

    def resume_writing(self) -> None:
        conn = self.exchange.conn if self.exchange is not None else None
        if conn is not None:
            conn.resume_reading()

    # -- requests -------------------------------------------------------------------------

    def dispatch(self, events: list[RequestEvent]) -> None:
        self.dispatching = True
        try:
            self.handle(events)
        finally:
            self.dispatching = False
        if self.next_pending and not self.closed:
            self.next_pending = False
            self.next_request()

    def handle(self, events: list[RequestEvent]) -> None:
        for i, event in enumerate(events):
            kind = event.__class__
            if kind is RequestHead:
                assert isinstance(event, RequestHead)
                if event.method == b"CONNECT":  # the connection becomes a tunnel, or is refused
                    connect_tunnel(self, event, events[i + 1 :])
                    return
                self.begin(event)
                continue
            exchange = self.exchange
            if exchange is None:
                continue  # the rest of a request answered early: read and dropped
            if kind is bytes:
                assert isinstance(event, bytes)
                exchange.request_body(event)
            elif kind is Tunnel:
                assert isinstance(event, Tunnel)
                exchange.tunnel_data(event.data)
            else:
                assert isinstance(event, EndOfMessage)
                exchange.request_end(event)

    def begin(self, head: RequestHead | ExpressRequest) -> None:
        self.head_since = self.idle_since = 0.0
        self.requests += 1
        exchange = self.exchange = Exchange(self, head)
        limit = self.listener.http.max_requests_per_connection
        if (limit and self.requests >= limit) or self.runtime.draining or self.stale():
            exchange.keep_alive = False  # the response says `connection: close`
        if exchange.express is not None:
            exchange.take_body(exchange.express.body)
        exchange.start()

    def stale(self) -> bool:
        """The listener changed since this connection opened: Envoy drains such
        connections, so that the next request meets the new config (a new
        AuthorizationPolicy, say) on a new connection. Looked up once per
        listeners map: an update that leaves the listeners keeps their map."""
        listeners = self.runtime.config.snapshot.listeners
        if listeners is self.current_in:
            return False
        if listeners.get(self.listener.name) is not self.listener:
            return True
        self.current_in = listeners
        return False

    def exchange_done(self, ex: Exchange, now: float) -> None:
        """The response is written (at `now`, time.monotonic()): start the
        next request, or close."""
        if ex is not self.exchange:
            return
        self.exchange = None
        if not ex.keep_alive or self.runtime.draining or self.closed:
            self.close()
            return
        if self.dispatching:
            self.next_pending = True  # after the events of this read are handled
            return
        self.next_request(now)

    def next_request(self, now: float = 0.0) -> None:
        """`now`: the clock as read when the last response was through; 0.0: read it."""
        try:
            held = self.parser.next_message()
        except ProtocolError as error:
            self.refuse(error)
            return
        if held:
            self.dispatch(held)
        if self.exchange is None:
            self.idle_since = now or MONOTONIC()
        self.held = 0
        if self.early:
            early, self.early = self.early, []
            self.data_received(b"".join(early))  # as if read now
        self.set_reading()

    def refuse(self, error: ProtocolError) -> None:
        """Bytes that are not acceptable HTTP/1.1: answer if we still can, close."""
        self.stats.downstream_rq_rx_reset += 1
        self.stats.downstream_cx_protocol_error += 1
        if error.status in (413, 431):
            self.stats.downstream_rq_too_large += 1
        if self.exchange is None or not self.exchange.responding:
            self.write(error.response())
        if self.exchange is not None:
            self.exchange.add_flag(error.flag)
            self.exchange.downstream_lost()
        self.close()

    # -- timers ---------------------------------------------------------------------------

    def check_timers(self, now: float) -> None:
        """Called every TIMER_SWEEP_S: 408 for a head, or a whole request, that
        is too slow, close a connection idle too long, arm a route timeout
        that is near (timers per request would cost more)."""
        http = self.listener.http
        exchange = self.exchange
        if exchange is not None:
            check_exchange(exchange, http, self.stats, self.stream_idle, now, 2 * TIMER_SWEEP_S)
            return
        self.watched = None  # a finished exchange (and its buffers) is not kept alive
        if self.head_since and http.request_headers_timeout:
            if now - self.head_since > http.request_headers_timeout:
                self.stats.downstream_rq_header_timeout += 1
                flags = [(b"x-pilotfish-flags", b"DPE")]
                self.write(error_response(408, b"request header timeout", flags))
                self.close()
        elif self.idle_since and http.idle_timeout and now - self.idle_since > http.idle_timeout:
            self.stats.downstream_cx_idle_timeout += 1
            self.close()

    def stream_idle(self, exchange: Exchange, now: float) -> float:
        """How long no byte of `exchange` has moved either way, as the sweep
        sees it: it compares the byte counts, so moving bytes costs nothing."""
        moved = exchange.request_bytes + exchange.response_bytes + exchange.responding
        if exchange is not self.watched or moved != self.moved:
            self.watched, self.moved, self.moved_at = exchange, moved, now
        return now - self.moved_at

    # -- used by the exchange -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def pause_body(self) -> None:
        """The request body cannot go anywhere yet (no upstream, or a full one)."""
        self.body_paused = True
        self.set_reading()

    def resume_body(self) -> None:
        self.body_paused = False
        self.set_reading()

    def set_reading(self) -> None:
        pause = self.body_paused or self.held > MAX_HELD_BYTES
        transport = self.transport
        if pause == self.reading_paused or transport is None or transport.is_closing():
            return
        self.reading_paused = pause
        if pause:
            transport.pause_reading()
        else:
            transport.resume_reading()


def check_exchange(
    exchange: Exchange,
    http: HttpManager,
    stats: HttpStats,
    idle_for: Callable[[Exchange, float], float],
    now: float,
    horizon: float,
) -> None:
    """The timer sweep's look at one exchange, on HTTP/1.1 or an HTTP/2
    stream: 408 for a request too slow to arrive, the stream idle timeout,
    else the route timeout's timer armed once it is within `horizon`."""
    timeout, idle = http.request_timeout, http.stream_idle_timeout
    if timeout and not exchange.body_done and now - exchange.started > timeout:
        stats.downstream_rq_timeout += 1
        exchange.request_timed_out()
    elif idle and idle_for(exchange, now) > idle:
        stats.downstream_rq_idle_timeout += 1
        exchange.stream_idle_timed_out()
    else:
        exchange.arm_deadline(now, horizon)
