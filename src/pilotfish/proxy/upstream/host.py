"""An upstream host: where it is, how healthy it looks, and its counters.

A Host lives as long as its address stays in the cluster: a new assignment
for the same address:port updates it in place, so counters, active requests
and ejection state survive EDS pushes, as Envoy's do. Hosts hash by identity,
which keeps `exclude` sets (the previous-hosts retry predicate) cheap.
"""

from __future__ import annotations

from enum import IntEnum


class LocalOrigin(IntEnum):
    """Results the proxy itself observes, reported in place of a status code.

    Negative so that one `int` argument carries either an HTTP status or one of these.
    """

    CONNECT_FAILED = -1
    TIMEOUT = -2
    RESET = -3
    CONNECT_SUCCESS = -4


class EdsHealth(IntEnum):
    """What EDS said, folded as Envoy folds `HealthStatus`: UNKNOWN counts as
    healthy; UNHEALTHY, DRAINING and TIMEOUT fail the host; DEGRADED is used
    only when healthy hosts cannot carry the load."""

    HEALTHY = 0
    DEGRADED = 1
    UNHEALTHY = 2
    DRAINING = 3


class Health(IntEnum):
    HEALTHY = 0
    DEGRADED = 1
    UNHEALTHY = 2


class Host:
    __slots__ = (
        "address",
        "consecutive_5xx",
        "consecutive_gateway",
        "consecutive_local",
        "cx_active",
        "cx_connect_fail",
        "cx_total",
        "eds_health",
        "eject_multiplier",
        "ejected_at",
        "ejected_until",
        "hostname",
        "interval_ext_fail",
        "interval_ext_ok",
        "interval_local_fail",
        "interval_local_ok",
        "last_unejected_at",
        "local_origin_success_rate",
        "locality",
        "metadata",
        "port",
        "priority",
        "rq_active",
        "rq_error",
        "rq_success",
        "rq_timeout",
        "rq_total",
        "success_rate",
        "weight",
    )

    def __init__(
        self,
        address: str,
        port: int,
        *,
        weight: int = 1,
        priority: int = 0,
        locality: tuple[str, str, str] = ("", "", ""),
        hostname: str = "",
        eds_health: EdsHealth = EdsHealth.HEALTHY,
        metadata: dict[str, object] | None = None,
    ) -> None:
        self.address = address
        self.port = port
        self.weight = weight
        self.priority = priority
        self.locality = locality  # (region, zone, sub_zone)
        self.hostname = hostname
        self.eds_health = eds_health
        self.metadata: dict[str, object] = metadata or {}
        self.cx_active = self.cx_total = self.cx_connect_fail = 0
        self.rq_active = self.rq_total = self.rq_success = self.rq_error = self.rq_timeout = 0
        self.consecutive_5xx = self.consecutive_gateway = self.consecutive_local = 0
        self.interval_ext_ok = self.interval_ext_fail = 0
        self.interval_local_ok = self.interval_local_fail = 0
        self.ejected_at: float | None = None
        self.ejected_until = 0.0
        self.last_unejected_at: float | None = None
        self.eject_multiplier = 0
        self.success_rate = -1.0
        self.local_origin_success_rate = -1.0

    def __repr__(self) -> str:
        flags = self.health_flags()
        return f"<Host {self.address}:{self.port} p{self.priority} w{self.weight} {flags}>"

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def ejected(self) -> bool:
        return self.ejected_at is not None

    @property
    def health(self) -> Health:
        if self.ejected_at is not None or self.eds_health >= EdsHealth.UNHEALTHY:
            return Health.UNHEALTHY
        return Health.DEGRADED if self.eds_health == EdsHealth.DEGRADED else Health.HEALTHY

    def health_flags(self) -> str:
        """Envoy's `/clusters` spelling: `healthy`, or the failing flags in its order."""
        flags = ""
        if self.ejected_at is not None:
            flags += "/failed_outlier_check"
        if self.eds_health >= EdsHealth.UNHEALTHY:
            flags += "/failed_eds_health"
        if self.eds_health == EdsHealth.DEGRADED:
            flags += "/degraded_eds_health"
        return flags or "healthy"

    # Events from the shell. Request outcomes go through `Cluster.report`.
    def request_started(self) -> None:
        self.rq_active += 1
        self.rq_total += 1

    def request_finished(self) -> None:
        self.rq_active -= 1

    def connection_opened(self) -> None:
        self.cx_active += 1
        self.cx_total += 1

    def connection_closed(self) -> None:
        self.cx_active -= 1
