"""Consistent-hash balancers: ring hash (Ketama-style) and maglev.

Both map a request's 64-bit hash key (see `hashing.stable_hash`) to a host so
that the same key keeps landing on the same host, and removing one host moves
only the keys it owned. Both follow Envoy's construction: the ring gives each
host `scale * normalized weight` points, `scale` chosen so the lightest host
gets at least its share of `minimum_ring_size` (bounded by the maximum); maglev
fills a prime-sized table from per-host permutations (offset, skip), heavier
hosts claiming slots more often. Ring points are keyed `address:port_i` (or
`hostname_i` with use_hostname_for_hashing) as Envoy keys them, hashed with
BLAKE2b instead of xxHash.

With no hash key the shell passes None and a random key is drawn, as Envoy
does. After an excluded pick (previous-hosts retry), `attempt` moves the
lookup along the ring, or rehashes into the maglev table.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from collections.abc import Sequence

from pilotfish.proxy.upstream.hashing import stable_hash, stable_hash_pair
from pilotfish.proxy.upstream.host import Host

_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def host_key(host: Host, use_hostname: bool) -> str:
    return host.hostname if use_hostname and host.hostname else f"{host.address}:{host.port}"


class RingHash:
    __slots__ = ("_hosts", "_keys", "_n")

    def __init__(
        self,
        hosts: Sequence[Host],
        weights: Sequence[float],
        min_size: int = 1024,
        max_size: int = 8 * 1024 * 1024,
        use_hostname: bool = False,
    ) -> None:
        points = sorted(_ring_points(hosts, weights, min_size, max_size, use_hostname))
        self._keys = [k for k, _ in points]
        self._hosts = tuple(hosts[i] for _, i in points)
        self._n = len(points)

    def __repr__(self) -> str:
        return f"<RingHash {self._n} points>"

    def pick(self, hash_key: int | None, attempt: int, rng: random.Random) -> Host | None:
        n = self._n
        if not n:
            return None
        h = rng.getrandbits(64) if hash_key is None else hash_key
        i = bisect_left(self._keys, h)
        return self._hosts[(i + attempt) % n]


def _ring_points(
    hosts: Sequence[Host],
    weights: Sequence[float],
    min_size: int,
    max_size: int,
    use_hostname: bool,
) -> list[tuple[int, int]]:
    live = [(i, w) for i, w in enumerate(weights) if w > 0]
    if not live:
        return []
    total = sum(w for _, w in live)
    smallest = min(w for _, w in live) / total
    scale = min(math.ceil(smallest * min_size) / smallest, max_size)
    points: list[tuple[int, int]] = []
    target = 0.0
    for i, w in live:
        target += scale * w / total
        key = host_key(hosts[i], use_hostname)
        j = 0
        while len(points) < target:
            points.append((stable_hash(f"{key}_{j}".encode()), i))
            j += 1
    return points


class Maglev:
    __slots__ = ("_size", "_table")

    def __init__(
        self,
        hosts: Sequence[Host],
        weights: Sequence[float],
        table_size: int = 65537,
        use_hostname: bool = False,
    ) -> None:
        slots = _maglev_slots(hosts, weights, table_size, use_hostname)
        self._table = tuple(hosts[i] for i in slots) if slots else ()
        self._size = len(self._table)

    def __repr__(self) -> str:
        return f"<Maglev {self._size} entries>"

    def pick(self, hash_key: int | None, attempt: int, rng: random.Random) -> Host | None:
        size = self._size
        if not size:
            return None
        h = rng.getrandbits(64) if hash_key is None else hash_key
        if attempt:
            h = ((h ^ (h >> 29)) + attempt * _GOLDEN) & _MASK64
        return self._table[h % size]


def _maglev_slots(
    hosts: Sequence[Host], weights: Sequence[float], size: int, use_hostname: bool
) -> list[int]:
    """Host index per table slot. Each round a host earns weight/max_weight of a
    claim; with a full claim it takes the next free slot of its permutation."""
    live = [i for i, w in enumerate(weights) if w > 0]
    if not live:
        return []
    heaviest = max(weights[i] for i in live)
    step = [weights[i] / heaviest for i in live]
    position, skip = [], []
    for i in live:
        h1, h2 = stable_hash_pair(host_key(hosts[i], use_hostname).encode())
        position.append(h1 % size)
        skip.append(h2 % (size - 1) + 1)
    table = [-1] * size
    credit = [0.0] * len(live)
    filled = 0
    while filled < size:
        for k, host_index in enumerate(live):
            credit[k] += step[k]
            if credit[k] < 1.0 - 1e-9:
                continue
            credit[k] -= 1.0
            c = position[k]
            while table[c] >= 0:
                c = (c + skip[k]) % size
            table[c] = host_index
            position[k] = (c + skip[k]) % size
            filled += 1
            if filled == size:
                break
    return table
