"""The proxy's tracer: the two hooks the exchange calls, and the exporters.

`trace_request` runs when the request's headers are built for the upstream:
it reads the incoming context, decides sampling and writes this hop's
context on the forwarded request. `Tracer.finish` runs when the exchange is
recorded: a sampled span goes to its provider's exporter.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from pilotfish.proxy.accesslog import AccessRecord
from pilotfish.proxy.protocol.http1 import Headers
from pilotfish.proxy.stats import TracingStats
from pilotfish.proxy.telemetry import WorkloadInfo
from pilotfish.proxy.tracing.config import OtlpHttp, TracingConfig
from pilotfish.proxy.tracing.propagation import (
    SpanContext,
    decide,
    extract,
    inject,
    start_span,
)

if TYPE_CHECKING:  # spans and their exporter are imported with the first sampled span:
    # the OTLP messages cost a sidecar that traces nothing ~1 MiB (docs/benchmarks.md)
    from pilotfish.proxy.exchange import Exchange
    from pilotfish.proxy.tracing.exporter import Authorization, OtlpExporter, Resolve


def context_of(headers: Headers, tracing: TracingConfig) -> SpanContext:
    """This hop's span for a request with these (incoming) headers."""
    incoming = extract(headers)
    return start_span(incoming, decide(incoming, tracing.sampling))


def trace_request(headers: Headers, tracing: TracingConfig) -> SpanContext:
    """Decide this hop's span and put it on the forwarded `headers`."""
    span = context_of(headers, tracing)
    inject(headers, span)
    return span


class Tracer:
    """Exporters by collector, made on first use; `own`: who this proxy is."""

    def __init__(
        self,
        own: WorkloadInfo,
        node_id: str,
        stats: TracingStats,
        resolve: Resolve | None = None,
        control_plane: tuple[str, Authorization] = ("", str),
        mesh_id: str = "",
        root_pem: bytes | None = None,
    ) -> None:
        """`control_plane`: its API URL and the `authorization` header value the
        proxy presents to it (the ADS token, read per export as it rotates), sent
        with spans to that address only; `mesh_id`: the node metadata's MESH_ID,
        for `istio.mesh_id`; `root_pem`: the mesh root an https:// collector
        is verified against (the xDS server's), else the system's roots."""
        self.own, self.node_id, self.stats, self.resolve = own, node_id, stats, resolve
        self.control_plane, self.mesh_id = control_plane, mesh_id
        self.tls = ssl.create_default_context(cadata=root_pem.decode()) if root_pem else None
        self.exporters: dict[OtlpHttp, OtlpExporter] = {}

    def __repr__(self) -> str:
        return f"<Tracer {self.node_id} exporters={len(self.exporters)}>"

    def finish(
        self,
        ex: Exchange,
        tracing: TracingConfig,
        record: Callable[[], AccessRecord],
        elapsed: float,
    ) -> None:
        """Report a finished exchange's span if sampled. One answered before it
        was forwarded (a local reply) has no span yet: it is decided now.
        `record` makes the access record, only for a span that is reported."""
        if tracing.provider is None:
            return
        span = ex.trace or context_of(ex.headers, tracing)
        if not span.sampled:
            return
        from pilotfish.proxy.tracing.spans import Hop, build_span, operation_name

        listener = ex.down.listener
        done = record()
        operation = ex.route.operation if ex.route is not None else ""
        port = listener.port if listener.inbound else 0
        name = operation_name(operation, done.authority or "", port)
        where = Hop(self.own, self.node_id, listener.inbound, self.mesh_id)
        pending = partial(build_span, span, done, elapsed, where, name, tracing, ex.headers)
        self.exporter(tracing.provider).add(pending)

    def exporter(self, target: OtlpHttp) -> OtlpExporter:
        found = self.exporters.get(target)
        if found is None:
            from urllib.parse import urlsplit  # with ipaddress: only where spans are sent

            from pilotfish.proxy.tracing.exporter import OtlpExporter
            from pilotfish.proxy.tracing.spans import service_name

            service = service_name(target.service_name, self.own)
            api, authorization = self.control_plane
            parts = urlsplit(api)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            mine = (parts.hostname, port) == (target.host, target.port)
            found = OtlpExporter(
                target,
                service,
                self.stats,
                self.resolve,
                authorization=authorization if mine else None,
                tls=self.tls,
            )
            self.exporters[target] = found
        return found

    def close(self) -> None:
        for exporter in self.exporters.values():
            exporter.close()
