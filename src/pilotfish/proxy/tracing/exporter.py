"""Spans leave the proxy in batches over OTLP/HTTP (protobuf), off the
request path: a request hands its span to a bounded queue and returns; a
timer (or a full batch) sends what is queued, one POST at a time, with a
deadline. A slow or dead collector therefore costs requests nothing: while
a POST waits, spans queue up to the bound and then are dropped and counted
(`tracing.opentelemetry.spans_dropped`), so memory stays bounded too.

A request queues what its span is made of (`PendingSpan`); the OTLP
messages are built when the batch is sent, in a timer's callback rather
than in the request's.

Batching follows Envoy's OpenTelemetry tracer: a flush every 5 s, or sooner
once 5 spans wait (its `min_flush_spans`); the queue holds the provider's
`max_cache_size` spans (default 1024), one batch at most per POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from pilotfish.proxy.stats import TracingStats
from pilotfish.proxy.tracing.config import OtlpHttp
from pilotfish.proxy.tracing.spans import export_request

FLUSH_INTERVAL_S = 5.0
MIN_FLUSH_SPANS = 5
MAX_RESPONSE_HEAD = 16 * 1024
Resolve = Callable[[str], "tuple[str, int] | None"]  # a cluster's name -> one of its hosts
PendingSpan = Callable[[], Span]  # builds the span's message
Authorization = Callable[[], str]  # the header's value, read at each POST ("": none)


class OtlpExporter:
    """One collector's queue and sender, on the proxy's event loop."""

    def __init__(
        self,
        target: OtlpHttp,
        service: str,
        stats: TracingStats,
        resolve: Resolve | None = None,
        flush_interval: float = FLUSH_INTERVAL_S,
        authorization: Authorization | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`authorization`: for the control plane's receiver, the token the
        proxy shows it, re-read per POST as it rotates; `tls`: how to verify
        an https:// target."""
        self.target, self.service, self.stats = target, service, stats
        self.resolve, self.authorization, self.tls = resolve, authorization, tls
        self.max_queued, self.flush_interval = target.max_queued, flush_interval
        self.queue: list[PendingSpan] = []
        self.sending: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    def __repr__(self) -> str:
        return f"<OtlpExporter {self.target!r} queued={len(self.queue)}>"

    def add(self, span: PendingSpan) -> None:
        if len(self.queue) >= self.max_queued:
            self.stats.spans_dropped += 1
            return
        self.queue.append(span)
        if self.timer is None:
            self.timer = self.loop.call_later(self.flush_interval, self._on_timer)
        if len(self.queue) >= MIN_FLUSH_SPANS:
            self.flush()

    def _on_timer(self) -> None:
        self.timer = None
        if self.queue:
            self.stats.timer_flushed += 1
            self.flush()

    def flush(self) -> None:
        """Send what is queued, unless a POST is still out (the queue waits)."""
        if self.sending is not None or not self.queue:
            return
        batch, self.queue = self.queue, []
        self.sending = self.loop.create_task(self._send(batch))

    async def _send(self, batch: list[PendingSpan]) -> None:
        try:
            spans = [make() for make in batch]
            body = export_request(self.service, spans).SerializeToString()
            status = await asyncio.wait_for(self._post(body), self.target.timeout)
            if 200 <= status < 300:
                self.stats.spans_sent += len(batch)
                self.stats.reports_sent += 1
            else:
                self.stats.reports_failed += 1
        except (TimeoutError, OSError, ValueError):
            self.stats.reports_failed += 1
        finally:
            self.sending = None
        if len(self.queue) >= MIN_FLUSH_SPANS:
            self.flush()
        elif self.queue and self.timer is None:
            self.timer = self.loop.call_later(self.flush_interval, self._on_timer)

    async def _post(self, body: bytes) -> int:
        target = self.target
        found = self.resolve(target.cluster) if self.resolve and target.cluster else None
        host, port = found or (target.host, target.port)
        context = (self.tls or ssl.create_default_context()) if target.tls else None
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=target.host if context else None
        )
        try:
            headers = list(target.headers)
            authorization = self.authorization() if self.authorization else ""
            if authorization:
                headers.append(("authorization", authorization))
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
            writer.write(
                (
                    f"POST {target.path} HTTP/1.1\r\nhost: {target.host}:{target.port}\r\n"
                    f"content-type: application/x-protobuf\r\ncontent-length: {len(body)}\r\n"
                    f"{extra}connection: close\r\n\r\n"
                ).encode("latin-1")
                + body
            )
            await writer.drain()
            line = await reader.readline()
            parts = line.split(b" ", 2)
            if len(line) > MAX_RESPONSE_HEAD or len(parts) < 2 or not parts[1].isdigit():
                raise ValueError(f"not an HTTP response: {line[:80]!r}")
            return int(parts[1])
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.sending is not None:
            self.sending.cancel()
