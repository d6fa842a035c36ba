"""The thin shell that feeds the series: every RESOLUTION_S, scrape every
registered sidecar (the rollout's own scraper), count what each series
counted since that sidecar's last page, and add it per edge."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from pilotfish.dashboard.series import (
    NAMES,
    RESOLUTION_S,
    RETENTION_S,
    Edge,
    SeriesStore,
    edge_counts,
)
from pilotfish.model.types import Instance
from pilotfish.periodic import Periodic
from pilotfish.rollout.metrics.builtin import Page, Totals, scrape_all
from pilotfish.rollout.metrics.exposition import samples
from pilotfish.rollout.metrics.promql import counted

Scraper = Callable[[Iterable[Instance]], list[tuple[Instance, str]]]


class MeshSampler:
    """`start()` samples on a daemon thread; `sample(now)` is one pass."""

    def __init__(
        self,
        instances: Callable[[], Iterable[Instance]],
        *,
        store: SeriesStore | None = None,
        scraper: Scraper = scrape_all,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.instances = instances
        self.store = store or SeriesStore()
        self.scraper = scraper
        self.clock = clock
        self._pages: dict[tuple[str, str], Page] = {}  # (namespace, instance) -> last page
        self._meshed: dict[tuple[str, str], int] = {}  # (namespace, workload) -> sidecars read
        self._lock = threading.Lock()
        self.loop = Periodic("mesh-series", self.store.resolution_s, self.sample)

    def __repr__(self) -> str:
        return f"MeshSampler({len(self._pages)} sidecars, {self.store!r})"

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()

    def now(self) -> float:
        return self.clock()

    def window(self, window_s: float) -> dict[Edge, Totals]:
        """What each edge counted in the last `window_s` seconds."""
        return self.store.window(self.clock() - window_s)

    def timeline(
        self, window_s: float, keep: Callable[[Edge], bool]
    ) -> tuple[float, list[tuple[float, Totals]]]:
        """(seconds per point, the kept edges summed per slot) over the window."""
        return self.store.resolution_s, self.store.timeline(self.clock() - window_s, keep)

    def meshed(self) -> dict[tuple[str, str], int]:
        """Sidecars read in the last pass, per (namespace, workload)."""
        with self._lock:
            return dict(self._meshed)

    def cumulative(self) -> dict[Edge, Totals]:
        """Every edge's counters since its sidecars started, from their last pages."""
        with self._lock:
            pages = list(self._pages.values())
        found: dict[Edge, Totals] = {}
        for page in pages:
            for edge, counts in edge_counts(page).items():
                found[edge] = found.get(edge, Totals()) + counts
        return found

    def sample(self, now: float | None = None) -> None:
        at = self.clock() if now is None else now
        registered = list(self.instances())
        increments: dict[Edge, Totals] = {}
        meshed: dict[tuple[str, str], int] = {}
        for instance, text in self.scraper(registered):
            page = read_all(text)
            key = (instance.namespace, instance.name)
            with self._lock:
                before = self._pages.get(key)
                self._pages[key] = page
            workload = (instance.namespace, instance.workload)
            meshed[workload] = meshed.get(workload, 0) + 1
            if before is None:
                continue  # the first page is the baseline, as rate() needs two samples
            for edge, counts in edge_counts(counted(before, page)).items():
                increments[edge] = increments.get(edge, Totals()) + counts
        # A sidecar that missed a pass keeps its last page; a deregistered one goes.
        alive = {(i.namespace, i.name) for i in registered}
        with self._lock:
            self._pages = {k: v for k, v in self._pages.items() if k in alive}
            self._meshed = meshed
        self.store.add(at, increments)
        self.store.forget(at - RETENTION_S)


def read_all(text: str) -> Page:
    """The Istio series the dashboard reads, of both reporters."""
    return {(s.name, frozenset(s.labels.items())): s.value for s in samples(text, NAMES)}


__all__ = ["RESOLUTION_S", "MeshSampler", "read_all"]
