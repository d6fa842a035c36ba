"""One request through the proxy: route, filters, forward with retries, respond.

Driven by callbacks, not a coroutine: the downstream connection hands over
the request's events, the pool hands over a connection, the upstream
connection hands over the response's events, and timers fire. A request
that finds an idle connection goes upstream within the callback that read
it, and its response goes downstream within the callback that read that.

Failures answer as Envoy does, with its response flags (in the access log,
the metrics and `x-pilotfish-flags`): no route NR, no cluster NC, no healthy
host UH, connect failure UF, reset UC, protocol error UPE, timeout UT,
retries exhausted URX, circuit breaker overflow UO, fault abort FI, fault
delay DI, rate limited RL, client gone DC.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pilotfish.proxy import filters, response_flags
from pilotfish.proxy.authz_call import send_check
from pilotfish.proxy.mirror import send_mirror
from pilotfish.proxy.protocol.express import (
    ExpressRequest,
    ExpressResponse,
    express_events,
    splice,
)
from pilotfish.proxy.protocol.http1 import (
    CONTINUE_RESPONSE,
    LAST_CHUNK,
    EndOfMessage,
    Headers,
    ProtocolError,
    RequestHead,
    ResponseEvent,
    ResponseHead,
    Tunnel,
    encode_chunk,
    encode_last_chunk,
    error_response,
    get_header,
    request_authority,
    serialize_request_head,
    serialize_response_head,
    status_line,
    strip_hop_by_hop,
)
from pilotfish.proxy.routing import (
    DirectResponse,
    Forward,
    Redirect,
    RetryOn,
    RetryPolicy,
    Route,
    Target,
)
from pilotfish.proxy.stats import ClusterStats
from pilotfish.proxy.telemetry import PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER
from pilotfish.proxy.tracing.propagation import SpanContext
from pilotfish.proxy.tracing.tracer import trace_request
from pilotfish.proxy.upstream import Cluster, Host, LocalOrigin, stable_hash
from pilotfish.proxy.upstream.pool import UpstreamConnection

if TYPE_CHECKING:
    from pilotfish.proxy.server import Downstream

MAX_BUFFERED_BODY = 64 * 1024  # request bytes kept for retries and mirrors
PRECISE_WITHIN_S = 0.5  # a route timeout this short gets its timer at once
RNG = random.Random()
RESET_BEFORE_HEADERS = b"upstream connect error or disconnect/reset before headers. reset reason: "
FAILURE_BODIES = {
    "UH": (503, b"no healthy upstream"),
    "UF": (503, RESET_BEFORE_HEADERS + b"connection failure"),
    "UC": (503, RESET_BEFORE_HEADERS + b"connection termination"),
    "UPE": (503, b"upstream protocol error"),
    "UO": (503, RESET_BEFORE_HEADERS + b"overflow"),
    "UT": (504, b"upstream request timeout"),
}
# Envoy's connection manager counters for the local replies that have one.
LOCAL_REPLY_STATS = {
    "NR": "no_route",
    "NC": "no_cluster",
    "FI": "fault__aborts_injected",
    "RL": "local_rate_limit__rate_limited",
}
RETRY_ON_RESET = RetryOn.RESET | RetryOn.GATEWAY_ERROR | RetryOn.FIVE_XX
RETRY_ON_CONNECT = RetryOn.CONNECT_FAILURE | RetryOn.GATEWAY_ERROR | RetryOn.FIVE_XX
RETRY_ON_TIMEOUT = RetryOn.GATEWAY_ERROR | RetryOn.FIVE_XX


class Exchange:
    """A request and its response; see the module docstring.

    Slots, all set at once: on 3.11 an attribute that falls back to a class
    default costs a dictionary lookup, and a request reads dozens of them."""

    scheme = b"http"  # what Envoy calls x-forwarded-proto, for routing and forwarding
    __slots__ = (
        "_headers",
        "authority",
        "body",
        "body_done",
        "body_overflow",
        "cluster",
        "cluster_stats",
        "conn",
        "deadline",
        "deadline_at",
        "details",
        "done",
        "down",
        "express",
        "flags",
        "forwarded_headers",
        "fx",
        "generated_id",
        "hash_key",
        "head",
        "holds_request",
        "holds_retry",
        "host",
        "keep_alive",
        "keep_body",
        "last_host",
        "method",
        "on_body_done",
        "original_path",
        "path",
        "peer_header",
        "request_bytes",
        "responding",
        "response_bytes",
        "response_chunked",
        "retries_left",
        "retry",
        "route",
        "sent",
        "source_ip",
        "started",
        "status",
        "target",
        "timer",
        "trace",
        "transport_failure",
        "tried",
        "try_timer",
        "tunnel",
        "upstream_head",
        "upstream_path",
        "upstream_tls",
        "waiting",
    )

    def __init__(self, down: Downstream, head: RequestHead | ExpressRequest) -> None:
        self.down = down
        self.head = head
        self.express = head if isinstance(head, ExpressRequest) else None
        self.method = head.method
        authority, self.path = request_authority(head)
        self.authority = authority or b""
        self.original_path = self.path
        self.source_ip = down.peer
        self.keep_alive = head.keep_alive
        self.started = time.monotonic()
        self.request_bytes = 0
        self.body: list[bytes] = []  # request body not yet sent, or kept for a retry
        self.flags = ""
        self.status = 0
        self.response_bytes = 0
        self.body_done = False
        self.keep_body = True  # until forwarding knows whether retries or mirrors need it
        self.body_overflow = False
        self.route: Route | None = None
        self.target: Target | None = None
        self.fx: filters.Exchange | None = None
        self.cluster: Cluster | None = None
        self.cluster_stats: ClusterStats | None = None
        self.host: Host | None = None
        self.last_host: Host | None = None  # for the access log: the host of the last try
        self.upstream_tls = False  # the last try's connection was mutual TLS
        self.transport_failure: str | None = None  # why the last TLS handshake failed
        self.retry: RetryPolicy | None = None  # the forwarding route's
        self.tried: frozenset[Host] | set[Host] = frozenset()  # for the previous-hosts predicate
        self.conn: UpstreamConnection | None = None
        self.waiting = False  # for a connection from the pool
        self.sent = False  # the upstream has the request head
        self.responding = False  # the response head went downstream
        self.response_chunked = False
        self.tunnel = False
        self.retries_left = 0
        self.hash_key: int | None = None
        self.upstream_head = b""
        self.upstream_path = b""
        self.forwarded_headers: Headers = []  # replaced per request, never changed in place
        self.on_body_done: tuple[Callable[[], None], ...] = ()
        self.timer: asyncio.TimerHandle | None = None  # filter delay, backoff
        self.try_timer: asyncio.TimerHandle | None = None
        self.deadline_at = 0.0  # the route timeout, in time.monotonic(); 0: none
        self.deadline: asyncio.TimerHandle | None = None  # its timer, once near
        self.holds_request = False  # a circuit breaker request slot
        self.holds_retry = False  # and a retry slot
        self.peer_header: bytes | None = None  # the other side's x-envoy-peer-metadata
        self.generated_id: bytes | None = None  # the x-request-id the proxy made up
        self.details: str | None = None  # Envoy's response code details, where a local reply says
        self.trace: SpanContext | None = None  # this hop's span, once forwarded (tracing/)
        self.done = False
        self._headers: Headers | None = None

    @property
    def client_certificate_verified(self) -> bool:
        """For RouteMatch.tls_context: a TLS client certificate was verified."""
        return bool(self.down.mtls)

    def __repr__(self) -> str:
        return f"<Exchange {self.method.decode()} {self.authority.decode()}{self.path.decode()}>"

    @property
    def headers(self) -> Headers:
        """The request's headers, names lower-cased; made when first read,
        since a request that goes the express way may never need them."""
        headers = self._headers
        if headers is None:
            head = self.head
            if isinstance(head, ExpressRequest):
                headers = head.headers()
            else:
                headers = [(n.lower(), v) for n, v in head.headers]
            self._headers = headers
        return headers

    def take_body(self, body: bytes) -> None:
        """The whole request body, read with the head (the express way)."""
        if body:
            self.request_bytes = len(body)
            self.body.append(body)
        self.body_done = True

    # -- the request, from downstream -----------------------------------------------------

    def start(self) -> None:
        listener = self.down.listener
        table = self.down.runtime.config.snapshot.routes_of(listener)
        rand = RNG.getrandbits(64)
        route = table.route(self, rand) if table is not None else None
        if route is None:
            self.local(404, b"", "NR")
            return
        self.route = route
        configs = route.filter_configs
        cluster = ""
        if isinstance(route.action, Forward):
            self.target = route.action.pick(self, rand)
            configs, cluster = self.target.filter_configs, self.target.cluster
        chain = listener.http.filters
        if not chain.filters or chain.idle(configs):
            self.act(route)
        else:
            down = self.down
            connection = down.filter_view
            if connection is None:
                connection = down.filter_view = filters.Connection.of(
                    down.peer, down.local_address, peer_principal=down.peer_principal
                )
            self.fx = chain.start(self, configs, cluster, connection, down.stats.filters)
            self.run_filters()

    def request_body(self, data: bytes) -> None:
        self.request_bytes += len(data)
        conn = self.conn
        if conn is not None and self.sent:
            conn.write(encode_chunk(data) if self.head.chunked else data)
            if not self.keep_body:
                return
        if self.body_overflow:
            return
        self.body.append(data)
        if self.request_bytes > MAX_BUFFERED_BODY:
            self.body_overflow = True
            if not self.sent:
                self.down.pause_body()  # until an upstream takes the bytes

    def request_end(self, end: EndOfMessage) -> None:
        self.body_done = True
        if self.conn is not None and self.sent and self.head.chunked:
            self.conn.write(encode_last_chunk(end.trailers))
        callbacks, self.on_body_done = self.on_body_done, ()
        for callback in callbacks:
            callback()

    def tunnel_data(self, data: bytes) -> None:
        self.request_bytes += len(data)
        if self.conn is not None and self.sent:
            self.conn.write(data)
        else:
            self.body.append(data)

    def downstream_lost(self) -> None:
        if self.done:
            return
        if not self.tunnel:
            self.add_flag("DC")
        self.drop_upstream()
        self.finish()

    # -- filters and the route's action ---------------------------------------------------

    def run_filters(self) -> None:
        self.timer = None
        chain, fx = self.down.listener.http.filters, self.fx
        assert fx is not None
        step = chain.decode(fx, RNG)
        if isinstance(step, filters.Delay):
            self.add_flag("DI")
            self.http_stat("fault__delays_injected")
            self.timer = self.down.runtime.loop.call_later(step.seconds, self.run_filters)
        elif isinstance(step, filters.Check):
            self.check(fx, step)
        elif isinstance(step, filters.LocalReply):
            self.details = step.details
            headers = list(step.headers)
            chain.encode(fx, headers)
            self.local(step.status, step.body, step.flag, headers)
        else:
            assert self.route is not None
            self.act(self.route)

    def check(self, fx: filters.Exchange, step: filters.Check) -> None:
        """The ext_authz call; the filters go on when its answer is in."""
        runtime = self.down.runtime

        def done(result: filters.CheckResult | None) -> None:
            fx.check_result = result
            if not self.done:
                self.run_filters()

        cluster = runtime.config.snapshot.clusters.get(step.cluster)
        send_check(runtime.loop, runtime.pool, cluster, step, done)

    def act(self, route: Route) -> None:
        action = route.action
        if isinstance(action, Forward):
            self.forward(action)
            return
        headers: Headers = []
        if isinstance(action, Redirect):
            headers.append((b"location", action.location(self)))
            body = b""
            self.http_stat("rq_redirect")
        else:
            assert isinstance(action, DirectResponse)
            body = action.body
            self.http_stat("rq_direct_response")
        route.response_headers.apply(headers)
        self.local(action.status, body, "", headers)

    def forward(self, action: Forward) -> None:
        target = self.target
        assert target is not None
        runtime = self.down.runtime
        cluster = runtime.config.snapshot.clusters.get(target.cluster)
        if cluster is None:
            self.local(action.cluster_not_found_status, b"", "NC")
            return
        if self.head.upgrade and not self.upgrade_allowed():
            self.local(403, b"", "")
            return
        if not self.body_done and self.buffers_body_first():
            self.forward_after_body(action)
            return
        if not cluster.breakers.try_acquire_request():
            self.local(503, FAILURE_BODIES["UO"][1], "UO")
            return
        self.holds_request, self.cluster = True, cluster
        self.cluster_stats = runtime.stats.cluster(cluster.name)
        retry = self.retry = action.retry
        self.retries_left = retry.num_retries if retry is not None and not self.head.upgrade else 0
        self.keep_body = bool(self.retries_left or action.mirrors)
        if action.hash_key is not None:
            key = action.hash_key(self)
            self.hash_key = stable_hash(key) if key is not None else None
        self.upstream_head = self.build_head(action, target)
        if self.head.expect_continue and not self.body_done:
            self.down.write(CONTINUE_RESPONSE)  # Envoy answers 100-continue itself
        if action.mirrors:
            self.mirror(action)
        if action.timeout:
            now = time.monotonic()
            self.deadline_at = now + action.timeout
            self.arm_deadline(now, PRECISE_WITHIN_S)
        self.try_once()

    def buffers_body_first(self) -> bool:
        """A body small enough to keep whole is read before the request takes
        an upstream slot (a circuit breaker's request, a pool's connection),
        so that clients who send bodies slowly hold only their own connection
        and cannot starve the others. Bigger bodies stream, bounded by the
        listener's request_timeout."""
        length = self.head.content_length
        return length is not None and length <= MAX_BUFFERED_BODY and not self.head.upgrade

    def forward_after_body(self, action: Forward) -> None:
        if self.head.expect_continue:
            self.down.write(CONTINUE_RESPONSE)  # or the client never sends the body
        self.on_body_done = (*self.on_body_done, lambda: self.forward(action))

    def request_timed_out(self) -> None:
        """The listener's request_timeout passed before the whole request came:
        Envoy's local reply, 408 `request timeout`."""
        self.details = "request_overall_timeout"
        self.drop_upstream()
        self.local(408, b"request timeout", "")

    def stream_idle_timed_out(self) -> None:
        """No byte moved either way for the listener's stream_idle_timeout:
        Envoy's 408 (request incomplete) or 504 `stream timeout`, flag SI; a
        response already begun is cut short."""
        self.details = "stream_idle_timeout"
        self.drop_upstream()
        self.local(504 if self.body_done else 408, b"stream timeout", "SI")

    def arm_deadline(self, now: float, horizon: float) -> None:
        """Set the route timeout's timer once it is within `horizon`. A timer
        per request costs more than most requests, so the connection's sweep
        arms it for the few requests that come close (server.Runtime.tick)."""
        if self.deadline_at and self.deadline is None and self.deadline_at - now <= horizon:
            loop = self.down.runtime.loop
            self.deadline = loop.call_later(max(0.0, self.deadline_at - now), self.on_deadline)

    def upgrade_allowed(self) -> bool:
        upgrade = get_header(self.headers, b"upgrade") or b""
        return upgrade.lower() in self.down.listener.http.upgrades

    def build_head(self, action: Forward, target: Target) -> bytes:
        path = action.rewrite_path(self.path) if action.rewrite_path is not None else self.path
        express = self.express
        tracing = self.down.listener.http.tracing
        if (
            express is not None
            and tracing is None  # trace headers are rewritten
            and not action.mirrors
            and (self.fx is None or not self.fx.upstream_headers)
            and not target.request_headers
            and not target.host_rewrite
            and (express.host is None or express.host == self.authority)
        ):
            self.upstream_path = path
            return self.express_head(express, path)
        headers = self.forwarding_headers(target.host_rewrite or self.authority)
        peer = take_peer(headers)  # never forwarded as the client sent them
        down = self.down
        if down.mesh_peer:
            self.peer_header = peer
        if not down.listener.inbound:
            headers += down.runtime.peer_headers
        if self.fx is not None:
            for mutation in self.fx.upstream_headers:
                mutation.apply(headers)
        target.request_headers.apply(headers)
        if tracing is not None:
            self.trace = trace_request(headers, tracing)
        self.forwarded_headers, self.upstream_path = headers, path
        return serialize_request_head(self.method, path, headers, chunked=self.head.chunked)

    def express_head(self, req: ExpressRequest, path: bytes) -> bytes:
        """What forwarding_headers and build_head make, from the head's bytes:
        the header lines as received, less the cut ones, plus the added ones."""
        down = self.down
        http = down.listener.http
        parts = [self.method, b" ", path, b" HTTP/1.1"]
        if req.host is None:
            parts += (b"\r\nhost: ", self.authority)
        if down.mesh_peer:
            self.peer_header = req.peer
        # The client's metadata-exchange headers never go on: outbound, this
        # proxy says who the caller is; inbound, the app has no use for them.
        parts.append(splice(req.lines, req.cuts + req.peer_cuts if req.peer_cuts else req.cuts))
        if not down.listener.inbound:
            parts.append(down.runtime.peer_lines)
        xff = req.forwarded_for
        if not http.skip_xff_append:
            peer = self.source_ip.encode()
            parts += (b"\r\nx-forwarded-for: ", xff + b", " + peer if xff else peer)
        elif xff is not None:
            parts += (b"\r\nx-forwarded-for: ", xff)
        if not req.has_proto:
            parts += (b"\r\nx-forwarded-proto: ", self.scheme)
        if not req.has_request_id and http.generate_request_id:
            self.generated_id = request_id()
            parts += (b"\r\nx-request-id: ", self.generated_id)
        parts.append(b"\r\n\r\n")
        return b"".join(parts)

    def forwarding_headers(self, authority: bytes) -> Headers:
        """The request's headers for the upstream, in one pass: Host first,
        hop-by-hop and Expect gone (the proxy answers 100-continue itself),
        x-forwarded-for appended to, x-forwarded-proto and x-request-id added
        when absent."""
        http = self.down.listener.http
        headers: Headers = [(b"host", authority)]
        xff = proto = request_id_seen = None
        for header in strip_hop_by_hop(self.headers, tunnel=self.head.upgrade):
            name = header[0]
            if name in _REWRITTEN:
                if name == b"x-forwarded-for":
                    xff = header[1]
                    continue
                if name == b"x-forwarded-proto":
                    proto = True
                elif name == b"x-request-id":
                    request_id_seen = True
                else:
                    continue  # host, expect
            headers.append(header)
        if not http.skip_xff_append:
            peer = self.source_ip.encode()
            headers.append((b"x-forwarded-for", xff + b", " + peer if xff else peer))
        elif xff is not None:
            headers.append((b"x-forwarded-for", xff))
        if proto is None:
            headers.append((b"x-forwarded-proto", self.scheme))
        if request_id_seen is None and http.generate_request_id:
            self.generated_id = request_id()
            headers.append((b"x-request-id", self.generated_id))
        return headers

    def mirror(self, action: Forward) -> None:
        for policy in action.mirrors:
            if policy.fires(RNG.getrandbits(64)):
                send_mirror(self, policy)

    # -- tries ----------------------------------------------------------------------------

    def try_once(self) -> None:
        self.timer = None
        cluster, retry = self.cluster, self.retry
        assert cluster is not None
        exclude = self.tried if retry is not None and retry.previous_hosts else None
        attempts = retry.host_selection_max_attempts if retry is not None else 1
        host = cluster.pick(self.hash_key, exclude, retries=attempts)
        if host is None:
            self.fail("UH")
            return
        self.host = self.last_host = host
        if exclude is not None:
            self.tried = {*self.tried, host}
        host.request_started()
        self.stat("upstream_rq_total")
        self.waiting = True
        if not self.down.runtime.pool.request(host, cluster, self):
            self.waiting = False
            host.request_finished()
            self.fail("UO")
            return
        per_try = retry.per_try_timeout if retry is not None else None
        if per_try and not self.done and (self.waiting or self.conn is not None):
            loop = self.down.runtime.loop
            self.try_timer = loop.call_later(per_try, self.on_try_timeout)

    def on_connection(self, conn: UpstreamConnection) -> None:
        if not self.waiting or self.done:
            self.down.runtime.pool.release(conn)
            return
        self.waiting = False
        self.conn, self.sent = conn, True
        self.upstream_tls = conn.tls
        body = self.pending_body()
        conn.send(self, self.method, self.upstream_head + body)

    def pending_body(self) -> bytes:
        """The buffered request body, framed for the upstream; resumes reading
        the client if it was held back while no upstream could take it."""
        data = b"".join(self.body)
        if not self.keep_body or self.tunnel:
            self.body = []
        if self.head.upgrade:
            return data
        if self.body_overflow and not self.keep_body:
            self.down.resume_body()
        if self.head.chunked:
            return encode_chunk(data) + (LAST_CHUNK if self.body_done else b"")
        return data

    def on_connect_failure(self, timed_out: bool, reason: str | None = None) -> None:
        """`reason`: a failed TLS handshake's, as Envoy's upstream transport failure reason."""
        if not self.waiting or self.done:
            return
        self.waiting = False
        self.transport_failure = reason
        self.report(LocalOrigin.TIMEOUT if timed_out else LocalOrigin.CONNECT_FAILED)
        self.try_failed("UF")

    # -- the response, from upstream ------------------------------------------------------

    def on_response(self, events: list[ResponseEvent]) -> None:
        """The response's events from one read, written downstream in one write."""
        out: list[bytes] = []
        ended = False
        for event in events:
            kind = event.__class__
            if kind is bytes:
                assert isinstance(event, bytes)
                self.response_bytes += len(event)
                out.append(encode_chunk(event) if self.response_chunked else event)
            elif kind is ResponseHead:
                assert isinstance(event, ResponseHead)
                head = self.on_response_head(event)
                if head is None:
                    return
                out.append(head)
            elif kind is Tunnel:
                assert isinstance(event, Tunnel)
                self.response_bytes += len(event.data)
                out.append(event.data)
            else:
                assert isinstance(event, EndOfMessage)
                if self.response_chunked:
                    out.append(encode_last_chunk(event.trailers))
                ended = not self.tunnel  # a tunnel ends when either side closes
        if out:
            self.down.write(out[0] if len(out) == 1 else b"".join(out))
        if ended:
            self.response_complete()

    def on_express_response(self, resp: ExpressResponse) -> None:
        """A response head with its Content-Length body, or the start of it,
        from one read; the connection counts the rest of the body in."""
        target = self.target
        if (self.fx is not None and self.fx.encoders) or (target and target.response_headers):
            self.on_response(express_events(resp))
            return
        if not self.accept_response(resp.status, resp.keep_alive):
            return
        self.status, self.responding = resp.status, True
        down = self.down
        peer_lines = down.runtime.peer_lines
        parts = [status_line(resp.status)]
        if down.listener.inbound:  # the local app's answer: it cannot speak for this workload
            cuts = resp.cuts + resp.peer_cuts if resp.peer_cuts else resp.cuts
            parts += (splice(resp.lines, cuts), peer_lines)
        elif peer_lines:  # a peer answers in kind only to a peer
            self.peer_header = resp.peer
            parts.append(splice(resp.lines, resp.cuts + resp.peer_cuts))
        else:
            parts.append(splice(resp.lines, resp.cuts))
        if self.flags:
            parts += (b"\r\nx-pilotfish-flags: ", self.flags.encode())
        if not self.keep_alive:
            parts.append(b"\r\nconnection: close")
        parts += (b"\r\n\r\n", resp.body)
        self.response_bytes = len(resp.body)
        down.write(b"".join(parts))
        if len(resp.body) == resp.content_length:
            self.response_complete()

    def on_response_head(self, head: ResponseHead) -> bytes | None:
        """The head to send downstream; None when the response is dropped for
        a retry. An interim (1xx) head gives b"": the client got its 100
        Continue from the proxy already."""
        if head.status < 200 and head.status != 101:
            return b""
        if head.upgrade and not self.head.upgrade:
            # A switch the request did not ask for: forwarded, the client would
            # take the connection as switched while the proxy reads it as HTTP.
            self.drop_upstream()
            self.report(LocalOrigin.RESET)
            self.try_failed("UPE")
            return None
        if not self.accept_response(head.status, head.keep_alive):
            return None
        return self.respond(head)

    def accept_response(self, status: int, keep_alive: bool) -> bool:
        """A final response came: report it, and take it, or drop it to retry.
        Without keep-alive its connection goes once the response is through."""
        if not keep_alive and self.conn is not None:
            self.conn.reusable = False
        self.cancel_try_timer()
        self.report(status)
        retry = self.retry
        if retry is not None and retriable_status(status, retry):
            if self.can_retry():
                self.drop_upstream()
                self.retry_later()
                return False
            self.add_flag("URX")
        elif self.holds_retry:
            self.stat("upstream_rq_retry_success")
        return True

    def respond(self, head: ResponseHead) -> bytes:
        self.status, self.responding = head.status, True
        self.tunnel = head.upgrade
        if self.tunnel:
            self.keep_alive = False
        headers = [(n.lower(), v) for n, v in strip_hop_by_hop(head.headers, tunnel=self.tunnel)]
        if self.down.listener.inbound:  # the local app's answer: it cannot speak for this workload
            take_peer(headers)
            headers += self.down.runtime.peer_headers
        elif self.down.runtime.peer_headers:  # a peer answers in kind only to a peer
            self.peer_header = take_peer(headers)
        assert self.target is not None
        self.target.response_headers.apply(headers)
        if self.fx is not None:
            self.down.listener.http.filters.encode(self.fx, headers)
        if self.flags:
            headers.append((b"x-pilotfish-flags", self.flags.encode()))
        bodyless = self.method == b"HEAD" or head.status in (204, 304) or self.tunnel
        self.response_chunked = not bodyless and head.content_length is None
        if not self.keep_alive and not self.tunnel:
            headers.append((b"connection", b"close"))
        return serialize_response_head(head.status, headers, chunked=self.response_chunked)

    def response_complete(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            if self.body_done:
                self.down.runtime.pool.release(conn)
            else:
                conn.close()  # the upstream answered before the whole request came
        self.finish()

    def on_upstream_error(self, error: ProtocolError) -> None:
        self.conn = None
        if error.flag == "UF":  # the server refused our certificate (see pool.py)
            self.transport_failure = error.reason
        if self.tunnel:
            self.finish()
            self.down.close()
            return
        if self.responding:
            self.add_flag(error.flag)
            self.finish()
            self.down.close()  # mid-response: all the client can be told
            return
        self.cancel_try_timer()
        self.report(LocalOrigin.RESET)
        self.stat("upstream_rq_rx_reset")
        self.try_failed(error.flag)

    def pause_reading_downstream(self) -> None:
        self.down.pause_body()

    def resume_reading_downstream(self) -> None:
        self.down.resume_body()

    # -- failures, retries and timeouts ---------------------------------------------------

    def try_failed(self, flag: str) -> None:
        """This try got no response: retry if the policy says so, else answer."""
        if self.host is not None:
            self.host.request_finished()
            self.host = None
        retry = self.retry
        if retry is not None and retriable_failure(flag, retry.retry_on):
            if self.can_retry():
                self.retry_later()
                return
            self.add_flag("URX")
        self.fail(flag)

    def can_retry(self) -> bool:
        if self.retries_left <= 0 or self.body_overflow or self.responding:
            if self.retries_left <= 0:
                self.stat("upstream_rq_retry_limit_exceeded")
            return False
        assert self.cluster is not None
        breakers = self.cluster.breakers
        if self.holds_retry:  # one retry slot at a time, as Envoy counts them
            breakers.release_retry()
            self.holds_retry = False
        if not breakers.try_acquire_retry():
            self.add_flag("UO")  # the breakers count upstream_rq_retry_overflow
            return False
        self.holds_retry = True
        return True

    def retry_later(self) -> None:
        """Envoy's back-off: fully jittered, up to base * 2^n, capped at max."""
        retry = self.retry
        assert retry is not None and self.cluster is not None
        attempt = retry.num_retries - self.retries_left
        self.retries_left -= 1
        self.stat("upstream_rq_retry")
        if self.host is not None:
            self.host.request_finished()
            self.host = None
        delay = RNG.uniform(0, min(retry.backoff_max, retry.backoff_base * (2**attempt)))
        self.timer = self.down.runtime.loop.call_later(delay, self.try_once)

    def on_try_timeout(self) -> None:
        self.try_timer = None
        self.stat("upstream_rq_per_try_timeout")
        self.report(LocalOrigin.TIMEOUT)
        self.drop_upstream()
        self.try_failed("UT")

    def on_deadline(self) -> None:
        self.deadline = None
        self.deadline_at = 0.0
        self.stat("upstream_rq_timeout")
        if self.host is not None:
            self.report(LocalOrigin.TIMEOUT)
        self.drop_upstream()
        if self.responding:
            self.add_flag("UT")
            self.finish()
            self.down.close()
        else:
            self.fail("UT")

    def fail(self, flag: str) -> None:
        status, body = FAILURE_BODIES.get(flag, (503, b"upstream failure"))
        if flag == "UF" and self.transport_failure:
            body += b", transport failure reason: " + self.transport_failure.encode()
        self.local(status, body, flag)

    def drop_upstream(self) -> None:
        """Stop the current try: close its connection or leave the pool's queue."""
        self.cancel_try_timer()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        if self.waiting and self.host is not None:
            self.waiting = False
            self.down.runtime.pool.cancel(self.host, self)

    def cancel_try_timer(self) -> None:
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None

    def report(self, result: int) -> None:
        if self.cluster is not None and self.host is not None:
            self.cluster.report(self.host, result)
            if result >= 0 and self.cluster_stats is not None:
                self.cluster_stats.codes[result] += 1

    def stat(self, name: str) -> None:
        scope = self.cluster_stats
        if scope is not None:
            setattr(scope, name, getattr(scope, name) + 1)

    def http_stat(self, name: str) -> None:
        scope = self.down.stats
        setattr(scope, name, getattr(scope, name) + 1)

    def add_flag(self, flag: str) -> None:
        if flag:
            self.flags = response_flags.add(self.flags, flag)

    # -- the end --------------------------------------------------------------------------

    def local(self, status: int, body: bytes, flag: str, headers: Headers | None = None) -> None:
        """Answer from the proxy itself (Envoy's local reply)."""
        if self.responding:
            self.down.close()
            self.finish()
            return
        self.add_flag(flag)
        if flag in LOCAL_REPLY_STATS:
            self.http_stat(LOCAL_REPLY_STATS[flag])
        self.status, self.responding = status, True
        out = list(headers or ())
        if self.fx is not None and headers is None:
            self.down.listener.http.filters.encode(self.fx, out)
        if self.flags:
            out.append((b"x-pilotfish-flags", self.flags.encode()))
        expects_body = self.head.chunked or (self.head.content_length or 0) > 0
        self.keep_alive = self.keep_alive and (self.body_done or not expects_body)
        if self.method == b"HEAD":
            body = b""
        self.response_bytes = len(body)
        self.down.write(error_response(status, body, out, close=not self.keep_alive))
        self.finish()

    def finish(self) -> None:
        """Once, however the exchange ended: release what it holds, record it."""
        if self.done:
            return
        self.done = True
        for handle in (self.timer, self.try_timer, self.deadline):
            if handle is not None:
                handle.cancel()
        if self.host is not None:
            self.host.request_finished()
        if self.holds_request and self.cluster is not None:
            self.cluster.breakers.release_request()
        if self.holds_retry and self.cluster is not None:
            self.cluster.breakers.release_retry()
        if self.fx is not None:
            self.down.listener.http.filters.finish(self.fx)
            for flag in self.fx.flags:
                self.add_flag(flag)
        self.down.runtime.observe(self)
        self.down.exchange_done(self)


def retriable_status(status: int, retry: RetryPolicy) -> bool:
    on = retry.retry_on
    return (
        (bool(on & RetryOn.FIVE_XX) and status >= 500)
        or (bool(on & RetryOn.GATEWAY_ERROR) and status in (502, 503, 504))
        or (bool(on & RetryOn.RETRIABLE_4XX) and status == 409)
        or (bool(on & RetryOn.RETRIABLE_STATUS_CODES) and status in retry.retriable_status_codes)
    )


def retriable_failure(flag: str, on: RetryOn) -> bool:
    if flag == "UF":
        return bool(on & RETRY_ON_CONNECT)
    if flag == "UT":
        return bool(on & RETRY_ON_TIMEOUT)
    return flag in ("UC", "UPE") and bool(on & RETRY_ON_RESET)


def request_id() -> bytes:
    """A random (version 4) UUID, as Envoy generates x-request-id."""
    h = b"%032x" % (RNG.getrandbits(128) & _UUID_CLEAR | _UUID_SET)
    return b"%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def take_peer(headers: Headers) -> bytes | None:
    """Remove Istio's metadata-exchange headers; return the peer's metadata."""
    if not any(name in PEER_HEADERS for name, _ in headers):
        return None
    found = None
    kept: Headers = []
    for header in headers:
        if header[0] not in PEER_HEADERS:
            kept.append(header)
        elif header[0] == PEER_METADATA_HEADER:
            found = header[1]
    headers[:] = kept
    return found


_REWRITTEN = frozenset(
    {b"host", b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id"}
)
PEER_HEADERS = frozenset({PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER})
