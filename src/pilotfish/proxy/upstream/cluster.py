"""A cluster at run time: its hosts, the load-balancing state built from them,
its circuit breakers and its outlier detector.

Everything that depends on host health (priority loads, panic, locality
weights, rings) is rebuilt when health changes (an EDS push, an ejection, an
un-ejection), so that `pick` does only lookups: for one healthy priority it is
a single call into that priority's balancer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pilotfish.proxy.upstream.balancers import (
    LeastRequest,
    LocalityPicker,
    Picker,
    RandomPicker,
    RoundRobin,
)
from pilotfish.proxy.upstream.breakers import CircuitBreakers
from pilotfish.proxy.upstream.hashring import Maglev, RingHash
from pilotfish.proxy.upstream.host import Health, Host, LocalOrigin
from pilotfish.proxy.upstream.outlier import OutlierDetector
from pilotfish.proxy.upstream.priority import Level, PriorityLoad, priority_load
from pilotfish.proxy.upstream.spec import (
    ClusterSpec,
    EndpointSpec,
    LbPolicy,
    LoadAssignment,
    UpstreamHttp,
)

Locality = tuple[str, str, str]
_HASHING = (LbPolicy.RING_HASH, LbPolicy.MAGLEV)
_PLAIN = (RoundRobin, LeastRequest, RandomPicker)  # any of them over one host gives it


class _Slot(NamedTuple):
    upto: int  # cumulative load percent
    picker: Picker
    panic: bool


@dataclass(slots=True)
class _LbState:
    """What `pick` consults; replaced wholesale on every rebuild."""

    slots: tuple[_Slot, ...]
    hashing: bool
    load: PriorityLoad | None
    single: Picker | None = None
    single_panic: bool = False
    # The one host a single plain balancer (round robin, least request,
    # random) over one host always gives: no balancer call for a cluster
    # of one endpoint, the common sidecar case.
    only: Host | None = None


class Cluster:
    def __init__(
        self,
        spec: ClusterSpec,
        rng: random.Random | None = None,
        now: float = 0.0,
        known_hosts: dict[tuple[str, int], Host] | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        # Decided once here rather than by the pool for every request: a
        # cluster that speaks HTTP/1.1 only never asks the HTTP/2 pool.
        self.http1_only = spec.pool.http is UpstreamHttp.HTTP1
        self.rng = rng if rng is not None else random.Random()
        self.hosts: tuple[Host, ...] = ()
        self.assignment = spec.load_assignment or LoadAssignment(spec.eds_service_name or spec.name)
        self.breakers = CircuitBreakers(spec.thresholds, "default")
        self.high_breakers = CircuitBreakers(spec.high_thresholds, "high")
        self.outlier = (
            OutlierDetector(spec.outlier, self._rebuild, self.rng, now) if spec.outlier else None
        )
        self.lb_healthy_panic = 0
        self.upstream_cx_none_healthy = 0
        self._by_key: dict[tuple[str, int], Host] = dict(known_hosts or {})
        self._locality_weight: dict[tuple[int, Locality], int] = {}
        self._state = _LbState((), False, None)
        self.set_assignment(self.assignment)

    def __repr__(self) -> str:
        healthy = sum(1 for h in self.hosts if h.health is Health.HEALTHY)
        return (
            f"<Cluster {self.name} {self.spec.lb.policy.value} {healthy}/{len(self.hosts)} healthy>"
        )

    # --- configuration -----------------------------------------------------

    def set_assignment(self, assignment: LoadAssignment) -> None:
        """New endpoints (EDS push). Hosts already known keep their state."""
        self.assignment = assignment
        hosts: list[Host] = []
        by_key: dict[tuple[str, int], Host] = {}
        self._locality_weight = {}
        for ep in assignment.endpoints:
            if ep.key in by_key:  # Envoy keeps the first of duplicate addresses
                continue
            host = self._by_key.get(ep.key) or Host(ep.address, ep.port)
            _apply(host, ep)
            by_key[ep.key] = host
            hosts.append(host)
            self._locality_weight[(ep.priority, ep.locality)] = ep.locality_weight
        self.hosts, self._by_key = tuple(hosts), by_key
        if self.outlier is not None:
            self.outlier.set_hosts(self.hosts)
        self._rebuild()

    def with_spec(self, spec: ClusterSpec, now: float = 0.0) -> Cluster:
        """The cluster under a new Cluster resource (CDS push). An EDS cluster
        keeps its endpoints, and their state, until its next assignment."""
        fresh = Cluster(spec, self.rng, now, self._by_key)
        if spec.is_eds and spec.eds_service_name == self.spec.eds_service_name:
            fresh._by_key = dict(self._by_key)
            fresh.set_assignment(self.assignment)
        fresh.keep_counters(self)
        return fresh

    def keep_counters(self, old: Cluster) -> None:
        """Envoy keeps a cluster's stats by its name: the counters of the
        cluster this one replaces go on counting here."""
        self.lb_healthy_panic = old.lb_healthy_panic
        self.upstream_cx_none_healthy = old.upstream_cx_none_healthy
        self.breakers.keep_counters(old.breakers)
        self.high_breakers.keep_counters(old.high_breakers)
        if self.outlier is not None and old.outlier is not None:
            self.outlier.keep_counters(old.outlier)

    def host(self, address: str, port: int) -> Host | None:
        return self._by_key.get((address, port))

    # --- the data path ------------------------------------------------------

    def pick(
        self,
        hash_key: int | None = None,
        exclude: set[Host] | frozenset[Host] | None = None,
        rng: random.Random | None = None,
        retries: int = 1,
    ) -> Host | None:
        """A host for one request, or None (the shell answers 503, flag UH).

        `hash_key` is the request's consistent-hash key (`stable_hash` of the
        route's hash policy output). `exclude` holds hosts the previous-hosts
        retry predicate rejects: up to `retries` more picks are made to avoid
        them, and, as in Envoy, the last pick is used if all are excluded.
        """
        only = self._state.only
        if only is not None:
            return only
        if rng is None:
            rng = self.rng
        host = self._choose(hash_key, 0, rng)
        if exclude:
            attempt = 0
            while host is not None and host in exclude and attempt < retries:
                attempt += 1
                host = self._choose(hash_key, attempt, rng)
        if host is None:
            self.upstream_cx_none_healthy += 1
        return host

    def _choose(self, hash_key: int | None, attempt: int, rng: random.Random) -> Host | None:
        state = self._state
        single = state.single
        if single is not None:
            if state.single_panic:
                self.lb_healthy_panic += 1
            return single.pick(hash_key, attempt, rng)
        if state.hashing and hash_key is not None:
            roll = hash_key % 100 + 1
        else:
            roll = int(rng.random() * 100) + 1
        for slot in state.slots:
            if roll <= slot.upto:
                if slot.panic:
                    self.lb_healthy_panic += 1
                return slot.picker.pick(hash_key, attempt, rng)
        return None

    def report(self, host: Host, result: int, now: float | None = None) -> None:
        """The outcome of a request to `host`: its HTTP status, or a LocalOrigin
        result (connect failure, timeout, reset, connect success); `now` in
        time.monotonic(), read when outlier detection needs it if not given."""
        if 0 <= result < 500:
            host.rq_success += 1
        elif result >= 500 or result == LocalOrigin.RESET:
            host.rq_error += 1
        elif result == LocalOrigin.TIMEOUT:
            host.rq_timeout += 1
        elif result == LocalOrigin.CONNECT_FAILED:
            host.cx_connect_fail += 1
        if self.outlier is not None:
            self.outlier.report(host, result, time.monotonic() if now is None else now)

    def tick(self, now: float) -> None:
        """Call at `next_deadline()`; un-ejects hosts whose time is up. Also run
        lazily from `report`, so a shell without a timer still recovers hosts."""
        if self.outlier is not None:
            self.outlier.tick(now)

    def next_deadline(self) -> float | None:
        return self.outlier.next_deadline() if self.outlier is not None else None

    def breakers_for(self, high_priority: bool) -> CircuitBreakers:
        return self.high_breakers if high_priority else self.breakers

    # --- load-balancing state ------------------------------------------------

    def _rebuild(self) -> None:
        levels = _by_priority(self.hosts)
        if not levels:
            self._state = _LbState((), False, None)
            return
        weighted = self.assignment.weighted_priority_health
        load = priority_load(
            [_level(hs, weighted) for hs in levels],
            [_level(hs, False) for hs in levels],
            self.assignment.overprovisioning_factor,
            self.spec.lb.panic_threshold,
        )
        self._state = self._state_for(levels, load)

    def _state_for(self, levels: list[list[Host]], load: PriorityLoad) -> _LbState:
        slots: list[_Slot] = []
        slot_hosts: Sequence[Host] = ()  # the last slot's
        upto = 0
        for wanted, loads in ((Health.HEALTHY, load.healthy), (Health.DEGRADED, load.degraded)):
            for p, share in enumerate(loads):
                if not share:
                    continue
                upto += share
                panic = load.panic[p]
                hosts = levels[p] if panic else [h for h in levels[p] if h.health is wanted]
                picker = self._picker(hosts, levels[p], wanted, locality=not panic)
                slots.append(_Slot(upto, picker, panic))
                slot_hosts = hosts
        hashing = self.spec.lb.policy in _HASHING
        state = _LbState(tuple(slots), hashing, load)
        if len(slots) == 1:
            state.single, state.single_panic = slots[0].picker, slots[0].panic
            if not state.single_panic and isinstance(state.single, _PLAIN) and len(slot_hosts) == 1:
                state.only = slot_hosts[0]
        return state

    def _picker(
        self, hosts: Sequence[Host], level: Sequence[Host], wanted: Health, locality: bool
    ) -> Picker:
        lb = self.spec.lb
        by_locality = self._locality_shares(hosts, level, wanted) if locality else None
        if lb.policy in _HASHING:
            weights = _hash_weights(hosts, by_locality, self._locality_weight)
            if lb.policy is LbPolicy.RING_HASH:
                return RingHash(
                    hosts, weights, lb.ring_min, lb.ring_max, lb.use_hostname_for_hashing
                )
            return Maglev(hosts, weights, lb.maglev_table_size, lb.use_hostname_for_hashing)
        if by_locality is None:
            return self._plain_picker(hosts)
        groups = _group(hosts)
        return LocalityPicker(
            [(share, self._plain_picker(groups[loc])) for loc, share in by_locality.items()]
        )

    def _plain_picker(self, hosts: Sequence[Host]) -> Picker:
        lb = self.spec.lb
        if lb.policy is LbPolicy.LEAST_REQUEST:
            return LeastRequest(hosts, lb.choice_count, lb.active_request_bias)
        if lb.policy is LbPolicy.RANDOM:
            return RandomPicker(hosts)
        return RoundRobin(hosts, self.rng.randrange(len(hosts)) if hosts else 0)

    def _locality_shares(
        self, hosts: Sequence[Host], level: Sequence[Host], wanted: Health
    ) -> dict[Locality, float] | None:
        """Envoy's effective locality weight: weight * min(100, factor * available / total)."""
        if not self.spec.lb.locality_weighted or not hosts:
            return None
        factor = self.assignment.overprovisioning_factor
        priority = hosts[0].priority
        shares: dict[Locality, float] = {}
        for loc, members in _group(level).items():
            available = sum(1 for h in members if h.health is wanted)
            weight = self._locality_weight.get((priority, loc), 0)
            if available and weight:
                shares[loc] = weight * min(100, factor * available // len(members))
        return shares

    # --- observability ------------------------------------------------------

    @property
    def priority_load(self) -> PriorityLoad | None:
        return self._state.load

    def stats(self) -> dict[str, int]:
        """Cluster stats under Envoy's names (without the `cluster.<name>.` prefix)."""
        out = {
            "membership_total": len(self.hosts),
            "membership_healthy": sum(1 for h in self.hosts if h.health is Health.HEALTHY),
            "membership_degraded": sum(1 for h in self.hosts if h.health is Health.DEGRADED),
            "membership_excluded": 0,
            "lb_healthy_panic": self.lb_healthy_panic,
            "upstream_cx_none_healthy": self.upstream_cx_none_healthy,
            "upstream_cx_active": sum(h.cx_active for h in self.hosts),
            "upstream_rq_active": sum(h.rq_active for h in self.hosts),
            "upstream_rq_pending_active": self.breakers.rq_pending_open
            + self.high_breakers.rq_pending_open,
            "max_host_weight": max((h.weight for h in self.hosts), default=0),
        }
        high = self.high_breakers.counters()
        out.update({name: n + high[name] for name, n in self.breakers.counters().items()})
        out.update(self.breakers.gauges())
        out.update(self.high_breakers.gauges())
        if self.outlier is not None:
            out.update(self.outlier.stats())
        return out


def _apply(host: Host, ep: EndpointSpec) -> None:
    host.weight, host.priority, host.locality = ep.weight, ep.priority, ep.locality
    host.hostname, host.eds_health, host.metadata = ep.hostname, ep.eds_health, ep.metadata


def _by_priority(hosts: Iterable[Host]) -> list[list[Host]]:
    """Hosts per priority 0..max; a level with no hosts is kept, empty."""
    levels: list[list[Host]] = []
    for h in hosts:
        while len(levels) <= h.priority:
            levels.append([])
        levels[h.priority].append(h)
    return levels


def _level(hosts: Sequence[Host], weighted: bool) -> Level:
    if weighted:
        return Level(
            sum(h.weight for h in hosts if h.health is Health.HEALTHY),
            sum(h.weight for h in hosts if h.health is Health.DEGRADED),
            sum(h.weight for h in hosts),
        )
    return Level(
        sum(1 for h in hosts if h.health is Health.HEALTHY),
        sum(1 for h in hosts if h.health is Health.DEGRADED),
        len(hosts),
    )


def _group(hosts: Iterable[Host]) -> dict[Locality, list[Host]]:
    groups: dict[Locality, list[Host]] = {}
    for h in hosts:
        groups.setdefault(h.locality, []).append(h)
    return groups


def _hash_weights(
    hosts: Sequence[Host],
    by_locality: dict[Locality, float] | None,
    locality_weight: dict[tuple[int, Locality], int],
) -> list[float]:
    """Host weights for a ring or table; with locality weighting, each
    locality's share is split among its hosts by host weight."""
    if by_locality is None:
        return [float(h.weight) for h in hosts]
    total = sum(by_locality.values()) or 1.0
    in_locality: dict[Locality, int] = {}
    for h in hosts:
        in_locality[h.locality] = in_locality.get(h.locality, 0) + h.weight
    return [
        by_locality.get(h.locality, 0.0) / total * h.weight / in_locality[h.locality] for h in hosts
    ]
