"""Outlier detection (passive health checking), as Envoy's `outlier_detection`.

Consecutive-error detectors run inline, on each reported result; success
rate and failure percentage run once per interval over that interval's
results. An ejected host leaves the load-balancing set for
`base_ejection_time * times ejected in a row` (capped at `max_ejection_time`)
and comes back at the first interval check after that time; every interval
it then stays healthy takes one off the multiplier. Ejections never exceed
`max_ejection_percent` of the cluster's hosts.

Time is whatever monotonic clock the shell passes in; nothing here reads one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from pilotfish.proxy.upstream.host import Host, LocalOrigin


class Ejection(Enum):
    """Detection types; values are Envoy's stat-name stems."""

    CONSECUTIVE_5XX = "consecutive_5xx"
    CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"
    CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "consecutive_local_origin_failure"
    SUCCESS_RATE = "success_rate"
    SUCCESS_RATE_LOCAL_ORIGIN = "local_origin_success_rate"
    FAILURE_PERCENTAGE = "failure_percentage"
    FAILURE_PERCENTAGE_LOCAL_ORIGIN = "local_origin_failure_percentage"


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Envoy's defaults; times in seconds, percentages 0-100."""

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    consecutive_local_origin_failure: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_time_jitter: float = 0.0
    max_ejection_percent: int = 10
    always_eject_one_host: bool = False
    split_external_local_origin_errors: bool = False
    enforcing_consecutive_5xx: int = 100
    enforcing_consecutive_gateway_failure: int = 0
    enforcing_consecutive_local_origin_failure: int = 100
    enforcing_success_rate: int = 100
    enforcing_local_origin_success_rate: int = 100
    enforcing_failure_percentage: int = 0
    enforcing_failure_percentage_local_origin: int = 0
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900  # thousandths
    failure_percentage_threshold: int = 85
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50

    def enforcing(self, kind: Ejection) -> int:
        return {
            Ejection.CONSECUTIVE_5XX: self.enforcing_consecutive_5xx,
            Ejection.CONSECUTIVE_GATEWAY_FAILURE: self.enforcing_consecutive_gateway_failure,
            Ejection.CONSECUTIVE_LOCAL_ORIGIN_FAILURE: (
                self.enforcing_consecutive_local_origin_failure
            ),
            Ejection.SUCCESS_RATE: self.enforcing_success_rate,
            Ejection.SUCCESS_RATE_LOCAL_ORIGIN: self.enforcing_local_origin_success_rate,
            Ejection.FAILURE_PERCENTAGE: self.enforcing_failure_percentage,
            Ejection.FAILURE_PERCENTAGE_LOCAL_ORIGIN: (
                self.enforcing_failure_percentage_local_origin
            ),
        }[kind]

    def ejection_time(self, multiplier: int) -> float:
        return min(self.base_ejection_time * multiplier, self.max_time)

    @property
    def max_time(self) -> float:
        # Envoy: the configured maximum, or the base time when that is larger.
        return max(self.max_ejection_time, self.base_ejection_time)


# Outside split mode, Envoy folds the proxy's own failures into HTTP codes.
_LOCAL_AS_STATUS = {
    LocalOrigin.CONNECT_FAILED: 503,
    LocalOrigin.RESET: 503,
    LocalOrigin.TIMEOUT: 504,
}
_GATEWAY_ERRORS = frozenset({502, 503, 504})


class OutlierDetector:
    def __init__(
        self,
        config: OutlierConfig,
        on_change: Callable[[], None],
        rng: random.Random,
        now: float = 0.0,
    ) -> None:
        self.config = config
        self.hosts: Sequence[Host] = ()
        self._on_change = on_change
        self._rng = rng
        self._next_interval = now + config.interval
        self.ejections_active = 0
        self.ejections_overflow = 0
        self.ejections_total = 0
        self.ejections_enforced_total = 0
        self.detected: dict[Ejection, int] = dict.fromkeys(Ejection, 0)
        self.enforced: dict[Ejection, int] = dict.fromkeys(Ejection, 0)
        self.success_rate_average = -1.0
        self.success_rate_ejection_threshold = -1.0

    def __repr__(self) -> str:
        return f"<OutlierDetector ejected={self.ejections_active}/{len(self.hosts)}>"

    def keep_counters(self, old: OutlierDetector) -> None:
        self.ejections_overflow, self.ejections_total = old.ejections_overflow, old.ejections_total
        self.ejections_enforced_total = old.ejections_enforced_total
        self.detected, self.enforced = dict(old.detected), dict(old.enforced)

    def set_hosts(self, hosts: Sequence[Host]) -> None:
        self.hosts = hosts
        self.ejections_active = sum(1 for h in hosts if h.ejected_at is not None)

    def next_deadline(self) -> float:
        """When the shell should call `tick` next."""
        return self._next_interval

    def report(self, host: Host, result: int, now: float) -> None:
        """An HTTP status, or a `LocalOrigin` result, for a request to `host`."""
        if now >= self._next_interval:
            self.tick(now)
        if result >= 0:
            self._external(host, result, now)
        elif self.config.split_external_local_origin_errors:
            self._local_split(host, result, now)
        elif result != LocalOrigin.CONNECT_SUCCESS:
            self._external(host, _LOCAL_AS_STATUS[LocalOrigin(result)], now)

    def _external(self, host: Host, status: int, now: float) -> None:
        if status < 500:
            host.interval_ext_ok += 1
            host.consecutive_5xx = host.consecutive_gateway = 0
            return
        host.interval_ext_fail += 1
        if status in _GATEWAY_ERRORS:
            host.consecutive_gateway += 1
            if host.consecutive_gateway == self.config.consecutive_gateway_failure:
                self._detected(host, Ejection.CONSECUTIVE_GATEWAY_FAILURE, now)
        else:
            host.consecutive_gateway = 0
        host.consecutive_5xx += 1
        if host.consecutive_5xx == self.config.consecutive_5xx:
            self._detected(host, Ejection.CONSECUTIVE_5XX, now)

    def _local_split(self, host: Host, result: int, now: float) -> None:
        if result == LocalOrigin.CONNECT_SUCCESS:
            host.interval_local_ok += 1
            host.consecutive_local = 0
            return
        host.interval_local_fail += 1
        host.consecutive_local += 1
        if host.consecutive_local == self.config.consecutive_local_origin_failure:
            self._detected(host, Ejection.CONSECUTIVE_LOCAL_ORIGIN_FAILURE, now)

    def _detected(self, host: Host, kind: Ejection, now: float) -> None:
        self.detected[kind] += 1
        if host.ejected_at is None and self._eject(host, kind, now):
            self._on_change()

    def _eject(self, host: Host, kind: Ejection, now: float) -> bool:
        """Eject unless max_ejection_percent forbids it or enforcement declines."""
        cfg = self.config
        active = self.ejections_active
        room = 100 * active / max(1, len(self.hosts)) < cfg.max_ejection_percent
        if not room and not (cfg.always_eject_one_host and active == 0):
            self.ejections_overflow += 1
            return False
        if kind in (Ejection.CONSECUTIVE_5XX, Ejection.SUCCESS_RATE):
            self.ejections_total += 1  # Envoy's deprecated total counts only these two
        if self._rng.randrange(100) >= cfg.enforcing(kind):
            return False
        if cfg.base_ejection_time * host.eject_multiplier < cfg.max_time:
            host.eject_multiplier += 1
        jitter = self._rng.random() * cfg.max_ejection_time_jitter
        host.ejected_at = now
        host.ejected_until = now + cfg.ejection_time(host.eject_multiplier) + jitter
        self.ejections_active += 1
        self.ejections_enforced_total += 1
        self.enforced[kind] += 1
        return True

    def tick(self, now: float) -> None:
        """The interval check, if one is due: un-eject, decay, statistical ejection."""
        if now < self._next_interval:
            return
        self._next_interval += self.config.interval
        if self._next_interval <= now:  # the shell was late: realign, don't replay
            self._next_interval = now + self.config.interval
        changed = self._uneject_due(now)
        changed |= self._statistical(now)
        if changed:
            self._on_change()

    def _uneject_due(self, now: float) -> bool:
        changed = False
        for host in self.hosts:
            if host.ejected_at is not None:
                if now >= host.ejected_until:
                    host.ejected_at = None
                    host.last_unejected_at = now
                    host.consecutive_5xx = host.consecutive_gateway = host.consecutive_local = 0
                    self.ejections_active -= 1
                    changed = True
            elif (
                host.eject_multiplier
                and host.last_unejected_at is not None
                and now - host.last_unejected_at >= self.config.interval
            ):
                host.eject_multiplier -= 1
        return changed

    def _statistical(self, now: float) -> bool:
        cfg, hosts = self.config, self.hosts
        ext = [(h, h.interval_ext_ok, h.interval_ext_fail) for h in hosts]
        if not cfg.split_external_local_origin_errors:
            changed = self._success_rate(ext, Ejection.SUCCESS_RATE, now)
            changed |= self._failure_percentage(ext, Ejection.FAILURE_PERCENTAGE, now)
        else:
            local = [(h, h.interval_local_ok, h.interval_local_fail) for h in hosts]
            changed = self._success_rate(ext, Ejection.SUCCESS_RATE, now)
            changed |= self._success_rate(local, Ejection.SUCCESS_RATE_LOCAL_ORIGIN, now)
            changed |= self._failure_percentage(ext, Ejection.FAILURE_PERCENTAGE, now)
            changed |= self._failure_percentage(
                local, Ejection.FAILURE_PERCENTAGE_LOCAL_ORIGIN, now
            )
        for h in hosts:
            h.interval_ext_ok = h.interval_ext_fail = 0
            h.interval_local_ok = h.interval_local_fail = 0
        return changed

    def _success_rate(
        self, counts: list[tuple[Host, int, int]], kind: Ejection, now: float
    ) -> bool:
        cfg = self.config
        rates = _success_rates(counts, cfg.success_rate_request_volume)
        local = kind is Ejection.SUCCESS_RATE_LOCAL_ORIGIN
        valid = {id(h): rate for h, rate in rates}
        for h, _, _ in counts:
            rate = valid.get(id(h), -1.0)
            if local:
                h.local_origin_success_rate = rate
            else:
                h.success_rate = rate
        if len(rates) < cfg.success_rate_minimum_hosts or not rates:
            return False
        mean = sum(r for _, r in rates) / len(rates)
        stdev = math.sqrt(sum((r - mean) ** 2 for _, r in rates) / len(rates))
        threshold = mean - stdev * cfg.success_rate_stdev_factor / 1000
        if not local:
            self.success_rate_average, self.success_rate_ejection_threshold = mean, threshold
        return self._eject_below(rates, threshold, kind, now)

    def _failure_percentage(
        self, counts: list[tuple[Host, int, int]], kind: Ejection, now: float
    ) -> bool:
        cfg = self.config
        rates = _success_rates(counts, cfg.failure_percentage_request_volume)
        if len(rates) < cfg.failure_percentage_minimum_hosts:
            return False
        # failure% >= threshold  <=>  success% <= 100 - threshold
        floor = 100.0 - cfg.failure_percentage_threshold
        return self._eject_below(rates, floor, kind, now, inclusive=True)

    def _eject_below(
        self,
        rates: list[tuple[Host, float]],
        threshold: float,
        kind: Ejection,
        now: float,
        inclusive: bool = False,
    ) -> bool:
        changed = False
        for host, rate in rates:
            if rate < threshold or (inclusive and rate <= threshold):
                self.detected[kind] += 1
                if host.ejected_at is None and self._eject(host, kind, now):
                    changed = True
        return changed

    def stats(self) -> dict[str, int]:
        """`outlier_detection.*` counters and gauges under Envoy's names."""
        out = {
            "outlier_detection.ejections_active": self.ejections_active,
            "outlier_detection.ejections_overflow": self.ejections_overflow,
            "outlier_detection.ejections_total": self.ejections_total,
            "outlier_detection.ejections_enforced_total": self.ejections_enforced_total,
        }
        for kind in Ejection:
            out[f"outlier_detection.ejections_detected_{kind.value}"] = self.detected[kind]
            out[f"outlier_detection.ejections_enforced_{kind.value}"] = self.enforced[kind]
        return out


def _success_rates(counts: list[tuple[Host, int, int]], volume: int) -> list[tuple[Host, float]]:
    """Success percentage of every host that saw at least `volume` requests."""
    return [(h, 100.0 * ok / (ok + fail)) for h, ok, fail in counts if ok + fail >= volume]
