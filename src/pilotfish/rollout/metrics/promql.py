"""The two pieces of PromQL the built-in metrics need, on plain numbers:
what a counter counted between two scrapes (rate()'s reset rule), and
histogram_quantile(). Pure functions, no I/O."""

from __future__ import annotations

import bisect
import math
from collections.abc import Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
INF = math.inf


def counted(previous: Mapping[K, float], current: Mapping[K, float]) -> dict[K, float]:
    """What each counter of `current` counted since `previous`. As rate()
    reads a counter, a value lower than before is a restart from zero (a
    restarted sidecar), so all of it is new; a series absent before (the
    first 503 of a workload) started at zero and counts whole."""
    deltas = {}
    for key, value in current.items():
        before = previous.get(key)
        deltas[key] = value if before is None or value < before else value - before
    return deltas


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket counts (upper
    bound -> count): linear interpolation inside the bucket that holds the
    rank, the first bucket starting at 0; the highest finite bound when the
    rank falls in +Inf. None where PromQL gives NaN: no +Inf bucket, fewer
    than two buckets, no observations."""
    bounds = sorted(buckets)
    if len(bounds) < 2 or bounds[-1] != INF:
        return None
    counts = _monotonic([buckets[b] for b in bounds])
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    b = bisect.bisect_left(counts, rank)
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, below = (bounds[b - 1], counts[b - 1]) if b > 0 else (0.0, 0.0)
    return start + (bounds[b] - start) * (rank - below) / (counts[b] - below)


def _monotonic(counts: list[float]) -> list[float]:
    """Bucket counts never fall as the bound rises; where they do (buckets
    scraped from sidecars at slightly different moments), PromQL holds the
    highest count so far."""
    highest, fixed = -INF, []
    for count in counts:
        highest = max(highest, count)
        fixed.append(highest)
    return fixed
