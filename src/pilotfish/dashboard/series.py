"""The mesh's Istio metrics as short time series, per edge, in bounded memory.

An edge is what Kiali draws: who called (source workload), which service,
which workload answered, as one reporter saw it. Each sampler pass adds
what every edge counted since the pass before (promql.counted's reset rule)
to the edge's ring: one slot per RESOLUTION_S, SLOTS slots (an hour), oldest
dropped first. A slot is one array of doubles: 6 counters and one count per
histogram bucket (Istio's 20 duration buckets and +Inf): 216 bytes of
numbers and some 150 of Python's object headers, so the store holds at most
MAX_SERIES * SLOTS * ~370 bytes, about 70 MB, and a Bookinfo mesh (about 20
edges) some 5 MB. Edges past MAX_SERIES are
dropped and counted, as a sidecar caps its own series.

Pure apart from a lock: the sampler (sampler.py) feeds it, the API reads it.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pilotfish.rollout.metrics.builtin import BUCKETS, REQUESTS, Page, Totals, totals

RESOLUTION_S = 5.0
RETENTION_S = 3600.0
SLOTS = int(RETENTION_S / RESOLUTION_S)
MAX_SERIES = 256
TCP_OPENED = "istio_tcp_connections_opened_total"
TCP_CLOSED = "istio_tcp_connections_closed_total"
TCP_SENT = "istio_tcp_sent_bytes_total"
TCP_RECEIVED = "istio_tcp_received_bytes_total"
TCP = (TCP_OPENED, TCP_CLOSED, TCP_SENT, TCP_RECEIVED)
NAMES = (REQUESTS, BUCKETS, *TCP)
UNKNOWN = "unknown"


@dataclass(frozen=True, order=True)
class Edge:
    """One series' endpoints, from Istio's labels."""

    reporter: str  # "source" (the caller's sidecar) or "destination" (the callee's)
    source_namespace: str
    source_workload: str
    service: str  # destination_service: the host called
    service_namespace: str
    service_name: str
    destination_namespace: str
    destination_workload: str
    protocol: str  # request_protocol: http, grpc, tcp
    security: str  # connection_security_policy: mutual_tls, none, unknown

    @classmethod
    def of(cls, labels: Mapping[str, str]) -> Edge:
        def get(name: str) -> str:
            return labels.get(name) or UNKNOWN

        return cls(
            get("reporter"),
            get("source_workload_namespace"),
            get("source_workload"),
            get("destination_service"),
            get("destination_service_namespace"),
            get("destination_service_name"),
            get("destination_workload_namespace"),
            get("destination_workload"),
            get("request_protocol"),
            get("connection_security_policy"),
        )


def edge_counts(page: Page) -> dict[Edge, Totals]:
    """A page of counters (or of increments) summed per edge."""
    grouped: dict[Edge, Page] = {}
    for key, value in page.items():
        grouped.setdefault(Edge.of(dict(key[1])), {})[key] = value
    return {edge: totals(series) for edge, series in grouped.items()}


class Ring:
    """One edge's slots, oldest first: (slot start, counters as doubles)."""

    __slots__ = ("les", "slots")

    def __init__(self, les: Iterable[float]) -> None:
        self.les = tuple(sorted(les))  # the bucket bounds, fixed at the edge's first increment
        self.slots: deque[tuple[float, array[float]]] = deque(maxlen=SLOTS)

    def __repr__(self) -> str:
        return f"Ring({len(self.slots)} slots, {len(self.les)} buckets)"

    def add(self, slot: float, counts: Totals) -> None:
        packed = self.pack(counts)
        if self.slots and self.slots[-1][0] == slot:
            last = self.slots[-1][1]
            for i, value in enumerate(packed):
                last[i] += value
        else:
            self.slots.append((slot, packed))

    def pack(self, t: Totals) -> array[float]:
        tcp = [t.tcp.get(name, 0.0) for name in TCP]
        return array("d", [t.requests, t.ok, *tcp, *(t.buckets.get(le, 0.0) for le in self.les)])

    def unpack(self, values: array[float]) -> Totals:
        requests, ok, *rest = values
        tcp = dict(zip(TCP, rest[: len(TCP)], strict=True))
        return Totals(requests, ok, dict(zip(self.les, rest[len(TCP) :], strict=True)), tcp)

    def since(self, start: float) -> list[tuple[float, Totals]]:
        return [(at, self.unpack(values)) for at, values in self.slots if at >= start]


class SeriesStore:
    """Rings by edge. Times are seconds (the sampler's clock, wall time)."""

    def __init__(self, resolution_s: float = RESOLUTION_S, max_series: int = MAX_SERIES) -> None:
        self.resolution_s = resolution_s
        self.max_series = max_series
        self.dropped = 0  # increments of edges refused for want of room
        self._rings: dict[Edge, Ring] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SeriesStore({len(self._rings)} edges, every {self.resolution_s:g}s)"

    def slot(self, at: float) -> float:
        return math.floor(at / self.resolution_s) * self.resolution_s

    def add(self, at: float, increments: Mapping[Edge, Totals]) -> None:
        slot = self.slot(at)
        with self._lock:
            for edge, counts in increments.items():
                ring = self._rings.get(edge)
                if ring is None:
                    if len(self._rings) >= self.max_series:
                        self.dropped += 1
                        continue
                    ring = self._rings[edge] = Ring(counts.buckets)
                ring.add(slot, counts)

    def forget(self, before: float) -> None:
        """Drop edges whose newest slot is older than `before` (gone workloads)."""
        with self._lock:
            for edge, ring in list(self._rings.items()):
                if not ring.slots or ring.slots[-1][0] < before:
                    del self._rings[edge]

    def window(self, start: float) -> dict[Edge, Totals]:
        """What each edge counted in the slots from `start` on."""
        found = {}
        with self._lock:
            for edge, ring in self._rings.items():
                points = ring.since(start)
                if points:
                    found[edge] = sum((t for _, t in points), Totals())
        return found

    def timeline(self, start: float, keep: Callable[[Edge], bool]) -> list[tuple[float, Totals]]:
        """Per slot from `start` on, the kept edges summed: a chart's points."""
        slots: dict[float, Totals] = {}
        with self._lock:
            for edge, ring in self._rings.items():
                if keep(edge):
                    for at, counts in ring.since(start):
                        slots[at] = slots.get(at, Totals()) + counts
        return sorted(slots.items())
