"""The dashboard's paths on the REST API's port, an `Api` extension:

    GET /dashboard/                      the pages (static HTML, JS, CSS)
    GET /dashboard/api/graph?window=1m&label=rps|errors|p99
                                         nodes and edges with rate, errors, p50/p90/p99, mTLS,
                                         and the graph drawn as SVG, edges labelled with `label`
    GET /dashboard/api/graph/stream      the same, pushed every STREAM_PERIOD_S (server-sent events)
    GET /dashboard/api/stat?kind=workloads&name=&from=&to=&namespace=&window=1m
                                         `pilotfish stat`'s rows
    GET /dashboard/api/config            every mesh object with its analysis and validation messages
    GET /dashboard/api/timeline?namespace=NS&workload=W|service=S&window=15m
                                         golden metrics per slot, for a page's charts
    GET /dashboard/api/waterfall?traceID=ID
                                         one trace (Jaeger's JSON) and its waterfall as SVG

Reads, so open to loopback callers without a token as the rest of the API's are.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any, Protocol

from pilotfish.api.errors import ApiError, BadRequest, MethodNotAllowed, NotFound
from pilotfish.controlplane.api import Request, Response, encode
from pilotfish.dashboard import waterfall
from pilotfish.dashboard.graph import build_graph, metrics
from pilotfish.dashboard.series import RETENTION_S, Edge
from pilotfish.dashboard.stat import KINDS, row, stat_rows
from pilotfish.dashboard.svg import draw
from pilotfish.model.types import Instance
from pilotfish.rollout.metrics import parse_interval
from pilotfish.rollout.metrics.builtin import Totals
from pilotfish.rollout.metrics.prometheus import QueryError
from pilotfish.rollout.status import CanaryStatus

Json = dict[str, Any]
PREFIX = "/dashboard"
STATIC = {"": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
STREAM_PERIOD_S = 3.0
LABELS = ("rps", "errors", "p99")
Canaries = Callable[[str | None], list[Json]]  # namespace (None: all) -> Canary objects
Config = Callable[[], list[Json]]  # the Config page's rows (config.py)
Trace = Callable[[str], Json | None]  # trace id -> Jaeger's trace, None if not kept


class Metrics(Protocol):
    """Where the numbers come from: the control plane's sampler, or Prometheus."""

    def now(self) -> float: ...

    def window(self, window_s: float) -> dict[Edge, Totals]: ...

    def cumulative(self) -> dict[Edge, Totals]: ...

    def meshed(self) -> dict[tuple[str, str], int]: ...

    def timeline(
        self, window_s: float, keep: Callable[[Edge], bool]
    ) -> tuple[float, list[tuple[float, Totals]]]: ...


class MetricsUnavailable(ApiError):
    code = 503
    reason = "ServiceUnavailable"


def window_of(request: Request, default: str) -> float:
    text = request.query.get("window") or default
    try:
        seconds = parse_interval(text)
    except ValueError as e:
        raise BadRequest(f'invalid window "{text}": {e}') from e
    if seconds > RETENTION_S:
        raise BadRequest(f'invalid window "{text}": the control plane keeps the last 1h')
    return seconds


def label_of(request: Request) -> str:
    """What the graph's edges are labelled with, as Kiali's Edge Labels menu."""
    label = request.query.get("label") or "rps"
    if label not in LABELS:
        raise BadRequest(f'invalid label "{label}": expected one of {", ".join(LABELS)}')
    return label


class DashboardApi:
    def __init__(
        self,
        metrics: Metrics,
        instances: Callable[[], Iterable[Instance]],
        canaries: Canaries,
        config: Config = list,
        trace: Trace | None = None,
    ) -> None:
        self.metrics = metrics
        self.instances = instances
        self.canaries = canaries
        self.config = config
        self.trace = trace
        self.stopping = threading.Event()

    def __repr__(self) -> str:
        return f"DashboardApi({self.metrics!r})"

    def __call__(self, request: Request, path: str) -> Response | None:
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return None
        try:
            return self._serve(request, path)
        except QueryError as e:
            raise MetricsUnavailable(f"the metrics cannot be read: {e}") from e

    def _serve(self, request: Request, path: str) -> Response:
        if request.method != "GET":
            raise MethodNotAllowed(f"{request.method} is not supported on {request.path}")
        rest = path[len(PREFIX) :].strip("/")
        if rest == "api/graph":
            return Response(200, encode(self.graph(window_of(request, "1m"), label_of(request))))
        if rest == "api/graph/stream":
            window_s, label = window_of(request, "1m"), label_of(request)
            stream = GraphStream(lambda: self.graph(window_s, label), self.stopping)
            return Response(200, content_type="text/event-stream", stream=stream)
        if rest == "api/stat":
            return Response(200, encode(self.stat(request)))
        if rest == "api/config":
            return Response(200, encode({"items": self.config()}))
        if rest == "api/timeline":
            return Response(200, encode(self.timeline(request)))
        if rest == "api/waterfall":
            return Response(200, encode(self.waterfall(request.query.get("traceID") or "")))
        if rest in STATIC:
            body = resources.files("pilotfish.dashboard").joinpath("static", rest or "index.html")
            return Response(200, body.read_bytes(), f"{STATIC[rest]}; charset=utf-8")
        raise NotFound(f"the dashboard has no page {request.path}")

    def graph(self, window_s: float, label: str = "rps") -> Json:
        now = self.metrics.now()
        graph = build_graph(
            self.metrics.window(window_s), window_s, set(self.metrics.meshed()), now
        )
        graph["svg"] = draw(graph, label)
        return graph

    def stat(self, request: Request) -> Json:
        kind = request.query.get("kind") or "workloads"
        if kind not in KINDS:
            raise BadRequest(f'unknown kind "{kind}": expected one of {", ".join(KINDS)}')
        window_s = window_of(request, "1m")
        namespace = request.query.get("namespace") or None
        q = request.query
        source, to, name = q.get("from") or None, q.get("to") or None, q.get("name") or None
        counted = self.metrics.window(window_s)
        cumulative = self.metrics.cumulative()
        known = self.known(kind)
        rows = stat_rows(
            "services" if kind == "services" else "workloads",
            counted,
            cumulative,
            window_s,
            known,
            source=source,
            to=to,
        )
        if kind == "canaries":
            rows = canary_rows(
                self.canaries(namespace), {(r["namespace"], r["name"]): r for r in rows}
            )
        rows = [r for r in rows if namespace is None or r["namespace"] == namespace]
        rows = [r for r in rows if name is None or r["name"] == name]
        return {"kind": kind, "windowSeconds": window_s, "rows": rows}

    def known(self, kind: str) -> dict[tuple[str, str], str]:
        """Registered workloads with MESHED as linkerd prints it: sidecars read / instances."""
        if kind == "services":
            return {}
        registered: dict[tuple[str, str], int] = {}
        for i in self.instances():
            key = (i.namespace, i.workload)
            registered[key] = registered.get(key, 0) + 1
        read = self.metrics.meshed()
        return {k: f"{read.get(k, 0)}/{n}" for k, n in registered.items()}

    def timeline(self, request: Request) -> Json:
        window_s = window_of(request, "15m")
        namespace = request.query.get("namespace") or "default"
        workload, service = request.query.get("workload"), request.query.get("service")
        if bool(workload) == bool(service):
            raise BadRequest("timeline needs workload=NAME or service=NAME")

        def keep(edge: Edge) -> bool:
            if edge.reporter != "destination":
                return False
            if workload:
                return (edge.destination_namespace, edge.destination_workload) == (
                    namespace,
                    workload,
                )
            return (edge.service_namespace, edge.service_name) == (namespace, service)

        step, points = self.metrics.timeline(window_s, keep)
        return {
            "windowSeconds": window_s,
            "points": [{"time": at, **metrics(t, step)} for at, t in points],
            "total": metrics(sum((t for _, t in points), start=Totals()), window_s),
        }

    def waterfall(self, trace_id: str) -> Json:
        found = self.trace(trace_id) if self.trace is not None else None
        if found is None:
            raise NotFound(f'trace "{trace_id}" not found')
        return {"trace": found, "svg": waterfall.draw(found)}


def canary_rows(canaries: list[Json], by_workload: dict[tuple[str, str], Json]) -> list[Json]:
    """`linkerd viz stat ts`'s shape for a Canary: a row per leaf (primary and
    canary workloads) with its weight from the Canary's status."""
    rows = []
    for canary in canaries:
        meta, spec = canary.get("metadata") or {}, canary.get("spec") or {}
        namespace, name = meta.get("namespace") or "default", meta.get("name") or ""
        target = str((spec.get("targetRef") or {}).get("name") or name)
        weight = CanaryStatus.of(canary.get("status")).canary_weight
        for leaf, share in ((f"{target}-primary", 100 - weight), (target, weight)):
            found = by_workload.get((namespace, leaf)) or row((namespace, leaf), None, 1.0, "-", 0)
            rows.append(
                {
                    **{k: v for k, v in found.items() if k != "name"},
                    "namespace": namespace,
                    "name": name,
                    "leaf": leaf,
                    "weight": share,
                    "phase": (canary.get("status") or {}).get("phase") or "",
                }
            )
    return rows


class GraphStream:
    """Server-sent events: one `data:` line with the graph JSON, every
    STREAM_PERIOD_S, until the client leaves or the server stops."""

    def __init__(self, graph: Callable[[], Json], stopping: threading.Event) -> None:
        self._graph = graph
        self._stopping = stopping
        self._next = 0.0
        self.done = False

    def __repr__(self) -> str:
        return f"GraphStream(done={self.done})"

    def next_line(self, timeout: float) -> bytes | None:
        wait = self._next - time.monotonic()
        if wait > 0:
            self._stopping.wait(min(wait, timeout))
            return None
        self._next = time.monotonic() + STREAM_PERIOD_S
        return b"data: " + json.dumps(self._graph(), separators=(",", ":")).encode() + b"\n"

    def close(self) -> None:
        self.done = True
