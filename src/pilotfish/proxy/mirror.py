"""Request mirroring (Envoy's request_mirror_policies): fire and forget.

The copy goes to the mirror cluster with `-shadow` on its authority once the
whole request body is at hand; its response is read and dropped, and nothing
about it (status, failure, slowness) reaches the caller. A body larger than
what the exchange keeps is not mirrored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pilotfish.proxy.protocol.express import ExpressResponse, express_events
from pilotfish.proxy.protocol.http1 import (
    EndOfMessage,
    ProtocolError,
    ResponseEvent,
    serialize_request_head,
)
from pilotfish.proxy.routing import MirrorPolicy, shadow_authority
from pilotfish.proxy.upstream.pool import UpstreamConnection

if TYPE_CHECKING:
    from pilotfish.proxy.exchange import Exchange
    from pilotfish.proxy.upstream.pool import Pool


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

    def on_response(self, events: list[ResponseEvent]) -> None:
        if self.conn is not None and any(e.__class__ is EndOfMessage for e in events):
            conn, self.conn = self.conn, None
            self.pool.release(conn)

    def on_express_response(self, resp: ExpressResponse) -> None:
        self.on_response(express_events(resp))

    def on_upstream_error(self, error: ProtocolError) -> None:
        self.conn = None

    def pause_reading_downstream(self) -> None:
        pass

    def resume_reading_downstream(self) -> None:
        pass


def send_mirror(ex: Exchange, policy: MirrorPolicy) -> None:
    """Mirror `ex` now if its body is complete, else when it is."""
    if ex.body_done:
        _send(ex, policy)
    else:
        ex.on_body_done = (*ex.on_body_done, lambda: _send(ex, policy))


def _send(ex: Exchange, policy: MirrorPolicy) -> None:
    runtime = ex.down.runtime
    cluster = runtime.config.snapshot.clusters.get(policy.cluster)
    if cluster is None or ex.body_overflow:
        return
    host = cluster.pick()
    if host is None:
        return
    authority = shadow_authority(ex.authority) if policy.shadow_suffix else ex.authority
    headers = [(b"host", authority)]
    headers += [h for h in ex.forwarded_headers if h[0] not in (b"host", b"content-length")]
    body = b"".join(ex.body)
    headers.append((b"content-length", b"%d" % len(body)))
    head = serialize_request_head(ex.method, ex.upstream_path, headers)
    runtime.pool.request(host, cluster, MirrorSink(runtime.pool, ex.method, head + body))
