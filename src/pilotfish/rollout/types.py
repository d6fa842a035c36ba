"""What the rollout controller's pure core exchanges with its shell: results
of the I/O the shell did (metric queries, webhook calls), in plain data."""

from __future__ import annotations

from dataclasses import dataclass

# Flagger's webhook types, in the order a release meets them.
CONFIRM_ROLLOUT = "confirm-rollout"
PRE_ROLLOUT = "pre-rollout"
ROLLOUT = "rollout"
CONFIRM_TRAFFIC_INCREASE = "confirm-traffic-increase"
CONFIRM_PROMOTION = "confirm-promotion"
POST_ROLLOUT = "post-rollout"
ROLLBACK = "rollback"
EVENT = "event"
WEBHOOK_TYPES = (
    CONFIRM_ROLLOUT,
    PRE_ROLLOUT,
    ROLLOUT,
    CONFIRM_TRAFFIC_INCREASE,
    CONFIRM_PROMOTION,
    POST_ROLLOUT,
    ROLLBACK,
    EVENT,
)


@dataclass(frozen=True)
class MetricResult:
    """One analysis metric measured once. `value` is None when there was no
    data (no traffic, nothing scraped yet) or the query failed; `message`
    then says why in plain words."""

    name: str
    value: float | None
    min: float | None = None  # thresholdRange.min
    max: float | None = None  # thresholdRange.max
    message: str = ""

    @property
    def ok(self) -> bool:
        if self.value is None:
            return False
        return (self.min is None or self.value >= self.min) and (
            self.max is None or self.value <= self.max
        )


@dataclass(frozen=True)
class WebhookResult:
    """One webhook called once: `ok` when it answered 2xx in time."""

    name: str
    type: str
    ok: bool
    message: str = ""
    mute_alert: bool = False  # the hook's muteAlert: a closed gate sends no alert
