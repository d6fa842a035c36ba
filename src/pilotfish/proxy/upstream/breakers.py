"""Circuit breakers: per-cluster ceilings on connections, pending requests,
requests and retries, as Envoy's `circuit_breakers.thresholds`.

The shell asks before it acts and releases when done; a refusal means the
request is answered 503 at once with flag UO (no queueing, no waiting), and
the overflow is counted under Envoy's stat name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Retries allowed as a share of the requests in flight (active + pending),
    never fewer than `min_retry_concurrency`. Replaces `max_retries` when set."""

    budget_percent: float = 20.0
    min_retry_concurrency: int = 3


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Envoy's defaults: 1024 connections, pending and requests, 3 retries."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    max_connection_pools: int | None = None  # unlimited unless set
    retry_budget: RetryBudget | None = None
    track_remaining: bool = False


class CircuitBreakers:
    """Open counts and overflow counters for one cluster at one routing priority."""

    __slots__ = (
        "cx_open",
        "cx_overflow",
        "pool_open",
        "pool_overflow",
        "priority",
        "rq_open",
        "rq_pending_open",
        "rq_pending_overflow",
        "rq_retry_open",
        "rq_retry_overflow",
        "thresholds",
    )

    def __init__(self, thresholds: Thresholds, priority: str = "default") -> None:
        self.thresholds = thresholds
        self.priority = priority
        self.cx_open = self.rq_pending_open = self.rq_open = self.rq_retry_open = 0
        self.pool_open = 0
        self.cx_overflow = self.rq_pending_overflow = self.rq_retry_overflow = 0
        self.pool_overflow = 0

    def keep_counters(self, old: CircuitBreakers) -> None:
        self.cx_overflow, self.pool_overflow = old.cx_overflow, old.pool_overflow
        self.rq_pending_overflow = old.rq_pending_overflow
        self.rq_retry_overflow = old.rq_retry_overflow

    def __repr__(self) -> str:
        return (
            f"<CircuitBreakers {self.priority} cx={self.cx_open} pending={self.rq_pending_open}"
            f" rq={self.rq_open} retries={self.rq_retry_open}>"
        )

    def try_acquire_request(self) -> bool:
        # Envoy counts a request refused by max_requests as a pending overflow.
        if self.rq_open >= self.thresholds.max_requests:
            self.rq_pending_overflow += 1
            return False
        self.rq_open += 1
        return True

    def release_request(self) -> None:
        self.rq_open -= 1

    def try_acquire_pending(self) -> bool:
        """A request waiting for a connection; refused past max_pending_requests."""
        if self.rq_pending_open >= self.thresholds.max_pending_requests:
            self.rq_pending_overflow += 1
            return False
        self.rq_pending_open += 1
        return True

    def release_pending(self) -> None:
        self.rq_pending_open -= 1

    def try_acquire_connection(self) -> bool:
        if self.cx_open >= self.thresholds.max_connections:
            self.cx_overflow += 1
            return False
        self.cx_open += 1
        return True

    def release_connection(self) -> None:
        self.cx_open -= 1

    def try_acquire_pool(self) -> bool:
        limit = self.thresholds.max_connection_pools
        if limit is not None and self.pool_open >= limit:
            self.pool_overflow += 1
            return False
        self.pool_open += 1
        return True

    def release_pool(self) -> None:
        self.pool_open -= 1

    def try_acquire_retry(self) -> bool:
        if self.rq_retry_open >= self.max_retries():
            self.rq_retry_overflow += 1
            return False
        self.rq_retry_open += 1
        return True

    def release_retry(self) -> None:
        self.rq_retry_open -= 1

    def max_retries(self) -> int:
        budget = self.thresholds.retry_budget
        if budget is None:
            return self.thresholds.max_retries
        in_flight = self.rq_open + self.rq_pending_open
        return max(budget.min_retry_concurrency, int(in_flight * budget.budget_percent / 100))

    def gauges(self) -> dict[str, int]:
        """`circuit_breakers.<priority>.*` gauges (1 while the breaker is open, as Envoy)."""
        t, p = self.thresholds, f"circuit_breakers.{self.priority}."
        out = {
            p + "cx_open": int(self.cx_open >= t.max_connections),
            p + "rq_pending_open": int(self.rq_pending_open >= t.max_pending_requests),
            p + "rq_open": int(self.rq_open >= t.max_requests),
            p + "rq_retry_open": int(self.rq_retry_open >= self.max_retries()),
        }
        if t.max_connection_pools is not None:
            out[p + "cx_pool_open"] = int(self.pool_open >= t.max_connection_pools)
        if t.track_remaining:
            out[p + "remaining_cx"] = max(0, t.max_connections - self.cx_open)
            out[p + "remaining_pending"] = max(0, t.max_pending_requests - self.rq_pending_open)
            out[p + "remaining_rq"] = max(0, t.max_requests - self.rq_open)
            out[p + "remaining_retries"] = max(0, self.max_retries() - self.rq_retry_open)
            if t.max_connection_pools is not None:
                out[p + "remaining_cx_pools"] = max(0, t.max_connection_pools - self.pool_open)
        return out

    def counters(self) -> dict[str, int]:
        """Cluster-level overflow counters under Envoy's names."""
        return {
            "upstream_cx_overflow": self.cx_overflow,
            "upstream_rq_pending_overflow": self.rq_pending_overflow,
            "upstream_rq_retry_overflow": self.rq_retry_overflow,
            "upstream_cx_pool_overflow": self.pool_overflow,
        }
