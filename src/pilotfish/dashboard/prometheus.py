"""The dashboard's metrics from a user's Prometheus (`pilotfish controlplane
--prometheus URL`) instead of the control plane's own sampler: Kiali's
queries, one per Istio family, summed by the labels an edge is made of,

    sum by (reporter, source_workload, ..., response_code) (rate(istio_requests_total[W]))
    sum by (reporter, ..., le) (rate(istio_request_duration_milliseconds_bucket[W]))

and read back as the same per-edge counts (rate times the window), so the
graph and `stat` are computed by the same code whichever the source.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from pilotfish.dashboard.series import TCP, Edge, edge_counts
from pilotfish.model.types import Instance
from pilotfish.rollout.metrics.builtin import BUCKETS, REQUESTS, Page, Totals
from pilotfish.rollout.metrics.prometheus import Provider, range_query, vector_query

EDGE_LABELS = (
    "reporter",
    "source_workload_namespace",
    "source_workload",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload_namespace",
    "destination_workload",
    "request_protocol",
    "connection_security_policy",
)
STEP_S = 15.0  # a range query's step: at least a few scrape intervals, as rate() needs
MAX_POINTS = 120
# family -> the labels it is summed by beyond the edge's
FAMILIES = ((REQUESTS, ("response_code",)), (BUCKETS, ("le",)), *((name, ()) for name in TCP))


def window_query(family: str, extra: tuple[str, ...], window_s: float) -> str:
    return f"sum by ({','.join(EDGE_LABELS + extra)}) (rate({family}[{window_s:.0f}s]))"


class PrometheusMetrics:
    """What the sampler answers, asked of Prometheus."""

    def __init__(
        self,
        address: str,
        instances: Callable[[], Iterable[Instance]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = Provider(address)
        self.instances = instances
        self.clock = clock

    def __repr__(self) -> str:
        return f"PrometheusMetrics({self.provider.address!r})"

    def now(self) -> float:
        return self.clock()

    def window(self, window_s: float) -> dict[Edge, Totals]:
        page: Page = {}
        for family, extra in FAMILIES:
            for labels, rate in vector_query(self.provider, window_query(family, extra, window_s)):
                page[(family, frozenset(labels.items()))] = rate * window_s
        return edge_counts(page)

    def cumulative(self) -> dict[Edge, Totals]:
        """The TCP counters as they stand (for connections open now)."""
        page: Page = {}
        for family in TCP[:2]:
            query = f"sum by ({','.join(EDGE_LABELS)}) ({family})"
            for labels, value in vector_query(self.provider, query):
                page[(family, frozenset(labels.items()))] = value
        return edge_counts(page)

    def meshed(self) -> dict[tuple[str, str], int]:
        """Registered sidecars per workload: Prometheus scrapes what the registry lists."""
        found: dict[tuple[str, str], int] = {}
        for i in self.instances():
            if i.metrics_port:
                found[(i.namespace, i.workload)] = found.get((i.namespace, i.workload), 0) + 1
        return found

    def timeline(
        self, window_s: float, keep: Callable[[Edge], bool]
    ) -> tuple[float, list[tuple[float, Totals]]]:
        """The kept edges summed per step over the window, from a range query
        of each family: what each step counted, as increase() over the step."""
        end = self.now()
        step = max(STEP_S, window_s / MAX_POINTS)
        pages: dict[float, Page] = {}
        for family, extra in FAMILIES:
            query = window_query(family, extra, step)
            for at, labels, rate in range_query(self.provider, query, end - window_s, end, step):
                pages.setdefault(at, {})[(family, frozenset(labels.items()))] = rate * step
        points = []
        for at, page in sorted(pages.items()):
            kept = [t for edge, t in edge_counts(page).items() if keep(edge)]
            if kept:
                points.append((at, sum(kept, Totals())))
        return step, points
