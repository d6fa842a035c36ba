"""Tracing on the REST API's port, an `Api` extension: the OTLP/HTTP receiver
and Jaeger's query API over the span store.

    POST /v1/traces                        OTLP/HTTP export (protobuf or JSON, gzip allowed)
    GET  /api/traces?service=S&operation=&minDuration=&maxDuration=&status=error|ok
                     &start=US&end=US&tags={"k":"v"}&limit=20
                                           traces with a span that matches, newest first
    GET  /api/traces/TRACE_ID              one trace
    GET  /api/services                     services that reported spans
    GET  /api/services/S/operations        their operations

Who may post spans is decided in auth.py (loopback, the admin token, a
workload's service account token); the queries are reads.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from pilotfish.api.errors import MethodNotAllowed
from pilotfish.controlplane.api import Request, Response, encode
from pilotfish.objects import Obj
from pilotfish.rollout.metrics import parse_interval
from pilotfish.tracing import jaeger, otlp
from pilotfish.tracing.store import MAX_AGE_S, MAX_TRACES, Retention, SpanStore

log = logging.getLogger(__name__)

RECEIVER = "/v1/traces"
TRACES = "/api/traces"
SERVICES = "/api/services"


class TracesApi:
    def __init__(self, spans: SpanStore) -> None:
        self.spans = spans
        self.dropped = 0  # spans refused because their trace was full

    def __repr__(self) -> str:
        return f"TracesApi({self.spans!r})"

    def __call__(self, request: Request, path: str) -> Response | None:
        if path == RECEIVER:
            return self._receive(request)
        if path == TRACES or path.startswith(TRACES + "/"):
            return self._query(request, lambda: self._traces(request, path[len(TRACES) + 1 :]))
        if path == SERVICES:
            return self._query(request, lambda: jaeger.answer(self.spans.services()))
        if path.startswith(SERVICES + "/") and path.endswith("/operations"):
            service = path[len(SERVICES) + 1 : -len("/operations")]
            if service and "/" not in service:
                return self._query(request, lambda: jaeger.answer(self.spans.operations(service)))
        return None

    def _receive(self, request: Request) -> Response:
        """OTLP/HTTP: 200 with an ExportTraceServiceResponse; 400 or 415 with a
        google.rpc.Status, in the request's encoding; 405 for a method other than POST."""
        if request.method != "POST":
            raise MethodNotAllowed(f"{request.method} is not supported on {RECEIVER}; use POST")
        content_type = request.content_type
        encoding = request.header("content-encoding") or ""
        try:
            records = otlp.decode(request.body, content_type, encoding)
        except otlp.UnsupportedEncoding as e:
            return _otlp_error(415, str(e), content_type)
        except otlp.InvalidExport as e:
            return _otlp_error(400, str(e), content_type)
        dropped = self.spans.add(records)
        if dropped:
            self.dropped += dropped
            log.warning("dropped %d spans: their trace already holds the most kept", dropped)
        body, answer_type = otlp.success(content_type)
        return Response(200, body, answer_type)

    def _query(self, request: Request, build: Callable[[], Obj]) -> Response:
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{request.method} is not supported on {request.path}")
        try:
            return Response(200, encode(build()))
        except jaeger.BadQuery as e:
            return Response(400, encode(jaeger.error_answer(400, str(e))))
        except TraceNotFound as e:
            return Response(404, encode(jaeger.error_answer(404, str(e))))

    def _traces(self, request: Request, trace_id: str) -> Obj:
        if trace_id:
            if "/" in trace_id:
                raise TraceNotFound(f"no such path {request.path}")
            spans = self.spans.trace(jaeger.trace_id(trace_id))
            if not spans:
                raise TraceNotFound("trace not found")
            return jaeger.answer([jaeger.trace(spans)])
        found = self.spans.find(jaeger.parse_query(request.query))
        return jaeger.answer([jaeger.trace(spans) for spans in found])


class TraceNotFound(LookupError):
    pass


def _otlp_error(status: int, message: str, content_type: str) -> Response:
    body, answer_type = otlp.error_body(message, content_type)
    return Response(status, body, answer_type)


def add_trace_flags(parser: argparse.ArgumentParser) -> None:
    """The span store's retention, for `pilotfish controlplane` (Jaeger's
    --memory.max-traces and --badger.span-store-ttl)."""
    parser.add_argument(
        "--traces-max",
        type=_positive,
        default=MAX_TRACES,
        metavar="N",
        help=f"traces kept in DATA_DIR/traces.db, the oldest dropped first (default {MAX_TRACES})",
    )
    parser.add_argument(
        "--traces-ttl",
        type=_interval,
        default=MAX_AGE_S,
        metavar="DURATION",
        help="how long a trace is kept, a Go duration (default 72h)",
    )


def retention(args: argparse.Namespace) -> Retention:
    return Retention(max_traces=args.traces_max, max_age_s=args.traces_ttl)


def _positive(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f'"{text}": must be a whole number above 0')
    return int(text)


def _interval(text: str) -> float:
    try:
        return parse_interval(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
