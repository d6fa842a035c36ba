"""The ext_authz filter's check request (a `Check` step), sent by the shell:
one HTTP/1.1 request to a host of the authorizer's cluster through the
upstream pool, its whole response handed back, or None on a failed
connection, a reset or no answer within the timeout. A gRPC check is one
unary call over a grpc.aio channel to the host (kept per address), its
response message handed back as the body of a 200.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from pilotfish.proxy.filters import Check, CheckResult
from pilotfish.proxy.protocol.express import ExpressResponse, express_events
from pilotfish.proxy.protocol.http1 import (
    EndOfMessage,
    ProtocolError,
    ResponseEvent,
    ResponseHead,
    serialize_request_head,
)
from pilotfish.proxy.upstream import Cluster, Host
from pilotfish.proxy.upstream.pool import Pool, UpstreamConnection

Done = Callable[[CheckResult | None], None]
MAX_CHECK_BODY = 64 * 1024  # an authorizer's denial body, kept for the client


class CheckCall:
    """A ResponseSink for one check: collects the response, reports once."""

    def __init__(self, pool: Pool, host: Host, method: bytes, data: bytes, done: Done) -> None:
        self.pool, self.host, self.done = pool, host, done
        self.method, self.data = method, data
        self.conn: UpstreamConnection | None = None
        self.head: ResponseHead | None = None
        self.body: list[bytes] = []
        self.timer: asyncio.TimerHandle | None = None
        self.reported = False

    def __repr__(self) -> str:
        return f"<CheckCall {self.host!r} reported={self.reported}>"

    def report(self, result: CheckResult | None) -> None:
        if self.reported:
            return
        self.reported = True
        if self.timer is not None:
            self.timer.cancel()
        self.done(result)

    def on_timeout(self) -> None:
        """No answer in time: the connection is not reused (its answer may still come)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        else:
            self.pool.cancel(self.host, self)
        self.report(None)

    def on_connection(self, conn: UpstreamConnection) -> None:
        if self.reported:
            self.pool.release(conn)
            return
        self.conn = conn
        conn.send(self, self.method, self.data)

    def on_connect_failure(self, timed_out: bool, reason: str | None = None) -> None:
        self.report(None)

    def on_response(self, events: list[ResponseEvent] | ExpressResponse) -> None:
        if isinstance(events, ExpressResponse):
            events = express_events(events)
        for event in events:
            if isinstance(event, ResponseHead):
                if event.status >= 200:
                    self.head = event
            elif isinstance(event, EndOfMessage):
                self._complete()
            elif isinstance(event, bytes) and sum(map(len, self.body)) < MAX_CHECK_BODY:
                self.body.append(event)

    def _complete(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.pool.release(conn)
        head = self.head
        if head is None:
            self.report(None)
            return
        headers = tuple((n.lower(), v) for n, v in head.headers)
        self.report(CheckResult(head.status, headers, b"".join(self.body)[:MAX_CHECK_BODY]))

    def on_upstream_error(self, error: ProtocolError) -> None:
        self.conn = None
        self.report(None)

    def on_flow(self, paused: bool) -> None:
        pass  # the check's request is written whole


def send_check(
    loop: asyncio.AbstractEventLoop, pool: Pool, cluster: Cluster | None, check: Check, done: Done
) -> CheckCall | None:
    """Start `check`; `done` is called once with its result. None (and
    `done(None)` at once) when the cluster is missing or has no host."""
    host = cluster.pick() if cluster is not None else None
    if cluster is None or host is None:
        done(None)
        return None
    if check.grpc:
        task = loop.create_task(_grpc_check(host, check, done))
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)
        return None
    headers = [*check.headers, (b"content-length", b"%d" % len(check.body))]
    data = serialize_request_head(check.method, check.path, headers) + check.body
    call = CheckCall(pool, host, check.method, data, done)
    call.timer = loop.call_later(check.timeout, call.on_timeout)
    if not pool.request(host, cluster, call):
        call.report(None)  # the circuit breakers refused
    return call


if TYPE_CHECKING:  # imported by the first gRPC check: ~14 MiB a sidecar without one never needs
    import grpc

_CHANNELS: dict[tuple[str, int, bytes], grpc.aio.Channel] = {}
_RUNNING: set[asyncio.Task[None]] = set()  # held so that they are not collected mid-call


def _identity(data: bytes) -> bytes:
    return data


async def _grpc_check(host: Host, check: Check, done: Done) -> None:
    """One unary call; its answer, or None on any failure or the deadline."""
    import grpc

    authority = dict(check.headers).get(b":authority", b"")
    key = (host.address, host.port, authority)
    channel = _CHANNELS.get(key)
    if channel is None:
        options = [("grpc.default_authority", authority.decode())] if authority else []
        channel = _CHANNELS[key] = grpc.aio.insecure_channel(
            f"{host.address}:{host.port}", options=options
        )
    call = channel.unary_unary(
        check.path.decode(), request_serializer=_identity, response_deserializer=_identity
    )
    try:
        answer = await call(check.body, timeout=check.timeout)
    except (TimeoutError, grpc.aio.AioRpcError):
        done(None)
        return
    done(CheckResult(200, (), bytes(answer)))
