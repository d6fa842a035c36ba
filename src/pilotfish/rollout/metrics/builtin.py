"""Flagger's two built-in metrics without a Prometheus: the control plane
samples every registered sidecar's Istio metrics itself, keeps a few minutes
of them, and answers the two questions a canary analysis asks about a
workload over a window, as PromQL would over the same series:

  request-success-rate  sum(increase(istio_requests_total{reporter="destination",
                        response_code!~"5.*"})) / sum(increase(...)) * 100
  request-duration      histogram_quantile(0.99, sum by (le)
                        (increase(istio_request_duration_milliseconds_bucket{...})))

`increase` here is the last sample less the first inside the window, with
counter resets (a restarted sidecar) counted as Prometheus counts them.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pilotfish.model.types import Instance
from pilotfish.periodic import Periodic
from pilotfish.rollout.metrics.exposition import samples

log = logging.getLogger("pilotfish.rollout")

REQUESTS = "istio_requests_total"
BUCKETS = "istio_request_duration_milliseconds_bucket"
RETENTION_S = 900.0
SCRAPE_TIMEOUT_S = 1.0
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Totals:
    """One sidecar's inbound counters at one moment."""

    requests: float = 0.0
    ok: float = 0.0  # not 5xx
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count


@dataclass
class Series:
    namespace: str
    workload: str
    points: deque[tuple[float, Totals]] = field(default_factory=deque)


class MeshMetrics:
    """The sampler: `loop.start()` runs it every `period_s` in a thread."""

    def __init__(
        self,
        instances: Callable[[], Iterable[Instance]],
        *,
        period_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.instances = instances
        self.clock = clock
        self._series: dict[str, Series] = {}  # instance namespace/name -> samples
        self._lock = threading.Lock()
        self.loop = Periodic("mesh-metrics", period_s, self.sample)

    def __repr__(self) -> str:
        return f"MeshMetrics({len(self._series)} sidecars)"

    def sample(self) -> None:
        """Scrape every sidecar with a metrics port once."""
        for instance in self.instances():
            if not instance.metrics_port:
                continue
            text = _scrape(instance)
            if text is not None:
                self.record(instance, parse_totals(text), self.clock())
        self._forget(self.clock() - RETENTION_S)

    def record(self, instance: Instance, totals: Totals, now: float) -> None:
        key = f"{instance.namespace}/{instance.name}"
        with self._lock:
            series = self._series.setdefault(key, Series(instance.namespace, instance.workload))
            series.points.append((now, totals))

    def _forget(self, before: float) -> None:
        with self._lock:
            for key, series in list(self._series.items()):
                while series.points and series.points[0][0] < before:
                    series.points.popleft()
                if not series.points:
                    del self._series[key]

    # -- queries ---------------------------------------------------------------------

    def success_rate(self, namespace: str, workload: str, window_s: float) -> float | None:
        """Percent of requests not answered 5xx; None when there were none."""
        total = ok = 0.0
        for first, last in self._edges(namespace, workload, window_s):
            total += _increase(first.requests, last.requests)
            ok += _increase(first.ok, last.ok)
        return None if total <= 0 else 100.0 * ok / total

    def duration_p99(self, namespace: str, workload: str, window_s: float) -> float | None:
        """The 99th percentile in milliseconds; None when there were no requests."""
        counts: dict[float, float] = {}
        for first, last in self._edges(namespace, workload, window_s):
            for le, value in last.buckets.items():
                counts[le] = counts.get(le, 0.0) + _increase(first.buckets.get(le, 0.0), value)
        return quantile(0.99, counts)

    def _edges(self, namespace: str, workload: str, window_s: float) -> list[tuple[Totals, Totals]]:
        """Per sidecar of the workload, its first and last sample in the window."""
        since = self.clock() - window_s
        with self._lock:
            found = []
            for series in self._series.values():
                if (series.namespace, series.workload) != (namespace, workload):
                    continue
                inside = [t for at, t in series.points if at >= since]
                if len(inside) >= 2:
                    found.append((inside[0], _with_resets(inside)))
            return found


def parse_totals(text: str) -> Totals:
    """The inbound (reporter="destination") counters of one sidecar's page."""
    requests = ok = 0.0
    buckets: dict[float, float] = {}
    for s in samples(text, (REQUESTS, BUCKETS)):
        if s.labels.get("reporter") != "destination":
            continue
        if s.name == REQUESTS:
            requests += s.value
            if not s.labels.get("response_code", "").startswith("5"):
                ok += s.value
        else:
            le = float(s.labels.get("le", "+Inf"))
            buckets[le] = buckets.get(le, 0.0) + s.value
    return Totals(requests, ok, buckets)


def quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative bucket counts: linear within the
    bucket that holds the rank; the highest finite bound when it is +Inf's."""
    if not cumulative:
        return None
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = cumulative[le]
        if count >= rank:
            if le == float("inf"):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def _with_resets(points: list[Totals]) -> Totals:
    """The last sample, with what was counted before each reset added back,
    so last - first is the increase across restarts."""
    carried = Totals()
    for previous, current in itertools.pairwise(points):
        if current.requests < previous.requests:
            carried = _add(carried, previous)
    return _add(carried, points[-1])


def _add(a: Totals, b: Totals) -> Totals:
    buckets = dict(a.buckets)
    for le, value in b.buckets.items():
        buckets[le] = buckets.get(le, 0.0) + value
    return Totals(a.requests + b.requests, a.ok + b.ok, buckets)


def _increase(first: float, last: float) -> float:
    return max(0.0, last - first)


def _scrape(instance: Instance) -> str | None:
    url = f"http://{instance.address}:{instance.metrics_port}/stats/prometheus"
    try:
        with _DIRECT.open(url, timeout=SCRAPE_TIMEOUT_S) as answer:
            return str(answer.read().decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError, ValueError):
        return None  # a sidecar that is gone or starting: skipped this time
