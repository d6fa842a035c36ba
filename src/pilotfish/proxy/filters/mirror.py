"""Request mirroring (Envoy's request_mirror_policies): fire and forget.

The copy goes to the mirror cluster with `-shadow` on its authority once the
whole request body is at hand; its response is read and dropped, and nothing
about it (status, failure, slowness) reaches the caller. It takes a plain
`MirrorRequest`, what the request looks like as forwarded, not the exchange
it came from; a body larger than what the exchange keeps is not mirrored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pilotfish.proxy.protocol.express import ExpressResponse
from pilotfish.proxy.protocol.http1 import (
    EndOfMessage,
    Headers,
    ProtocolError,
    ResponseEvent,
    serialize_request_head,
)
from pilotfish.proxy.routing import MirrorPolicy, shadow_authority

if TYPE_CHECKING:
    from pilotfish.proxy.upstream import Cluster
    from pilotfish.proxy.upstream.pool import Pool, UpstreamConnection


@dataclass(frozen=True, slots=True)
class MirrorRequest:
    """A request as forwarded upstream: its path after any rewrite, the
    authority the client asked for, the forwarded headers, the whole body."""

    method: bytes
    path: bytes
    authority: bytes
    headers: Headers
    body: bytes


def mirror_bytes(request: MirrorRequest, policy: MirrorPolicy) -> bytes:
    """The copy, head and body, as the mirror cluster gets it."""
    authority = shadow_authority(request.authority) if policy.shadow_suffix else request.authority
    headers = [(b"host", authority)]
    headers += [h for h in request.headers if h[0] not in (b"host", b"content-length")]
    headers.append((b"content-length", b"%d" % len(request.body)))
    return serialize_request_head(request.method, request.path, headers) + request.body


class MirrorSink:
    """Takes a connection, sends the copy, drops the response."""

    def __init__(self, pool: Pool, method: bytes, data: bytes) -> None:
        self.pool, self.method, self.data = pool, method, data
        self.conn: UpstreamConnection | None = None

    def __repr__(self) -> str:
        return f"<MirrorSink {self.method.decode()} {len(self.data)} bytes>"

    def on_connection(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.send(self, self.method, self.data)

    def on_connect_failure(self, timed_out: bool, reason: str | None = None) -> None:
        pass  # the caller never hears of the mirror

    def on_response(self, events: list[ResponseEvent] | ExpressResponse) -> None:
        if self.conn is None:
            return
        if isinstance(events, ExpressResponse):
            ended = len(events.body) == events.content_length
        else:
            ended = any(e.__class__ is EndOfMessage for e in events)
        if ended:
            conn, self.conn = self.conn, None
            self.pool.release(conn)

    def on_upstream_error(self, error: ProtocolError) -> None:
        self.conn = None

    def on_flow(self, paused: bool) -> None:
        pass  # nothing to hold back: the copy is written whole


def send_mirror(
    pool: Pool, cluster: Cluster | None, request: MirrorRequest, policy: MirrorPolicy
) -> None:
    """Send the copy to a host of the mirror cluster, if it has one."""
    host = cluster.pick() if cluster is not None else None
    if cluster is not None and host is not None:
        pool.request(host, cluster, MirrorSink(pool, request.method, mirror_bytes(request, policy)))
