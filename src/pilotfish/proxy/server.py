"""The data path: downstream HTTP/1.1 connections, and one exchange per request.

A `Downstream` parses requests with httptools callbacks; each request becomes
an `Exchange` that routes it, picks a host, borrows an upstream connection
and streams both bodies through with flow control in both directions
(a paused side pauses reading on the other). Responses the proxy answers
itself carry Envoy's response flags.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass

import httptools

from pilotfish.proxy.config import ProxyConfig
from pilotfish.proxy.listeners import CompiledListener
from pilotfish.proxy.pool import Pool, UpstreamConnection
from pilotfish.proxy.protocol.http1 import (
    CONTINUE_RESPONSE,
    LAST_CHUNK,
    Headers,
    encode_chunk,
    error_response,
    get_header,
    serialize_request_head,
    serialize_response_head,
    split_target,
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
from pilotfish.proxy.stats import HttpStats, StatsRegistry
from pilotfish.proxy.telemetry import (
    UNKNOWN_SERVICE,
    UNKNOWN_WORKLOAD,
    Telemetry,
    service_from_cluster_name,
)
from pilotfish.proxy.upstream import Cluster

MAX_BUFFERED_BODY = 64 * 1024  # request bytes kept for retries; beyond it, no retry
GATEWAY_ERRORS = frozenset({502, 503, 504})
CONNECT_FAILURE = b"upstream connect error or disconnect/reset before headers. reset reason: "
FAILURES = {
    "UH": (503, b"no healthy upstream"),
    "UF": (503, CONNECT_FAILURE + b"connection failure"),
    "UC": (503, CONNECT_FAILURE + b"connection termination"),
    "UPE": (503, b"upstream protocol error"),
}
# Why a try did not answer: a response flag, or a status to retry on.
Failure = str | int


@dataclass
class Runtime:
    """What every connection of the proxy shares."""

    config: ProxyConfig
    pool: Pool
    telemetry: Telemetry
    stats: StatsRegistry
    draining: bool = False

    @property
    def connections(self) -> int:
        return sum(h.downstream_cx_active for h in self.stats.http_managers.values())


class Downstream(asyncio.Protocol):
    """One client connection. Requests are answered in order; a pipelined
    request waits (reading paused) until the one before it is done."""

    def __init__(self, runtime: Runtime, listener: CompiledListener) -> None:
        self.runtime, self.listener = runtime, listener
        self.stats: HttpStats = runtime.stats.http(listener.http.stat_prefix)
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = "-"
        self.url = b""
        self.headers: Headers = []
        self.header_bytes = 0
        self.current: Exchange | None = None
        self.queued: deque[Exchange] = deque()
        self.requests = 0

    def __repr__(self) -> str:
        return f"<Downstream {self.peer} on {self.listener.name} requests={self.requests}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "-"
        self.stats.downstream_cx_total += 1
        self.stats.downstream_cx_active += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.downstream_cx_active -= 1
        for exchange in (self.current, *self.queued):
            if exchange is not None:
                exchange.downstream_lost()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.reject(501, b"upgrade is not supported yet\n", "DPE")
        except httptools.HttpParserError as e:
            status = 431 if self.header_bytes > self.listener.http.max_request_headers else 400
            self.reject(status, f"bad request: {e}\n".encode(), "DPE")

    def pause_writing(self) -> None:
        if self.current is not None:
            self.current.pause_upstream_reading()

    def resume_writing(self) -> None:
        if self.current is not None:
            self.current.resume_upstream_reading()

    def reject(self, status: int, body: bytes, flags: str) -> None:
        """Malformed input: answer and close; nothing reaches an upstream."""
        if self.transport is not None and not self.transport.is_closing():
            if self.current is None:
                self.transport.write(local_response(status, body, flags, close=True))
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url, self.headers, self.header_bytes = b"", [], 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.listener.http.max_request_headers:
            raise httptools.HttpParserError("request headers too large")
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.requests += 1
        exchange = Exchange(
            self, self.parser.get_method(), self.url, self.headers, self.parser.should_keep_alive()
        )
        if self.current is None:
            self.current = exchange
            exchange.start()
        else:
            self.queued.append(exchange)
            self.pause_reading()

    def on_body(self, data: bytes) -> None:
        exchange = self.queued[-1] if self.queued else self.current
        if exchange is not None:
            exchange.request_body(data)

    def on_message_complete(self) -> None:
        exchange = self.queued[-1] if self.queued else self.current
        if exchange is not None:
            exchange.request_end()

    # used by exchanges
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def finished(self, exchange: Exchange, keep_alive: bool) -> None:
        """The response is written: start the next request, or close."""
        if not keep_alive or self.runtime.draining:
            if self.transport is not None:
                self.transport.close()
            return
        self.current = self.queued.popleft() if self.queued else None
        if self.current is not None:
            self.current.start()
        if not self.queued:
            self.resume_reading()


class Exchange:
    """One request: route, pick, forward with retries, stream the response."""

    def __init__(
        self, down: Downstream, method: bytes, url: bytes, headers: Headers, keep_alive: bool
    ) -> None:
        self.down, self.method, self.keep_alive = down, method, keep_alive
        authority, self.path = split_target(url)
        self.authority = authority if authority is not None else get_header(headers, b"host") or b""
        self.headers = headers
        self.scheme = b"http"
        self.source_ip = down.peer
        self.started = time.monotonic()
        self.body: list[bytes] = []
        self.body_size = 0
        self.body_done = False
        self.body_overflow = False
        self.chunked_request = any(n == b"transfer-encoding" for n, _ in headers)
        self.upstream: UpstreamConnection | None = None
        self.response_started = False
        self.response_chunked = False
        self.head_future: asyncio.Future[tuple[int, Headers] | str] | None = None
        self.done_future: asyncio.Future[str] | None = None
        self.status = 0
        self.flags = ""
        self.cluster = ""
        self.host = ""
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Exchange {self.method.decode()} {self.authority.decode()}{self.path.decode()}>"

    # downstream events
    def start(self) -> None:
        self.task = asyncio.ensure_future(self.run())

    def request_body(self, data: bytes) -> None:
        self.body_size += len(data)
        if self.upstream is not None and self.upstream.sink is self:
            self.upstream.write(encode_chunk(data) if self.chunked_request else data)
        if not self.body_overflow:
            self.body.append(data)
            if self.body_size > MAX_BUFFERED_BODY:
                self.body_overflow = True
                if self.upstream is None:
                    self.down.pause_reading()  # until an upstream takes the bytes

    def request_end(self) -> None:
        self.body_done = True
        if self.upstream is not None and self.upstream.sink is self and self.chunked_request:
            self.upstream.write(LAST_CHUNK)

    def downstream_lost(self) -> None:
        self.flags = self.flags or "DC"
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.upstream is not None:
            self.upstream.close()

    # the request's life
    async def run(self) -> None:
        try:
            await self._handle()
        except asyncio.CancelledError:
            pass
        finally:
            self.record()

    async def _handle(self) -> None:
        snapshot = self.down.runtime.config.snapshot
        table = snapshot.routes_of(self.down.listener)
        route = table.route(self, random.getrandbits(64)) if table is not None else None
        if route is None:
            return self.local(404, b"", "NR")
        action = route.action
        if isinstance(action, DirectResponse):
            return self.local(action.status, action.body, "")
        if isinstance(action, Redirect):
            return self.local(action.status, b"", "", [(b"location", action.location(self))])
        await self.forward(route, action)

    async def forward(self, route: Route, action: Forward) -> None:
        target = action.pick(self, random.getrandbits(64))
        self.cluster = target.cluster
        cluster = self.down.runtime.config.snapshot.clusters.get(target.cluster)
        if cluster is None:
            return self.local(action.cluster_not_found_status, b"", "NC")
        head = self.upstream_head(action, target)
        retry = action.retry
        attempts = 1 + (retry.num_retries if retry is not None else 0)
        try:
            async with asyncio.timeout(action.timeout):
                for attempt in range(attempts):
                    may_retry = retry is not None and attempt + 1 < attempts and self.replayable()
                    failure = await self.attempt(cluster, head, retry if may_retry else None)
                    if failure is None:
                        return
                    if not may_retry or not retriable(failure, retry):  # type: ignore[arg-type]
                        return self.fail(failure)
                    self.flags = "URX"
                    await asyncio.sleep(backoff(retry, attempt))  # type: ignore[arg-type]
        except TimeoutError:
            self.timed_out()

    async def attempt(
        self, cluster: Cluster, head: bytes, retry: RetryPolicy | None
    ) -> Failure | None:
        """One try. None: the response went downstream. Otherwise why not: a
        response flag, or a status `retry` asks to retry (not forwarded)."""
        host = cluster.pick()
        if host is None:
            return "UH"
        self.host = str(host)
        try:
            self.upstream = await self.down.runtime.pool.acquire(host, cluster.spec.connect_timeout)
        except (OSError, TimeoutError):
            return "UF"
        loop = asyncio.get_running_loop()
        self.head_future, self.done_future = loop.create_future(), loop.create_future()
        self.upstream.send(self, head + self.buffered_body())
        outcome = await self.head_future
        if isinstance(outcome, str):
            return outcome
        status, headers = outcome
        if retry is not None and retriable(status, retry):
            self.upstream.close()
            return status
        self.start_response(status, headers)
        await self.done_future
        return None

    def replayable(self) -> bool:
        """The whole request body is still at hand, so another try can resend it."""
        return not self.body_overflow

    def buffered_body(self) -> bytes:
        if self.body_overflow:
            self.down.resume_reading()
        data = b"".join(self.body)
        if self.chunked_request:
            data = encode_chunk(data) + (LAST_CHUNK if self.body_done else b"")
        return data

    def upstream_head(self, action: Forward, target: Target) -> bytes:
        path = action.rewrite_path(self.path) if action.rewrite_path is not None else self.path
        headers = [h for h in strip_hop_by_hop(self.headers) if h[0] != b"host"]
        headers.insert(0, (b"host", target.host_rewrite or self.authority))
        self.add_forwarding_headers(headers)
        target.request_headers.apply(headers)
        return serialize_request_head(self.method, path, headers, chunked=self.chunked_request)

    def add_forwarding_headers(self, headers: Headers) -> None:
        http = self.down.listener.http
        names = {n for n, _ in headers}
        if not http.skip_xff_append:
            xff = next((v for n, v in headers if n == b"x-forwarded-for"), None)
            peer = self.source_ip.encode()
            headers[:] = [h for h in headers if h[0] != b"x-forwarded-for"]
            headers.append((b"x-forwarded-for", xff + b", " + peer if xff else peer))
        if b"x-forwarded-proto" not in names:
            headers.append((b"x-forwarded-proto", self.scheme))
        if http.generate_request_id and b"x-request-id" not in names:
            headers.append((b"x-request-id", str(uuid.uuid4()).encode()))
        if b"expect" in names:
            headers[:] = [h for h in headers if h[0] != b"expect"]
            self.down.write(CONTINUE_RESPONSE)  # Envoy answers 100-continue itself

    def fail(self, failure: Failure) -> None:
        if isinstance(failure, int):  # a retriable status, out of retries
            self.local(failure, b"", self.flags)
            return
        status, body = FAILURES.get(failure, (503, b"upstream failure"))
        self.local(status, body, f"{self.flags},{failure}" if self.flags else failure)

    def timed_out(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
        if self.response_started:
            self.flags = "UT"
            self.down.reject(504, b"", "UT")
        else:
            self.local(504, b"upstream request timeout", "UT")

    def local(self, status: int, body: bytes, flags: str, extra: Headers | None = None) -> None:
        self.status, self.flags = status, flags or self.flags
        close = not self.keep_alive
        self.down.write(local_response(status, body, self.flags, close=close, extra=extra))
        self.down.finished(self, self.keep_alive)

    # upstream events (ResponseSink)
    def on_response_head(self, status: int, headers: Headers, keep_alive: bool) -> None:
        if self.head_future is not None and not self.head_future.done():
            self.head_future.set_result((status, headers))

    def start_response(self, status: int, headers: Headers) -> None:
        self.status, self.response_started = status, True
        out = list(strip_hop_by_hop(headers))
        has_length = get_header(out, b"content-length") is not None
        bodyless = self.method == b"HEAD" or status in (204, 304) or 100 <= status < 200
        self.response_chunked = not has_length and not bodyless
        if not self.keep_alive:
            out.append((b"connection", b"close"))
        self.down.write(serialize_response_head(status, out, chunked=self.response_chunked))
        if self.method == b"HEAD" and self.upstream is not None:
            self.upstream.close()  # the parser cannot tell a HEAD response has no body
            self.on_response_end()

    def on_response_body(self, data: bytes) -> None:
        if self.response_started:
            self.down.write(encode_chunk(data) if self.response_chunked else data)

    def on_response_end(self) -> None:
        if self.done_future is None or self.done_future.done():
            return
        if self.response_chunked:
            self.down.write(LAST_CHUNK)
        if self.upstream is not None and self.body_done:
            self.down.runtime.pool.release(self.upstream)
        elif self.upstream is not None:
            self.upstream.close()
        self.done_future.set_result("")
        self.down.finished(self, self.keep_alive)

    def on_upstream_lost(self, error: str) -> None:
        flag = "UPE" if error == "protocol error" else "UC"
        if self.head_future is not None and not self.head_future.done():
            self.head_future.set_result(flag)
        elif self.done_future is not None and not self.done_future.done():
            self.flags = flag
            self.done_future.set_result(flag)
            self.down.reject(503, b"", flag)  # mid-response: all we can do is close

    def record(self) -> None:
        """Golden metrics; the destination workload is unknown until endpoints
        carry Istio's workload metadata."""
        elapsed_ms = (time.monotonic() - self.started) * 1000.0
        service = service_from_cluster_name(self.cluster) if self.cluster else UNKNOWN_SERVICE
        self.down.runtime.telemetry.outbound.record(
            UNKNOWN_WORKLOAD, service, self.status, self.flags, elapsed_ms, self.body_size, 0
        )

    def pause_reading_downstream(self) -> None:
        self.down.pause_reading()

    def resume_reading_downstream(self) -> None:
        self.down.resume_reading()

    def pause_upstream_reading(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_upstream_reading(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()


def local_response(
    status: int, body: bytes, flags: str, *, close: bool, extra: Headers | None = None
) -> bytes:
    """A response the proxy answers itself, with Envoy's response flags in
    x-pilotfish-flags."""
    headers = [(b"x-pilotfish-flags", flags.encode())] if flags else []
    return error_response(status, body, headers + (extra or []), close=close)


def backoff(retry: RetryPolicy, attempt: int) -> float:
    """Envoy's: fully jittered, up to base * 2^attempt, capped at max."""
    return random.uniform(0, min(retry.backoff_max, retry.backoff_base * (2**attempt)))


def retriable(failure: Failure, retry: RetryPolicy) -> bool:
    on = retry.retry_on
    if isinstance(failure, str):
        if failure == "UF":
            return bool(on & (RetryOn.CONNECT_FAILURE | RetryOn.GATEWAY_ERROR | RetryOn.FIVE_XX))
        return failure == "UC" and bool(
            on & (RetryOn.RESET | RetryOn.GATEWAY_ERROR | RetryOn.FIVE_XX)
        )
    return (
        (bool(on & RetryOn.FIVE_XX) and failure >= 500)
        or (bool(on & RetryOn.GATEWAY_ERROR) and failure in GATEWAY_ERRORS)
        or (bool(on & RetryOn.RETRIABLE_4XX) and failure == 409)
        or (bool(on & RetryOn.RETRIABLE_STATUS_CODES) and failure in retry.retriable_status_codes)
    )
