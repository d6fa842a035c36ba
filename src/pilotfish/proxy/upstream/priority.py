"""Priority load: how much traffic each priority level gets, as Envoy computes it.

    health(P)   = min(100, factor * healthy(P) / total(P))       integer percent
    degraded(P) = min(100, factor * degraded(P) / total(P))
    normalized  = min(100, sum(health) + sum(degraded))
    load(P)     = health(P) * 100 / normalized, handed out from P=0 down
                  until 100 is used; then degraded loads the same way; what
                  rounding leaves goes to the first level with healthy hosts.

A level is in panic (balance over all its hosts, whatever their health) when
normalized availability is below 100 and its healthy+degraded share is below
the panic threshold. When every level panics, load follows host counts.

`factor` is in percent (140 for 1.4). Availability is counted in hosts, or in
endpoint weights when the assignment sets `weighted_priority_health`; panic is
always decided on host counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple


class Level(NamedTuple):
    healthy: int
    degraded: int
    total: int


@dataclass(frozen=True, slots=True)
class PriorityLoad:
    healthy: tuple[int, ...]
    degraded: tuple[int, ...]
    panic: tuple[bool, ...]
    normalized_availability: int


def priority_load(
    availability: Sequence[Level],
    hosts: Sequence[Level],
    factor: int = 140,
    panic_threshold: float = 50.0,
) -> PriorityLoad:
    """Loads per level; `availability` in hosts or weights, `hosts` in host counts."""
    health = [_score(lv.healthy, lv.total, factor) for lv in availability]
    degraded = [_score(lv.degraded, lv.total, factor) for lv in availability]
    normalized = min(100, sum(health) + sum(degraded))
    healthy_load, degraded_load = _distribute_all(health, degraded, normalized)
    if panic_threshold <= 0 and normalized == 0:
        # Nothing is available and panic is off: P=0 takes the load and finds no host.
        healthy_load[0] = 100
        return PriorityLoad(tuple(healthy_load), tuple(degraded_load), (False,) * len(hosts), 0)
    panic = tuple(normalized < 100 and _in_panic(lv, panic_threshold) for lv in hosts)
    if panic and all(panic):
        healthy_load, degraded_load = _by_host_count(hosts), [0] * len(hosts)
    return PriorityLoad(tuple(healthy_load), tuple(degraded_load), panic, normalized)


def _score(part: int, total: int, factor: int) -> int:
    return min(100, factor * part // total) if total else 0


def _distribute_all(
    health: list[int], degraded: list[int], normalized: int
) -> tuple[list[int], list[int]]:
    healthy_load, degraded_load = [0] * len(health), [0] * len(degraded)
    if normalized == 0:
        return healthy_load, degraded_load
    left, first_healthy = _distribute(health, 100, normalized, healthy_load)
    left, first_degraded = _distribute(degraded, left, normalized, degraded_load)
    if left:
        if first_healthy >= 0:
            healthy_load[first_healthy] += left
        else:
            degraded_load[first_degraded] += left
    return healthy_load, degraded_load


def _distribute(scores: list[int], total: int, normalized: int, out: list[int]) -> tuple[int, int]:
    first = -1
    for i, score in enumerate(scores):
        if first < 0 and score > 0:
            first = i
        out[i] = min(total, score * 100 // normalized)
        total -= out[i]
    return total, first


def _in_panic(level: Level, threshold: float) -> bool:
    if not level.total:
        return threshold > 0
    return 100.0 * (level.healthy + level.degraded) / level.total < threshold


def _by_host_count(hosts: Sequence[Level]) -> list[int]:
    total = sum(lv.total for lv in hosts)
    loads = [0] * len(hosts)
    if total == 0:
        loads[0] = 100
        return loads
    for i, lv in enumerate(hosts):
        loads[i] = 100 * lv.total // total
    first = next(i for i, lv in enumerate(hosts) if lv.total)
    loads[first] += 100 - sum(loads)
    return loads
