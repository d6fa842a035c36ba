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
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from pilotfish.proxy import filters, grpc, response_flags
from pilotfish.proxy.authz_call import send_check
from pilotfish.proxy.exchange_commands import carry_out
from pilotfish.proxy.exchange_core import (
    BACKOFF_ELAPSED,
    CONNECT_FAILED,
    CONNECTED,
    CONNECTING,
    DEADLINE,
    DOWNSTREAM_LOST,
    HOST_PICKED,
    LOCAL_REPLY,
    NO_HOST,
    OVERFLOW,
    REQUEST_BODY,
    REQUEST_END,
    RESPONDING,
    RESPONSE_BODY,
    RESPONSE_END,
    RESPONSE_HEAD,
    RETRY_GRANTED,
    RETRY_REFUSED,
    SENT,
    SWITCHED,
    TRY_TIMEOUT,
    UPSTREAM_RESET,
    WRITE_UPSTREAM,
    ExchangeCore,
    ExchangeStateError,
)
from pilotfish.proxy.filters.mirror import MirrorRequest, send_mirror
from pilotfish.proxy.forwarding import (
    CLIENT_ADDRESS,
    REQUEST_IDS,
    XFF_LINE,
    Additions,
    addition_headers,
    head_tail,
    request_additions,
    response_additions,
    response_peers,
)
from pilotfish.proxy.protocol.express import (
    ExpressRequest,
    ExpressResponse,
    encode_lines,
    express_events,
    splice,
)
from pilotfish.proxy.protocol.http1 import (
    EndOfMessage,
    Header,
    Headers,
    ProtocolError,
    RequestHead,
    ResponseEvent,
    ResponseHead,
    Tunnel,
    encode_chunk,
    encode_last_chunk,
    get_header,
    serialize_request_head,
    status_line,
    strip_hop_by_hop,
    target_authority,
)
from pilotfish.proxy.routing import (
    DirectResponse,
    Forward,
    MirrorPolicy,
    Redirect,
    RetryPolicy,
    Route,
    Target,
)
from pilotfish.proxy.stats import ClusterStats, StatsRegistry, count_status
from pilotfish.proxy.telemetry import PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER
from pilotfish.proxy.tracing.propagation import SpanContext
from pilotfish.proxy.tracing.tracer import trace_request
from pilotfish.proxy.upstream import Cluster, Host, LocalOrigin, stable_hash
from pilotfish.proxy.upstream.pool import MONOTONIC, UpstreamConnection
from pilotfish.proxy.upstream.retry import backoff_delay, per_try_timeout, retries_allowed

if TYPE_CHECKING:
    from pilotfish.proxy.h2_downstream import H2Stream
    from pilotfish.proxy.server import Downstream
    from pilotfish.proxy.upstream.cluster_set import ClusterSet

_NO_HOSTS: Final[frozenset[Host]] = frozenset()
_VERSION: Final = b" HTTP/1.1"
_VERSION_HOST: Final = b" HTTP/1.1\r\nhost: "
_NO_HEADERS: Final[Headers] = []  # shared: forwarded_headers is only ever replaced
MAX_BUFFERED_BODY: Final = 64 * 1024  # request bytes kept for retries and mirrors
PRECISE_WITHIN_S: Final = 0.5  # a route timeout this short gets its timer at once
RNG: Final = random.Random()
# Compiled, a Final module name is a C static, where `RNG.getrandbits` is
# a method lookup (~300 instructions) per call; so is MONOTONIC (upstream/pool).
RANDBITS: Final = RNG.getrandbits
# grpc is interpreted: `grpc.CONTENT_TYPE` is a global and an attribute
# lookup (~400 instructions) per request; a Final name, a C static.
GRPC_CONTENT_TYPE: Final = grpc.CONTENT_TYPE
RESET_BEFORE_HEADERS = b"upstream connect error or disconnect/reset before headers. reset reason: "
FAILURE_BODIES: Final = {
    "UH": (503, b"no healthy upstream"),
    "UF": (503, RESET_BEFORE_HEADERS + b"connection failure"),
    "UC": (503, RESET_BEFORE_HEADERS + b"connection termination"),
    "UPE": (503, b"upstream protocol error"),
    "UO": (503, RESET_BEFORE_HEADERS + b"overflow"),
    "UT": (504, b"upstream request timeout"),
}
# Envoy's connection manager counters for the local replies that have one.
LOCAL_REPLY_STATS: Final = {
    "NR": "no_route",
    "NC": "no_cluster",
    "FI": "fault__aborts_injected",
    "RL": "local_rate_limit__rate_limited",
}


class LastCluster:
    """The cluster the last forwarded request went to, and its stats scope:
    most requests go where the one before went, and each is a dict lookup
    by name (~180 instructions). It holds while the snapshot's ClusterSet is
    the one it was found in (a CDS or EDS update makes a new one), for the
    same name and stats registry."""

    __slots__ = ("cluster", "clusters", "name", "scope", "stats")

    def __init__(self) -> None:
        self.clusters: ClusterSet | None = None
        self.name = ""
        self.stats: StatsRegistry | None = None
        self.cluster: Cluster | None = None
        self.scope: ClusterStats | None = None

    def __repr__(self) -> str:
        return f"<LastCluster {self.name!r}>"

    def find(
        self, clusters: ClusterSet, name: str, stats: StatsRegistry
    ) -> tuple[Cluster | None, ClusterStats | None]:
        """The cluster `name` in `clusters`, with its scope in `stats` if kept."""
        if clusters is self.clusters and name is self.name and stats is self.stats:
            return self.cluster, self.scope
        return clusters.get(name), None

    def keep(
        self, clusters: ClusterSet, name: str, stats: StatsRegistry, cluster: Cluster,
        scope: ClusterStats,
    ) -> None:  # fmt: skip
        self.clusters, self.name, self.stats = clusters, name, stats
        self.cluster, self.scope = cluster, scope


LAST_CLUSTER: Final = LastCluster()


class Exchange:
    """A request and its response; see the module docstring.

    Slots, all set at once: on 3.11 an attribute that falls back to a class
    default costs a dictionary lookup, and a request reads dozens of them."""

    __slots__ = (
        "_headers",
        "action",
        "authority",
        "body",
        "body_done",
        "body_overflow",
        "cluster",
        "cluster_stats",
        "conn",
        "core",
        "deadline",
        "deadline_at",
        "details",
        "done",
        "down",
        "duration_cut",
        "ended",
        "express",
        "flags",
        "forwarded_headers",
        "fx",
        "generated_id",
        "grpc_request",
        "grpc_status",
        "hash_key",
        "head",
        "held",
        "holds_request",
        "holds_retry",
        "host",
        "keep_alive",
        "keep_body",
        "last_host",
        "late",
        "method",
        "on_body_done",
        "original_path",
        "outbox",
        "path",
        "peer_header",
        "reply",
        "request_bytes",
        "responding",
        "response_bytes",
        "response_chunked",
        "retry",
        "route",
        "sent",
        "source_ip",
        "started",
        "status",
        "target",
        "timer",
        "trace",
        "trailers",
        "transport_failure",
        "tried",
        "try_timer",
        "tunnel",
        "upstream_head",
        "upstream_path",
        "upstream_tls",
    )

    def __init__(self, down: Downstream | H2Stream, head: RequestHead | ExpressRequest) -> None:
        self.down = down
        self.head = head
        self.express = head if isinstance(head, ExpressRequest) else None
        self.method = head.method
        authority, self.path = target_authority(head.method, head.target, head.host)
        self.authority = authority or b""
        self.original_path = self.path
        self.source_ip = down.peer
        self.keep_alive = head.keep_alive
        self.started = MONOTONIC()
        self.ended = 0.0  # when the response was through, once its connection went back
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
        self.tried: frozenset[Host] | set[Host] = _NO_HOSTS  # for the previous-hosts predicate
        self.conn: UpstreamConnection | None = None
        self.sent = False  # the upstream has the request head
        self.responding = False  # the response head went downstream
        self.response_chunked = False
        self.tunnel = False
        self.core = ExchangeCore()
        self.action: Forward | None = None  # the route's, once it forwards
        self.held: ResponseHead | ExpressResponse | None = None  # a response head the core weighs
        self.late: UpstreamConnection | None = None  # one an earlier try asked for, going back
        self.outbox: list[bytes] | None = None  # downstream bytes on_response writes at once
        self.reply: tuple[int, bytes, str, Headers | None] | None = None  # a local reply to write
        self.hash_key: int | None = None
        self.upstream_head = b""
        self.upstream_path = b""
        self.forwarded_headers: Headers = _NO_HEADERS  # replaced per request, never in place
        self.on_body_done: tuple[Callable[[], None], ...] = ()
        self.timer: asyncio.TimerHandle | None = None  # filter delay, backoff
        self.try_timer: asyncio.TimerHandle | None = None
        self.deadline_at = 0.0  # the route timeout, in time.monotonic(); 0: none
        self.deadline: asyncio.TimerHandle | None = None  # its timer, once near
        self.duration_cut = False  # the deadline is a gRPC stream's duration (route_timeout)
        self.holds_request = False  # a circuit breaker request slot
        self.holds_retry = False  # and a retry slot
        self.peer_header: bytes | None = None  # the other side's x-envoy-peer-metadata
        self.generated_id: bytes | None = None  # the x-request-id the proxy made up
        self.details: str | None = None  # Envoy's response code details, where a local reply says
        self.grpc_request: bool | None = None  # content-type application/grpc; None: not read yet
        self.grpc_status: int | None = None  # the response's grpc-status, headers or trailers
        self.trace: SpanContext | None = None  # this hop's span, once forwarded (tracing/)
        self.done = False
        self._headers: Headers | None = None
        self.trailers: tuple[Header, ...] = ()  # the request's, until an upstream takes them

    @property
    def scheme(self) -> bytes:
        """b"https" on a TLS downstream connection, else b"http": what Envoy
        calls x-forwarded-proto, for routing (`:scheme`, require_tls) and forwarding.
        The connection's, set once when it is made: no per-request copy."""
        return self.down.scheme

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

    def is_grpc(self) -> bool:
        """Envoy's Grpc::Common::isGrpcRequestHeaders, read once (an express
        request's parse has read it)."""
        found = self.grpc_request
        if found is None:
            express = self.express
            if express is not None:
                found = express.grpc
            else:
                found = grpc.is_grpc_content_type(get_header(self.headers, b"content-type"))
            self.grpc_request = found
        return found

    def reported_grpc_status(self) -> int | None:
        """What Envoy's Grpc::Common::getGrpcStatus gives the access log and
        Istio's grpc_response_status: the grpc-status of the trailers or the
        headers, else the HTTP status mapped; None for a request that is not
        gRPC, or had no response."""
        if not self.is_grpc():
            return None
        if self.grpc_status is not None:
            return self.grpc_status
        return grpc.http_to_grpc(self.status) if self.status else None

    def take_body(self, body: bytes) -> None:
        """The whole request body, read with the head (the express way)."""
        if body:
            self.request_bytes = len(body)
            self.body.append(body)
        self.body_done = True
        self.core.on(REQUEST_END)

    # -- the request, from downstream -----------------------------------------------------

    def start(self) -> None:
        listener = self.down.listener
        table = self.down.runtime.config.snapshot.routes_of(listener)
        if table is None:
            self.local(404, b"", "NR")
            return
        # One random value per request, as Envoy's, drawn only when a runtime
        # fraction or weighted clusters will read it (~560 instructions).
        drawn = table.random
        rand = RANDBITS(64) if drawn else 0
        route = table.route(self, rand)
        if route is None:
            self.local(404, b"", "NR")
            return
        self.route = route
        configs = route.filter_configs
        cluster = ""
        action = route.action
        if isinstance(action, Forward):
            if not drawn and len(action.targets) > 1:
                rand = RANDBITS(64)
            self.target = action.pick(self, rand)
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
        commands = self.core.on(REQUEST_BODY)
        if not commands:
            return  # the exchange is over: read and dropped
        conn = self.conn
        if commands[0] == WRITE_UPSTREAM and conn is not None:
            conn.write(encode_chunk(data) if self.head.chunked else data)
            if not self.keep_body:
                return
        if self.body_overflow:
            return
        self.body.append(data)
        if self.request_bytes > MAX_BUFFERED_BODY:
            self.body_overflow = True
            self.core.replayable = False  # what was not kept cannot be sent again
            if not self.sent:
                self.down.pause_body()  # until an upstream takes the bytes

    def request_end(self, end: EndOfMessage) -> None:
        self.body_done = True
        self.trailers = end.trailers
        if self.core.on(REQUEST_END) and self.conn is not None and self.head.chunked:
            self.conn.write(encode_last_chunk(end.trailers))
        callbacks, self.on_body_done = self.on_body_done, ()
        for callback in callbacks:
            callback()

    def tunnel_data(self, data: bytes) -> None:
        self.request_bytes += len(data)
        commands = self.core.on(REQUEST_BODY)
        if commands and commands[0] == WRITE_UPSTREAM and self.conn is not None:
            self.conn.write(data)
        elif commands:
            self.body.append(data)

    def downstream_lost(self) -> None:
        self.feed(DOWNSTREAM_LOST)

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
        clusters, stats, name = runtime.config.snapshot.clusters, runtime.stats, target.cluster
        cluster, scope = LAST_CLUSTER.find(clusters, name, stats)
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
        if scope is None:  # made only once a request is let through, as before
            scope = stats.cluster(cluster.name)
            LAST_CLUSTER.keep(clusters, name, stats, cluster, scope)
        self.cluster_stats = scope
        retry = self.retry = action.retry
        retries = retries_allowed(retry, self.head.upgrade)
        self.keep_body = bool(retries or action.mirrors)
        if action.hash_key is not None:
            key = action.hash_key(self)
            self.hash_key = stable_hash(key) if key is not None else None
        self.upstream_head = self.build_head(action, target)
        if self.head.expect_continue and not self.body_done:
            self.down.write(self.down.writer.informational())  # Envoy answers 100-continue itself
        self.action = action
        commands = self.core.forward(
            retry, retries, mirror=bool(action.mirrors), deadline=bool(self.route_timeout(action)),
            try_timer=bool(per_try_timeout(retry)),
        )  # fmt: skip
        self.run(commands)

    def route_timeout(self, action: Forward) -> float | None:
        """The route's timeout; for a gRPC request on a route that honours
        grpc-timeout, Envoy's (grpc.route_timeout). As max_grpc_timeout it
        replaces the route timeout (the router's: UT, then UNAVAILABLE); as
        max_stream_duration.grpc_timeout_header_max, where Istio puts it
        inbound, it is the stream's duration, which ends otherwise
        (stream_duration_reached), as the route's max_stream_duration does
        when the request has no grpc-timeout for it."""
        cap = action.grpc_timeout_header_max
        if cap is None or not self.is_grpc():
            if action.max_stream_duration is None:  # most routes: no call for it
                return action.timeout
            return self.within_duration(action.timeout, action.max_stream_duration)
        header = grpc.parse_timeout(get_header(self.headers, b"grpc-timeout"))
        timeout = grpc.route_timeout(header, cap, action.grpc_timeout_header_offset)
        if not action.stream_grpc_timeout:
            return self.within_duration(timeout, action.max_stream_duration)
        if header is None:
            timeout = action.max_stream_duration
        return self.within_duration(action.timeout, timeout)

    def within_duration(self, timeout: float | None, duration: float | None) -> float | None:
        """The sooner of the router's timeout and the stream's duration
        limit; the exchange's deadline then ends as the limit says."""
        if duration is not None and (timeout is None or duration < timeout):
            self.duration_cut = True
            return duration
        return timeout

    def tells_grpc_timeout(self, action: Forward) -> bool:
        """Under max_grpc_timeout Envoy rewrites a gRPC request's grpc-timeout
        to the time it gives the upstream (capped, or a try's), so the
        server knows its real deadline."""
        return (
            action.grpc_timeout_header_max is not None
            and not action.stream_grpc_timeout
            and self.is_grpc()
        )

    def tell_grpc_timeout(self, headers: Headers, action: Forward) -> None:
        seconds = grpc.expected_timeout(self.route_timeout(action), per_try_timeout(action.retry))
        if seconds is not None:
            filters.base.set_header(headers, b"grpc-timeout", grpc.format_timeout(seconds))

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
            self.down.write(self.down.writer.informational())  # or the client never sends the body
        self.on_body_done = (*self.on_body_done, lambda: self.forward(action))

    def request_timed_out(self) -> None:
        """The listener's request_timeout passed before the whole request came:
        Envoy's local reply, 408 `request timeout`."""
        self.details = "request_overall_timeout"
        self.local(408, b"request timeout", "")

    def stream_idle_timed_out(self) -> None:
        """No byte moved either way for the listener's stream_idle_timeout:
        Envoy's 408 (request incomplete) or 504 `stream timeout`, flag SI; a
        response already begun is cut short."""
        self.details = "stream_idle_timeout"
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
            and not self.is_grpc()  # te: trailers and grpc-timeout (tell_grpc_timeout)
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
        if self.tells_grpc_timeout(action):
            self.tell_grpc_timeout(headers, action)
        if tracing is not None:
            self.trace = trace_request(headers, tracing)
        self.forwarded_headers, self.upstream_path = headers, path
        return serialize_request_head(self.method, path, headers, chunked=self.head.chunked)

    def express_head(self, req: ExpressRequest, path: bytes) -> bytes:
        """What forwarding_headers and build_head make, from the head's bytes:
        the header lines as received, less the cut ones, plus the added ones;
        in one join of a tuple of ten pieces (no list to grow)."""
        down = self.down
        if down.mesh_peer:
            self.peer_header = req.peer
        if down.listener.inbound:
            own, own_xff = b"", XFF_LINE
        else:
            runtime = down.runtime
            own, own_xff = runtime.peer_lines, runtime.peer_lines_xff
        lead, xff, middle, request_id, end = head_tail(
            self.additions(req.forwarded_for, req.has_proto, req.has_request_id), own, own_xff
        )
        version = _VERSION if req.host is not None else _VERSION_HOST + self.authority
        # The client's metadata-exchange headers never go on: outbound, this
        # proxy says who the caller is; inbound, the app has no use for them.
        lines = splice(req.lines, req.cuts + req.peer_cuts if req.peer_cuts else req.cuts)
        return b"".join(
            (self.method, b" ", path, version, lines, lead, xff, middle, request_id, end)
        )

    def forwarding_headers(self, authority: bytes) -> Headers:
        """The request's headers for the upstream, in one pass: Host first,
        hop-by-hop and Expect gone (the proxy answers 100-continue itself)
        but for `te: trailers` (grpc.keeps_te), x-forwarded-for appended to,
        x-forwarded-proto and x-request-id added when absent."""
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
        headers += addition_headers(
            self.additions(xff, proto is not None, request_id_seen is not None)
        )
        if grpc.keeps_te(self.headers):
            headers.append(grpc.TE_TRAILERS)
        return headers

    def additions(self, xff: bytes | None, has_proto: bool, has_request_id: bool) -> Additions:
        """The forwarding policy's additions for this request (proxy/forwarding.py)."""
        down = self.down
        http = down.listener.http
        added = request_additions(
            xff, has_proto, has_request_id, CLIENT_ADDRESS.encode(self.source_ip), down.scheme,
            not http.skip_xff_append, REQUEST_IDS if http.generate_request_id else None,
        )  # fmt: skip
        self.generated_id = added[2]
        return added

    # -- the core's commands --------------------------------------------------------------

    def feed(self, event: int, outcome: str | int = "", grpc_status: int | None = None) -> None:
        """Hand `event` to the exchange core and carry out its commands."""
        for command in self.core.on(event, outcome, grpc_status):
            carry_out(self, command)

    def run(self, commands: tuple[int, ...]) -> None:
        for command in commands:
            carry_out(self, command)

    def mirror_now(self) -> None:
        """Mirror the request now if its body is complete, else when it is."""
        action = self.action
        if action is None or not action.mirrors:
            return
        fired = [p for p in action.mirrors if p.fires(RNG.getrandbits(64))]
        if fired and self.body_done:
            self.send_mirrors(fired)
        elif fired:
            self.on_body_done = (*self.on_body_done, lambda: self.send_mirrors(fired))

    def send_mirrors(self, policies: list[MirrorPolicy]) -> None:
        if self.body_overflow:
            return  # not kept whole: no copy can be made
        request = MirrorRequest(
            self.method, self.upstream_path, self.authority, self.forwarded_headers,
            b"".join(self.body),
        )  # fmt: skip
        runtime = self.down.runtime
        for policy in policies:
            cluster = runtime.config.snapshot.clusters.get(policy.cluster)
            send_mirror(runtime.pool, cluster, request, policy)

    def start_deadline(self) -> None:
        action = self.action
        timeout = self.route_timeout(action) if action is not None else None
        if timeout:
            now = MONOTONIC()
            self.deadline_at = now + timeout
            self.arm_deadline(now, PRECISE_WITHIN_S)

    def pick_host(self) -> None:
        self.timer = None
        cluster, retry = self.cluster, self.retry
        assert cluster is not None
        exclude = self.tried if retry is not None and retry.previous_hosts else None
        attempts = retry.host_selection_max_attempts if retry is not None else 1
        host = cluster.pick(self.hash_key, exclude, retries=attempts)
        if host is None:
            self.feed(NO_HOST)
            return
        self.host = self.last_host = host
        if exclude is not None:
            self.tried = {*self.tried, host}
        host.request_started()
        scope = self.cluster_stats
        if scope is not None:  # a field read, where stat() is a getattr and a setattr by name
            scope.upstream_rq_total += 1
        self.feed(HOST_PICKED)

    def start_try_timer(self) -> None:
        seconds = per_try_timeout(self.retry)
        if seconds:
            self.try_timer = self.down.runtime.loop.call_later(seconds, self.on_try_timeout)

    def open_connection(self) -> None:
        host, cluster = self.host, self.cluster
        assert host is not None and cluster is not None
        h2_client = self.head.version == b"2"
        if not self.down.runtime.pool.request(host, cluster, self, h2_client=h2_client):
            host.request_finished()
            self.host = None
            self.feed(OVERFLOW)

    def leave_queue(self) -> None:
        if self.host is not None:
            self.down.runtime.pool.cancel(self.host, self)

    def send_request(self) -> None:
        conn = self.conn
        assert conn is not None
        self.sent = True
        self.upstream_tls = conn.tls
        if self.body or self.head.chunked or self.body_overflow:
            data = self.upstream_head + self.pending_body()
        else:  # nothing to frame or resume: no join of an empty list, no copy of the head
            data = self.upstream_head
        conn.send(self, self.method, data)

    def close_connection(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    def release_connection(self) -> None:
        """The response is through: the connection goes back to the pool,
        unless the upstream answered before the whole request came."""
        conn, self.conn = self.conn, None
        if conn is not None:
            if self.core.request_done:
                # One clock read for the connection's idle stamp, the metrics'
                # duration and the client connection's idle stamp (finish):
                # about 270 instructions each.
                now = self.ended = MONOTONIC()
                self.down.runtime.pool.release(conn, now)
            else:
                conn.close()

    def return_connection(self) -> None:
        conn, self.late = self.late, None
        if conn is not None:
            self.down.runtime.pool.release(conn)

    def acquire_retry(self) -> None:
        """One retry slot at a time, as Envoy's circuit breakers count them."""
        assert self.cluster is not None
        breakers = self.cluster.breakers
        if self.holds_retry:
            breakers.release_retry()
            self.holds_retry = False
        if breakers.try_acquire_retry():
            self.holds_retry = True
            self.feed(RETRY_GRANTED)
        else:
            self.add_flag("UO")  # the breakers count upstream_rq_retry_overflow
            self.feed(RETRY_REFUSED)

    def start_backoff(self) -> None:
        retry = self.retry
        assert retry is not None
        self.stat("upstream_rq_retry")
        if self.host is not None:
            self.host.request_finished()
            self.host = None
        delay = backoff_delay(retry, self.core.attempt - 1, RNG.random())
        self.timer = self.down.runtime.loop.call_later(delay, self.on_backoff_elapsed)

    def on_backoff_elapsed(self) -> None:
        self.timer = None
        self.feed(BACKOFF_ELAPSED)

    def mark_exhausted(self) -> None:
        self.add_flag("URX")
        if self.core.retries_left <= 0:
            self.stat("upstream_rq_retry_limit_exceeded")

    def write_response(self) -> None:
        """The response head held by on_response_head or on_express_response."""
        held, self.held = self.held, None
        if self.holds_retry and "URX" not in self.flags:
            self.stat("upstream_rq_retry_success")
        if isinstance(held, ExpressResponse):
            self.respond_express(held)
        elif held is not None:
            self.emit(self.respond(held))

    def write_failure(self) -> None:
        flag = self.core.failure
        status, body = FAILURE_BODIES.get(flag, (503, b"upstream failure"))
        if flag == "UF" and self.transport_failure:
            body += b", transport failure reason: " + self.transport_failure.encode()
        self.reply = (status, body, flag, None)
        self.write_local()

    def cut_short(self) -> None:
        self.add_flag(self.core.failure)

    def cannot_carry(self) -> None:
        raise ExchangeStateError("a body command came without its bytes")

    def flag_dc(self) -> None:
        self.add_flag("DC")

    def close_downstream(self) -> None:
        self.down.close()

    def emit(self, data: bytes) -> None:
        """Write downstream, or add to the write on_response is gathering."""
        if self.outbox is not None:
            self.outbox.append(data)
        else:
            self.down.write(data)

    # -- tries ----------------------------------------------------------------------------

    def on_connection(self, conn: UpstreamConnection) -> None:
        if self.core.state == CONNECTING:
            self.conn = conn
        else:
            self.late = conn
        self.feed(CONNECTED)

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
            end = encode_last_chunk(self.trailers) if self.body_done else b""
            return encode_chunk(data) + end
        return data

    def on_connect_failure(self, timed_out: bool, reason: str | None = None) -> None:
        """`reason`: a failed TLS handshake's, as Envoy's upstream transport failure reason."""
        if self.core.state == CONNECTING:
            self.transport_failure = reason
            self.report(LocalOrigin.TIMEOUT if timed_out else LocalOrigin.CONNECT_FAILED)
        self.feed(CONNECT_FAILED)

    # -- the response, from upstream ------------------------------------------------------

    def on_response(self, events: list[ResponseEvent] | ExpressResponse) -> None:
        """The response's events from one read, written downstream in one write."""
        # isinstance, not `events.__class__`: compiled, a type comparison,
        # where reading __class__ is a generic attribute lookup (about 170).
        if isinstance(events, ExpressResponse):
            self.on_express_response(events)
            return
        assert isinstance(events, list)
        out: list[bytes] = []
        ended = False
        writer = self.down.writer
        self.outbox = out
        try:
            for event in events:
                kind = event.__class__
                if kind is bytes or kind is Tunnel:
                    data = event if kind is bytes else event.data  # type: ignore[union-attr]
                    assert isinstance(data, bytes)
                    self.core.on(RESPONSE_BODY)  # WRITE_DOWNSTREAM: into this write
                    self.response_bytes += len(data)
                    out.append(writer.data(data, self.response_chunked))
                elif kind is ResponseHead:
                    assert isinstance(event, ResponseHead)
                    if not self.on_response_head(event):
                        return
                else:
                    assert isinstance(event, EndOfMessage)
                    if event.trailers and self.is_grpc():
                        self.grpc_status = grpc.status_of(event.trailers)
                    out.append(writer.end(event.trailers, self.response_chunked))
                    ended = not self.tunnel  # a tunnel ends when either side closes
        finally:
            self.outbox = None
        if out:
            self.down.write(out[0] if len(out) == 1 else b"".join(out))
        if ended:
            self.feed(RESPONSE_END)

    def on_express_response(self, resp: ExpressResponse) -> None:
        """A response head with its Content-Length body, or the start of it,
        from one read; the connection counts the rest of the body in."""
        target = self.target
        if (
            (self.fx is not None and self.fx.encoders)
            or (target and target.response_headers)
            # The head as received is HTTP/1.1's. An express request came
            # over HTTP/1.1 (only server.Downstream parses them): no need to
            # read its writer (a generic attribute read through the union).
            or (self.express is None and not self.down.writer.express)
        ):
            self.on_response(express_events(resp))
            return
        self.take_response_head(resp, resp.status, resp.keep_alive)
        # The length narrowed to an int: compiled, `len(...) == an int | None`
        # is a generic comparison of two objects.
        length = resp.content_length
        if self.core.state == RESPONDING and length is not None and len(resp.body) == length:
            self.feed(RESPONSE_END)

    def respond_express(self, resp: ExpressResponse) -> None:
        """respond()'s policy applied to the header lines as received."""
        self.status, self.responding = resp.status, True
        if self.is_grpc():
            self.grpc_status = grpc.status_of(resp.headers())
        down = self.down
        inbound, peer_lines = down.listener.inbound, down.runtime.peer_lines
        cut, add_own = response_peers(inbound, bool(peer_lines))
        cuts = resp.cuts
        if cut and resp.peer_cuts:
            cuts = cuts + resp.peer_cuts
        if cut and not inbound:
            self.peer_header = resp.peer
        lines = splice(resp.lines, cuts)
        if add_own:
            lines += peer_lines
        # Most responses carry no flags and keep the connection: no list of
        # additions to build and encode.
        if self.flags or not self.keep_alive:
            lines += encode_lines(response_additions(self.flags, not self.keep_alive))
        body = resp.body
        self.response_bytes = len(body)
        self.emit(b"".join((status_line(resp.status), lines, b"\r\n\r\n", body)))

    def on_response_head(self, head: ResponseHead) -> bool:
        """Whether the response goes on; an interim (1xx) head is dropped: the
        client got its 100 Continue from the proxy already."""
        if head.status < 200 and head.status != 101:
            return True
        if head.upgrade and not self.head.upgrade:
            # A switch the request did not ask for: forwarded, the client would
            # take the connection as switched while the proxy reads it as HTTP.
            self.report(LocalOrigin.RESET)
            self.feed(UPSTREAM_RESET, "UPE")
            return False
        if head.upgrade:
            self.report(head.status)
            self.held = head
            self.feed(SWITCHED)
            return True
        self.take_response_head(head, head.status, head.keep_alive)
        return self.core.state == RESPONDING

    def take_response_head(
        self, head: ResponseHead | ExpressResponse, status: int, keep_alive: bool
    ) -> None:
        """A final response came: report it; the core takes it, or drops it to
        retry. Without keep-alive its connection goes once the response is through."""
        if not keep_alive and self.conn is not None:
            self.conn.reusable = False
        grpc_status = None
        # Only a gRPC call's answer is read for one (Envoy's router reads it
        # for outlier detection and retries): a plain response's header lines
        # are never split on the hot path for a status it cannot have.
        if self.is_grpc():
            grpc_status = grpc.status_of(
                head.headers if isinstance(head, ResponseHead) else head.headers()
            )
        self.report(status, grpc_status)
        self.held = head
        self.feed(RESPONSE_HEAD, status, grpc_status)
        self.held = None

    def respond(self, head: ResponseHead) -> bytes:
        self.status, self.responding = head.status, True
        self.tunnel = head.upgrade
        if self.tunnel:
            self.keep_alive = False
        headers = [(n.lower(), v) for n, v in strip_hop_by_hop(head.headers, tunnel=self.tunnel)]
        if self.is_grpc():
            self.grpc_status = grpc.status_of(headers)
        inbound, peer_headers = self.down.listener.inbound, self.down.runtime.peer_headers
        cut, add_own = response_peers(inbound, bool(peer_headers))
        if cut:
            peer = take_peer(headers)
            if not inbound:
                self.peer_header = peer
        if add_own:
            headers += peer_headers
        assert self.target is not None
        self.target.response_headers.apply(headers)
        if self.fx is not None:
            self.down.listener.http.filters.encode(self.fx, headers)
        headers += response_additions(self.flags, not self.keep_alive and not self.tunnel)
        bodyless = self.method == b"HEAD" or head.status in (204, 304) or self.tunnel
        self.response_chunked = not bodyless and head.content_length is None
        return self.down.writer.head(head.status, headers, self.response_chunked)

    def on_upstream_error(self, error: ProtocolError) -> None:
        self.conn = None  # closed by the pool already
        if error.flag == "UF":  # the server refused our certificate (see pool.py)
            self.transport_failure = error.reason
        if self.core.state == SENT:
            self.report(LocalOrigin.RESET)
            self.stat("upstream_rq_rx_reset")
        self.feed(UPSTREAM_RESET, error.flag)

    def on_flow(self, paused: bool) -> None:
        if paused:
            self.down.pause_body()
        else:
            self.down.resume_body()

    # -- timers -------------------------------------------------------------------------

    def on_try_timeout(self) -> None:
        self.try_timer = None
        self.stat("upstream_rq_per_try_timeout")
        self.report(LocalOrigin.TIMEOUT)
        self.feed(TRY_TIMEOUT)

    def on_deadline(self) -> None:
        self.deadline = None
        self.deadline_at = 0.0
        if self.duration_cut:
            self.stream_duration_reached()
            return
        self.stat("upstream_rq_timeout")
        if self.host is not None:
            self.report(LocalOrigin.TIMEOUT)
        self.feed(DEADLINE)

    def stream_duration_reached(self) -> None:
        """Envoy's onStreamMaxDurationReached: a local reply, 504 (408 while
        the request is still coming), DEADLINE_EXCEEDED to a gRPC caller, flag DT."""
        self.http_stat("downstream_rq_max_duration_reached")
        self.details = "max_duration_timeout"
        grpc_caller = self.is_grpc()
        deadline_exceeded = (
            [(b"grpc-status", b"%d" % grpc.DEADLINE_EXCEEDED)] if grpc_caller else None
        )
        status = 504 if self.body_done else 408
        self.local(status, b"downstream duration timeout", "DT", deadline_exceeded)

    def cancel_try_timer(self) -> None:
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None

    def report(self, result: int, grpc_status: int | None = None) -> None:
        """A try's outcome for the host's health. A trailers-only grpc-status
        counts as its HTTP equivalent (UNAVAILABLE as 503, as Envoy's outlier
        detection has it); the status code stats keep the HTTP status."""
        if self.cluster is not None and self.host is not None:
            health = result if grpc_status is None else grpc.grpc_to_http(grpc_status)
            self.cluster.report(self.host, health)
            if result >= 0 and self.cluster_stats is not None:
                count_status(self.cluster_stats, result)

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
        self.reply = (status, body, flag, headers)
        self.feed(LOCAL_REPLY)

    def write_local(self) -> None:
        reply, self.reply = self.reply, None
        assert reply is not None
        status, body, flag, headers = reply
        self.add_flag(flag)
        if flag in LOCAL_REPLY_STATS:
            self.http_stat(LOCAL_REPLY_STATS[flag])
        out = list(headers or ())
        if self.fx is not None and headers is None:
            self.down.listener.http.filters.encode(self.fx, out)
        out += response_additions(self.flags, close=False)  # error_response says close
        if self.is_grpc():  # a gRPC caller reads grpc-status, not the HTTP status
            status, out, body = grpc.local_reply(status, body, out)
            self.grpc_status = grpc.status_of(out)
        self.status, self.responding = status, True
        expects_body = self.head.chunked or (self.head.content_length or 0) > 0
        self.keep_alive = self.keep_alive and (self.body_done or not expects_body)
        if self.method == b"HEAD":
            body = b""
        self.response_bytes = len(body)
        self.down.write(self.down.writer.local_reply(status, body, out, not self.keep_alive))

    def finish(self) -> None:
        """Once, however the exchange ended: release what it holds, record it."""
        if self.done:
            return
        self.done = True
        # Each timer on its own: a loop over a tuple of them is a tuple and
        # an iterator built per request.
        if self.timer is not None:
            self.timer.cancel()
        if self.try_timer is not None:
            self.try_timer.cancel()
        if self.deadline is not None:
            self.deadline.cancel()
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
        now = self.ended or MONOTONIC()
        self.down.runtime.observe(self, now)
        self.down.exchange_done(self, now)


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


_REWRITTEN: Final = frozenset(
    {b"host", b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id"}
)
PEER_HEADERS: Final = frozenset({PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER})
