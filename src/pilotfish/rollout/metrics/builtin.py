"""Flagger's two built-in metrics without a Prometheus: the control plane
samples every registered sidecar's Istio metrics itself, keeps a few minutes
of them, and answers the two questions a canary analysis asks about a
workload over a window, as Flagger's PromQL does over the same series:

  request-success-rate  sum(rate(istio_requests_total{reporter="destination",
                        ..., response_code!~"5.*"}[w])) / sum(rate(...[w])) * 100
  request-duration      histogram_quantile(0.99, sum(rate(
                        istio_request_duration_milliseconds_bucket{...}[w])) by (le))

Each sidecar's series are counted between consecutive scrapes with rate()'s
reset rule (promql.counted) into running totals, so a window's increase is
its last total less its first, restarts included. Unlike rate() there is no
extrapolation to the window's edges: the built-ins are ratios (of requests,
of bucket counts), which extrapolation would scale alike.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pilotfish.model.types import Instance
from pilotfish.periodic import Periodic
from pilotfish.rollout.metrics.exposition import samples
from pilotfish.rollout.metrics.promql import K, counted, histogram_quantile

log = logging.getLogger("pilotfish.rollout")

REQUESTS = "istio_requests_total"
BUCKETS = "istio_request_duration_milliseconds_bucket"
PERIOD_S = 1.0
RETENTION_S = 900.0
SCRAPE_TIMEOUT_S = 0.8
MAX_PARALLEL_SCRAPES = 8
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

SeriesKey = tuple[str, frozenset[tuple[str, str]]]  # metric name, labels
Page = dict[SeriesKey, float]


@dataclass(frozen=True)
class Totals:
    """A sidecar's inbound counters, summed over its series."""

    requests: float = 0.0
    ok: float = 0.0  # not 5xx
    buckets: Mapping[float, float] = field(default_factory=dict)  # le -> cumulative count
    tcp: Mapping[str, float] = field(default_factory=dict)  # istio_tcp_* name -> count

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.requests + other.requests,
            self.ok + other.ok,
            _merge(self.buckets, other.buckets),
            _merge(self.tcp, other.tcp),
        )

    def __sub__(self, other: Totals) -> Totals:
        return self + Totals(
            -other.requests,
            -other.ok,
            {le: -n for le, n in other.buckets.items()},
            {name: -n for name, n in other.tcp.items()},
        )


@dataclass
class Sidecar:
    """One instance's samples: its last page as scraped, and its running
    totals over time (oldest first)."""

    namespace: str
    workload: str
    page: Page
    points: deque[tuple[float, Totals]]


class MeshMetrics:
    """The sampler and its queries. `start()` scrapes every `period_s` on a
    daemon thread; `sample(now)` does one pass, for tests."""

    def __init__(
        self,
        instances: Callable[[], Iterable[Instance]],
        *,
        period_s: float = PERIOD_S,
        retention_s: float = RETENTION_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.instances = instances
        self.retention_s = retention_s
        self.clock = clock
        self._sidecars: dict[tuple[str, str], Sidecar] = {}  # (namespace, instance name)
        self._lock = threading.Lock()
        self.loop = Periodic("mesh-metrics", period_s, self.sample)

    def __repr__(self) -> str:
        return f"MeshMetrics({len(self._sidecars)} sidecars, every {self.loop.period_s:g}s)"

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()

    def sample(self, now: float | None = None) -> None:
        """Scrape every sidecar with a metrics port once; one that does not
        answer in time is skipped this pass."""
        at = self.clock() if now is None else now
        for instance, text in scrape_all(self.instances()):
            self.record(instance, text, at)
        self.forget(at - self.retention_s)

    def record(self, instance: Instance, text: str, now: float) -> None:
        """One scraped page of `instance`, read at `now`."""
        page = read_page(text)
        key = (instance.namespace, instance.name)
        with self._lock:
            sidecar = self._sidecars.get(key)
            if sidecar is None:
                points = deque([(now, totals(page))])
                self._sidecars[key] = Sidecar(instance.namespace, instance.workload, page, points)
                return
            running = sidecar.points[-1][1] + totals(counted(sidecar.page, page))
            sidecar.page = page
            sidecar.points.append((now, running))

    def forget(self, before: float) -> None:
        """Drop samples older than `before`, and sidecars left with none."""
        with self._lock:
            for key, sidecar in list(self._sidecars.items()):
                while sidecar.points and sidecar.points[0][0] < before:
                    sidecar.points.popleft()
                if not sidecar.points:
                    del self._sidecars[key]

    # -- queries ---------------------------------------------------------------------

    def success_rate(self, namespace: str, workload: str, window_s: float) -> float | None:
        """Percent of requests not answered 5xx; None when there were none."""
        counted_ = self.increase(namespace, workload, window_s)
        if counted_.requests <= 0:
            return None
        return 100.0 * counted_.ok / counted_.requests

    def duration_p99(self, namespace: str, workload: str, window_s: float) -> float | None:
        """The 99th percentile in milliseconds; None when there were no requests."""
        return histogram_quantile(0.99, self.increase(namespace, workload, window_s).buckets)

    def increase(self, namespace: str, workload: str, window_s: float) -> Totals:
        """What the workload's sidecars counted in the window ending now, summed;
        a sidecar needs two samples in the window to count, as in rate()."""
        since = self.clock() - window_s
        total = Totals()
        with self._lock:
            for sidecar in self._sidecars.values():
                if (sidecar.namespace, sidecar.workload) != (namespace, workload):
                    continue
                inside = [t for at, t in sidecar.points if at >= since]
                if len(inside) >= 2:
                    total += inside[-1] - inside[0]
        return total


def read_page(text: str) -> Page:
    """The inbound (reporter="destination") series a canary analysis reads."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for s in samples(text, (REQUESTS, BUCKETS))
        if s.labels.get("reporter") == "destination"
    }


def totals(page: Page) -> Totals:
    """The page's series summed: requests, those not 5xx, duration buckets,
    and any istio_tcp_* counters by name."""
    requests = ok = 0.0
    buckets: dict[float, float] = {}
    tcp: dict[str, float] = {}
    for (name, labels), value in page.items():
        found = dict(labels)
        if name == REQUESTS:
            requests += value
            if not found.get("response_code", "").startswith("5"):
                ok += value
        elif name == BUCKETS:
            le = _bound(found.get("le", ""))
            if le is not None:
                buckets[le] = buckets.get(le, 0.0) + value
        else:
            tcp[name] = tcp.get(name, 0.0) + value
    return Totals(requests, ok, buckets, tcp)


def scrape_all(instances: Iterable[Instance]) -> list[tuple[Instance, str]]:
    """Every sidecar with a metrics port, scraped in parallel; those that did
    not answer in time are left out of this pass."""
    targets = [i for i in instances if i.metrics_port]
    if not targets:
        return []
    with ThreadPoolExecutor(min(MAX_PARALLEL_SCRAPES, len(targets))) as pool:
        pages = pool.map(scrape, targets)
        return [(i, text) for i, text in zip(targets, pages, strict=True) if text is not None]


def scrape(instance: Instance) -> str | None:
    """The sidecar's /stats/prometheus page; None when it is gone or starting."""
    url = f"http://{instance.address}:{instance.metrics_port}/stats/prometheus"
    try:
        with _DIRECT.open(url, timeout=SCRAPE_TIMEOUT_S) as answer:
            return str(answer.read().decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError, ValueError) as e:
        log.debug("scraping %s/%s at %s: %s", instance.namespace, instance.name, url, e)
        return None


def _bound(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _merge(a: Mapping[K, float], b: Mapping[K, float]) -> dict[K, float]:
    merged = dict(a)
    for le, n in b.items():
        merged[le] = merged.get(le, 0.0) + n
    return merged
