"""Envoy's retry policy as pure decisions: whether a try's outcome is retried,
how long to back off first, and how long a try may take.

The exchange core (proxy/exchange_core.py) asks `verdict` after every failed
or answered try; the shell turns `backoff_delay` and `per_try_timeout` into
timers. Nothing here reads a clock or a random source: the shell passes them in.
"""

from __future__ import annotations

from typing import Final

from pilotfish.proxy import grpc
from pilotfish.proxy.routing import RetryOn, RetryPolicy

# What a try's outcome means for the exchange.
ACCEPT: Final = 0  # not retriable: the response (or failure) goes to the client
RETRY: Final = 1  # retriable, and a retry is left
EXHAUSTED: Final = 2  # retriable, but no retry is left: Envoy's URX
VERDICT_NAMES: Final = ("accept", "retry", "exhausted")

# Failure flags, by the retry_on conditions that cover them (Envoy's router).
_ON_RESET: Final = RetryOn.RESET | RetryOn.GATEWAY_ERROR | RetryOn.FIVE_XX
_ON_CONNECT: Final = RetryOn.CONNECT_FAILURE | RetryOn.GATEWAY_ERROR | RetryOn.FIVE_XX
_ON_TIMEOUT: Final = RetryOn.GATEWAY_ERROR | RetryOn.FIVE_XX
# gRPC statuses, by the retry_on conditions that cover them (Envoy's RetryStateImpl).
_ON_GRPC: Final = {
    grpc.CANCELLED: RetryOn.GRPC_CANCELLED,
    grpc.DEADLINE_EXCEEDED: RetryOn.GRPC_DEADLINE_EXCEEDED,
    grpc.RESOURCE_EXHAUSTED: RetryOn.GRPC_RESOURCE_EXHAUSTED,
    grpc.UNAVAILABLE: RetryOn.GRPC_UNAVAILABLE,
    grpc.INTERNAL: RetryOn.GRPC_INTERNAL,
}


def retriable_status(status: int, retry: RetryPolicy, grpc_status: int | None = None) -> bool:
    """Whether an upstream's final status, or the grpc-status in its headers
    (a trailers-only answer: Envoy reads no trailers for this), is one the
    policy retries."""
    on = retry.retry_on
    return (
        (grpc_status is not None and bool(on & _ON_GRPC.get(grpc_status, 0)))
        or (bool(on & RetryOn.FIVE_XX) and status >= 500)
        or (bool(on & RetryOn.GATEWAY_ERROR) and status in (502, 503, 504))
        or (bool(on & RetryOn.RETRIABLE_4XX) and status == 409)
        or (bool(on & RetryOn.RETRIABLE_STATUS_CODES) and status in retry.retriable_status_codes)
    )


def retriable_failure(flag: str, on: RetryOn) -> bool:
    """Whether a try that got no response (its Envoy flag) is one `on` retries."""
    if flag == "UF":
        return bool(on & _ON_CONNECT)
    if flag == "UT":
        return bool(on & _ON_TIMEOUT)
    if flag == "UR":  # only ever a refused HTTP/2 stream (upstream/h2_core.py): never processed
        return bool(on & (_ON_RESET | RetryOn.REFUSED_STREAM))
    return flag in ("UC", "UPE") and bool(on & _ON_RESET)


def verdict(
    retry: RetryPolicy | None,
    retries_left: int,
    replayable: bool,
    outcome: str | int,
    grpc_status: int | None = None,
) -> int:
    """ACCEPT, RETRY or EXHAUSTED for a try whose outcome is a final status
    (int, with the grpc-status of its headers if any) or a failure flag
    (str). A request whose body was not kept whole
    cannot be sent again: a retriable outcome is then EXHAUSTED."""
    if retry is None:
        return ACCEPT
    if isinstance(outcome, int):
        retriable = retriable_status(outcome, retry, grpc_status)
    else:
        retriable = retriable_failure(outcome, retry.retry_on)
    if not retriable:
        return ACCEPT
    return RETRY if retries_left > 0 and replayable else EXHAUSTED


def backoff_delay(retry: RetryPolicy, attempt: int, unit: float) -> float:
    """Envoy's back-off before retry number `attempt` (0 for the first):
    fully jittered, uniform in [0, min(max, base * 2^attempt)); `unit` is a
    random number in [0, 1)."""
    cap: float = min(retry.backoff_max, retry.backoff_base * 2.0**attempt)
    return unit * cap


def per_try_timeout(retry: RetryPolicy | None) -> float | None:
    """Seconds a single try may take before it counts as failed (UT), or None."""
    return retry.per_try_timeout if retry is not None else None


def retries_allowed(retry: RetryPolicy | None, upgrade: bool) -> int:
    """How many retries an exchange may make: none for a protocol upgrade,
    whose request cannot be replayed once the tunnel opened."""
    return retry.num_retries if retry is not None and not upgrade else 0
