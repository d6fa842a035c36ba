"""Load balancers over one set of hosts (a priority level, or one locality in it).

Each is built once per host-set change and then asked per request; `pick`
does a handful of attribute reads and one or two random draws, no allocation.
Round robin follows weights with an earliest-deadline-first schedule laid out
at build time, as Envoy's EDF scheduler orders them. Random ignores weights,
as Envoy's does. Least request samples `choice_count` hosts and keeps the one
with the fewest active requests (power of two choices by default).
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from math import gcd
from typing import Protocol

from pilotfish.proxy.upstream.host import Host

MAX_SCHEDULE = 16384  # entries in a weighted round-robin schedule


class Picker(Protocol):
    def pick(self, hash_key: int | None, attempt: int, rng: random.Random) -> Host | None:
        """A host, or None when the set is empty. `attempt` > 0 asks hash-based
        pickers for another host after the previous one was excluded."""
        ...


class RoundRobin:
    __slots__ = ("_n", "_next", "_schedule")

    def __init__(self, hosts: Sequence[Host], start: int = 0) -> None:
        self._schedule = tuple(hosts) if _equal_weights(hosts) else weighted_schedule(hosts)
        self._n = len(self._schedule)
        self._next = start

    def __repr__(self) -> str:
        return f"<RoundRobin {self._n} slots>"

    def pick(self, hash_key: int | None, attempt: int, rng: random.Random) -> Host | None:
        n = self._n
        if not n:
            return None
        i = self._next
        self._next = i + 1 if i + 1 < n else 0
        return self._schedule[i % n]


def weighted_schedule(hosts: Sequence[Host]) -> tuple[Host, ...]:
    """One period of an earliest-deadline-first order: each host appears in
    proportion to its weight, spread out rather than in runs."""
    weights = [max(1, h.weight) for h in hosts]
    g = 0
    for w in weights:
        g = gcd(g, w)
    weights = [w // g for w in weights]
    total = sum(weights)
    if total > MAX_SCHEDULE:  # keep the table small; proportions stay within rounding
        weights = [max(1, round(w * MAX_SCHEDULE / total)) for w in weights]
        total = sum(weights)
    heap = [(1.0 / w, i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    out: list[Host] = []
    for _ in range(total):
        deadline, i = heapq.heappop(heap)
        out.append(hosts[i])
        heapq.heappush(heap, (deadline + 1.0 / weights[i], i))
    return tuple(out)


class RandomPicker:
    __slots__ = ("_hosts", "_n")

    def __init__(self, hosts: Sequence[Host]) -> None:
        self._hosts = tuple(hosts)
        self._n = len(self._hosts)

    def __repr__(self) -> str:
        return f"<Random {self._n} hosts>"

    def pick(self, hash_key: int | None, attempt: int, rng: random.Random) -> Host | None:
        if not self._n:
            return None
        return self._hosts[int(rng.random() * self._n)]


class LeastRequest:
    """Equal weights: the least loaded of `choice_count` uniform samples. Unequal
    weights: samples drawn in proportion to weight, and the winner minimises
    (active + 1) ** bias / weight, the quantity Envoy's weighted variant schedules by."""

    __slots__ = ("_bias", "_choices", "_cumulative", "_hosts", "_n", "_total", "_weighted")

    def __init__(self, hosts: Sequence[Host], choice_count: int = 2, bias: float = 1.0) -> None:
        self._hosts = tuple(hosts)
        self._n = len(self._hosts)
        self._choices = max(1, choice_count)
        self._bias = bias
        self._weighted = not _equal_weights(hosts)
        self._cumulative = list(accumulate(max(1, h.weight) for h in hosts))
        self._total = self._cumulative[-1] if self._cumulative else 0

    def __repr__(self) -> str:
        return f"<LeastRequest {self._n} hosts, {self._choices} choices>"

    def pick(self, hash_key: int | None, attempt: int, rng: random.Random) -> Host | None:
        n = self._n
        if not n:
            return None
        if self._weighted:
            return self._pick_weighted(rng)
        hosts, rnd = self._hosts, rng.random
        best = hosts[int(rnd() * n)]
        for _ in range(self._choices - 1):
            candidate = hosts[int(rnd() * n)]
            if candidate.rq_active < best.rq_active:
                best = candidate
        return best

    def _pick_weighted(self, rng: random.Random) -> Host:
        best: Host | None = None
        best_cost = 0.0
        for _ in range(self._choices):
            h = self._hosts[bisect_right(self._cumulative, rng.random() * self._total)]
            cost = (h.rq_active + 1) ** self._bias / max(1, h.weight)
            if best is None or cost < best_cost:
                best, best_cost = h, cost
        assert best is not None
        return best


class LocalityPicker:
    """Picks a locality in proportion to its effective weight, then asks that
    locality's own balancer (Envoy: priority, then locality, then host)."""

    __slots__ = ("_cumulative", "_pickers", "_total")

    def __init__(self, weighted: Sequence[tuple[float, Picker]]) -> None:
        live = [(w, p) for w, p in weighted if w > 0]
        self._pickers = tuple(p for _, p in live)
        self._cumulative = list(accumulate(w for w, _ in live))
        self._total = self._cumulative[-1] if live else 0.0

    def __repr__(self) -> str:
        return f"<LocalityPicker {len(self._pickers)} localities>"

    def pick(self, hash_key: int | None, attempt: int, rng: random.Random) -> Host | None:
        if not self._pickers:
            return None
        i = bisect_right(self._cumulative, rng.random() * self._total)
        return self._pickers[min(i, len(self._pickers) - 1)].pick(hash_key, attempt, rng)


def _equal_weights(hosts: Sequence[Host]) -> bool:
    return len({h.weight for h in hosts}) <= 1
