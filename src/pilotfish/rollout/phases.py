"""The rollout controller's decisions: a pure `step()` over Flagger's phases.

    ""/Initializing --primary ready--> Initialized
    Initialized|Succeeded|Failed|Waiting --new revision, confirm-rollout ok--> Progressing
                                         --new revision, confirm-rollout closed--> Waiting
    Progressing --weights/iterations done, confirm-promotion closed--> WaitingPromotion
    Progressing|WaitingPromotion --done, promotion confirmed--> Promoting
    Progressing|WaitingPromotion --failed checks >= threshold, abort, rollback hook,
                                   progress deadline--> Failed
    Progressing|WaitingPromotion --new revision--> Progressing (analysis restarted)
    Promoting --primary ready with the new spec, traffic back--> Finalising
    Finalising --canary scaled down--> Succeeded

Everything the world says comes in as `Observations`; everything to do goes
out as a new status (from which the shell derives routes and scaling, see
router.py) and a list of one-shot actions (events, post-rollout hooks,
clearing a handled request). When a decision needs a webhook's answer or the
metrics, `step` returns `needs` instead and is called again with them, so the
shell only calls what the decision really depends on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pilotfish.api.gotypes import parse_rfc3339, rfc3339
from pilotfish.objects import Obj
from pilotfish.rollout.canary import Canary, Strategy
from pilotfish.rollout.status import CanaryStatus, Condition
from pilotfish.rollout.types import (
    CONFIRM_PROMOTION,
    CONFIRM_ROLLOUT,
    CONFIRM_TRAFFIC_INCREASE,
    POST_ROLLOUT,
    PRE_ROLLOUT,
    ROLLBACK,
    ROLLOUT,
    MetricResult,
    WebhookResult,
)

METRICS = "metrics"
PROMOTE, ABORT = "promote", "abort"

IDLE = ("Initialized", "Succeeded", "Failed", "Waiting")
ANALYSING = ("Progressing", "WaitingPromotion")
# While these last, the canary runs as many instances as the primary.
CANARY_UP = ("Progressing", "WaitingPromotion", "Promoting", "Finalising")

# Flagger's Promoted condition: (status, message) per phase.
CONDITIONS = {
    "Initializing": ("Unknown", "Deployment initialization in progress."),
    "Initialized": ("True", "Deployment initialization completed."),
    "Waiting": ("Unknown", "Waiting for approval."),
    "Progressing": ("Unknown", "New revision detected, progressing canary analysis."),
    "WaitingPromotion": ("Unknown", "Waiting for approval."),
    "Promoting": ("Unknown", "Canary analysis completed, starting primary rolling update."),
    "Finalising": ("Unknown", "Canary analysis completed, routing all traffic to primary."),
    "Succeeded": ("True", "Canary analysis completed successfully, promotion finished."),
    "Failed": ("False", "Canary analysis failed, Deployment scaled to zero."),
}


@dataclass(frozen=True)
class Observations:
    """What the shell saw this tick. `checksum` is the target's template
    hash (spec and referenced config data), None when the target is gone."""

    now: datetime
    checksum: str | None
    tracked_configs: Mapping[str, str] = field(default_factory=dict)
    primary_ready: bool = False
    canary_ready: bool = False
    requested: frozenset[str] = frozenset()  # PROMOTE / ABORT from the CLI
    hooks: Mapping[str, tuple[WebhookResult, ...]] = field(default_factory=dict)
    metrics: tuple[MetricResult, ...] | None = None


@dataclass(frozen=True)
class Event:
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Alert:
    """A message for the Canary's alert providers (Flagger's `alert`), at
    severity info, warn or error; `metadata` adds the Canary's settings."""

    message: str
    severity: str = "info"
    metadata: bool = False


@dataclass(frozen=True)
class RunHooks:
    """Fire-and-forget hooks (post-rollout) after the status is written."""

    type: str
    phase: str


@dataclass(frozen=True)
class ClearRequest:
    request: str  # PROMOTE or ABORT


Action = Event | Alert | RunHooks | ClearRequest


@dataclass(frozen=True)
class Decision:
    status: CanaryStatus
    actions: tuple[Action, ...] = ()
    needs: tuple[str, ...] = ()  # hook types or METRICS: call again with them


class _Need(Exception):
    def __init__(self, what: str) -> None:
        self.what = what


class _Draft:
    """The status being decided and the actions decided so far."""

    def __init__(self, canary: Canary, status: CanaryStatus, obs: Observations) -> None:
        self.canary, self.obs = canary, obs
        self.status = status
        self.actions: list[Action] = []

    def event(self, message: str, *, warning: bool = False) -> None:
        self.actions.append(Event(message, warning))

    def alert(self, message: str, severity: str = "info", *, metadata: bool = False) -> None:
        self.actions.append(Alert(message, severity, metadata))

    def approval_alert(self, gate: WebhookResult, message: str) -> None:
        """A closed gate alerts (warn) unless its webhook says muteAlert."""
        if not gate.mute_alert:
            self.alert(message, "warn")

    def set(self, **fields: Any) -> None:
        self.status = self.status.but(**fields)

    @property
    def phase(self) -> str:
        return self.status.phase

    def hooks(self, hook_type: str) -> tuple[WebhookResult, ...]:
        if hook_type not in self.obs.hooks:
            raise _Need(hook_type)
        return self.obs.hooks[hook_type]

    def gate(self, hook_type: str) -> WebhookResult | None:
        """The first closed gate of this type, or None when all let us pass."""
        return next((r for r in self.hooks(hook_type) if not r.ok), None)

    def metrics(self) -> tuple[MetricResult, ...]:
        if self.obs.metrics is None:
            raise _Need(METRICS)
        return self.obs.metrics


def step(canary: Canary, status: CanaryStatus, obs: Observations) -> Decision:
    """One tick of the controller for one Canary."""
    draft = _Draft(canary, status, obs)
    if canary.suspended:
        return Decision(draft.status)
    try:
        if obs.checksum is None:
            draft.event(f"{canary.display} not found", warning=True)
        else:
            PHASES[draft.phase](draft)
    except _Need as need:
        return Decision(status, needs=(need.what,))
    _session_cookies(draft)
    _stamp(draft, status)
    return Decision(draft.status, tuple(draft.actions))


def _session_cookies(d: _Draft) -> None:
    """Flagger's session affinity: while the canary gets weighted traffic, a
    cookie (NAME=VALUE, kept in the status) marks who landed on it; when the
    weight is back to 0 it becomes the previous cookie, which the routes then
    expire. VALUE comes from the Canary and the release, so it is the same at
    every step of one release and differs between releases."""
    affinity = d.canary.session_affinity
    if affinity is None:
        return
    if d.status.canary_weight == 0:
        if d.status.session_affinity_cookie:
            d.set(
                previous_session_affinity_cookie=d.status.session_affinity_cookie,
                session_affinity_cookie=None,
            )
        return
    release = f"{d.canary.uid}/{d.status.last_applied_spec}"
    if not d.status.session_affinity_cookie:
        d.set(session_affinity_cookie=_cookie(affinity["cookieName"], release))
    primary = affinity.get("primaryCookieName")
    if primary and not d.status.primary_session_affinity_cookie:
        d.set(primary_session_affinity_cookie=_cookie(primary, release))


def _cookie(name: str, release: str) -> str:
    return f"{name}={hashlib.sha256(f'{release}/{name}'.encode()).hexdigest()[:20]}"


def _stamp(draft: _Draft, before: CanaryStatus) -> None:
    """lastTransitionTime moves with the phase, weight, iterations or failed
    checks (as Flagger's status setters do); the Promoted condition follows
    the phase."""
    new = draft.status
    moved = (new.phase, new.canary_weight, new.iterations, new.failed_checks) != (
        before.phase,
        before.canary_weight,
        before.iterations,
        before.failed_checks,
    )
    now = rfc3339(draft.obs.now)
    if moved or not new.last_transition_time:
        draft.set(last_transition_time=now)
    phase = draft.phase or "Initializing"
    state, message = CONDITIONS[phase]
    old = next(iter(new.conditions), None)
    kept = old is not None and (old.status, old.reason) == (state, phase)
    updated = old.last_update_time if old and kept else now
    since = old.last_transition_time if old and kept else now
    condition = Condition("Promoted", state, phase, message, updated or now, since or now)
    draft.set(conditions=(condition,))


# -- phases --------------------------------------------------------------------


def _initializing(d: _Draft) -> None:
    if not d.obs.primary_ready:
        d.set(phase="Initializing", canary_weight=0, failed_checks=0, iterations=0)
        return
    d.set(
        phase="Initialized",
        last_applied_spec=d.obs.checksum,
        last_promoted_spec=d.obs.checksum,
        tracked_configs=dict(d.obs.tracked_configs),
    )
    d.event(f"Initialization done! {d.canary.display}")
    d.alert(f"New {d.canary.target_kind} detected, initialization completed.", metadata=True)


def _idle(d: _Draft) -> None:
    if d.obs.checksum == d.status.last_applied_spec:
        return
    closed = d.gate(CONFIRM_ROLLOUT)
    if closed is not None:
        if d.phase != "Waiting":  # said once, as Flagger does, not at every step
            d.set(phase="Waiting")
            d.event(f"Halt {d.canary.display} advancement waiting for approval {closed.name}")
            d.approval_alert(closed, "Canary is waiting for approval.")
        return
    _start(d)
    d.event(f"New revision detected! Scaling up {d.canary.display}")
    d.alert("New revision detected, progressing canary analysis.", metadata=True)


def _start(d: _Draft) -> None:
    d.set(
        phase="Progressing",
        canary_weight=0,
        iterations=0,
        failed_checks=0,
        last_applied_spec=d.obs.checksum,
        tracked_configs=dict(d.obs.tracked_configs),
        last_analysis=None,
        mirrored=False,
    )


def _analysing(d: _Draft) -> None:
    c = d.canary
    if d.obs.checksum != d.status.last_applied_spec:
        _start(d)
        d.event(f"New revision detected! Restarting analysis for {c.display}")
        return
    if _should_roll_back(d):
        return
    if not d.obs.canary_ready:
        _wait_for_canary(d)
        return
    if PROMOTE in d.obs.requested or c.skip_analysis:
        if PROMOTE in d.obs.requested:
            d.actions.append(ClearRequest(PROMOTE))
            d.event(f"Promotion of {c.display} requested, skipping the rest of the analysis")
        _promote(d)
        return
    if not _checks_pass(d):
        d.set(failed_checks=d.status.failed_checks + 1)
        return
    ADVANCE[c.strategy](d)


def _should_roll_back(d: _Draft) -> bool:
    c = d.canary
    if ABORT in d.obs.requested:
        d.actions.append(ClearRequest(ABORT))
        _roll_back(d, f"Rolling back {c.display} abort requested")
        return True
    if any(r.ok for r in d.hooks(ROLLBACK)):
        d.alert("Rolling back manual webhook invoked", "warn")
        _roll_back(d, f"Rolling back {c.display} manual webhook invoked")
        return True
    if d.status.failed_checks >= c.threshold:
        d.alert(f"Failed checks threshold reached {d.status.failed_checks}", "error")
        _roll_back(d, f"Rolling back {c.display} failed checks threshold reached {c.threshold}")
        return True
    return False


def _wait_for_canary(d: _Draft) -> None:
    since = _parse_time(d.status.last_transition_time)
    waited = (d.obs.now - since).total_seconds() if since else 0.0
    if waited > d.canary.progress_deadline_s:
        why = f"canary not ready after {waited:.0f}s"
        d.alert(f"Progress deadline exceeded {why}", "error")
        _roll_back(d, f"Rolling back {d.canary.display} progress deadline exceeded: {why}")
        return
    d.event(f"Halt advancement {d.canary.display} waiting for the canary to be ready")


def _checks_pass(d: _Draft) -> bool:
    """Pre-rollout hooks before any traffic moves; afterwards the rollout
    hooks and the metrics, every interval."""
    c = d.canary
    s = d.status
    if s.canary_weight == 0 and s.iterations == 0 and not s.mirrored:
        failed = d.gate(PRE_ROLLOUT)
        if failed is not None:
            d.event(
                f"Halt {c.display} advancement pre-rollout check {failed.name} failed "
                f"{failed.message}",
                warning=True,
            )
            return False
        d.event(f"Starting canary analysis for {c.display}")
        return True
    failed = d.gate(ROLLOUT)
    if failed is not None:
        d.event(
            f"Halt {c.display} advancement external check {failed.name} failed {failed.message}",
            warning=True,
        )
        return False
    results = d.metrics()
    d.set(last_analysis=_analysis_record(d.obs.now, results))
    for result in results:
        if not result.ok:
            d.event(_metric_message(c, result), warning=True)
    return all(r.ok for r in results)


def _advance_weight(d: _Draft) -> None:
    c, weight, mirrored = d.canary, d.status.canary_weight, d.status.mirrored
    if weight < c.max_weight:
        # Flagger asks before mirroring, not again when the mirror gives way to weight.
        closed = None if mirrored else d.gate(CONFIRM_TRAFFIC_INCREASE)
        if closed is not None:
            d.approval_alert(closed, "Canary traffic increase is waiting for approval.")
            d.event(
                f"Halt {c.display} advancement waiting for traffic increase approval {closed.name}"
            )
            return
        if c.mirror and weight == 0 and not mirrored:
            d.set(phase="Progressing", mirrored=True)  # one mirrored step first
        else:
            weight = c.next_weight(weight)
            d.set(phase="Progressing", canary_weight=weight, mirrored=False)
        d.event(f"Advance {c.display} canary weight {weight}")
        return
    if _promotion_confirmed(d):
        _promote(d)


def _advance_iteration(d: _Draft) -> None:
    c, done = d.canary, d.status.iterations
    if done < c.iterations:
        if c.strategy is Strategy.BLUE_GREEN and c.mirror and done == 0:
            d.event(f"Start traffic mirroring for {c.display}")
        d.set(phase="Progressing", iterations=done + 1)
        d.event(f"Advance {c.display} canary iteration {done + 1}/{c.iterations}")
        return
    if not _promotion_confirmed(d):
        return
    if c.strategy is Strategy.BLUE_GREEN:
        if c.mirror:
            d.event(f"Stop traffic mirroring for {c.display}")
        d.event(f"Routing all traffic to canary {c.display}")
        d.set(canary_weight=100)
    _promote(d)


def _promotion_confirmed(d: _Draft) -> bool:
    closed = d.gate(CONFIRM_PROMOTION)
    if closed is None:
        return True
    if d.phase != "WaitingPromotion":  # said once, as Flagger does
        d.set(phase="WaitingPromotion")
        d.event(f"Halt {d.canary.display} advancement waiting for promotion approval {closed.name}")
        d.approval_alert(closed, "Canary promotion is waiting for approval.")
    return False


def _promote(d: _Draft) -> None:
    c = d.canary
    d.event(f"Copying {c.display} template spec to {c.primary}.{c.namespace}")
    d.set(phase="Promoting")


def _promoting(d: _Draft) -> None:
    if not d.obs.primary_ready:
        return  # the primary is rolling to the new spec; routes stay as they are
    c, weight = d.canary, d.status.canary_weight
    if c.step_weight_promotion > 0 and weight > 0:
        weight = max(0, weight - c.step_weight_promotion)
        d.set(canary_weight=weight)
        d.event(f"Advance {c.display} primary weight {100 - weight}")
        if weight > 0:
            return
    d.set(phase="Finalising", canary_weight=0)
    d.event(f"Routing all traffic to primary {c.primary}.{c.namespace}")


def _finalising(d: _Draft) -> None:
    d.set(phase="Succeeded", last_promoted_spec=d.status.last_applied_spec)
    d.actions.append(RunHooks(POST_ROLLOUT, "Succeeded"))
    if d.canary.skip_analysis:
        d.event(f"Promotion completed! Canary analysis was skipped for {d.canary.display}")
        d.alert("Canary analysis was skipped, promotion finished.")
    else:
        d.event(f"Promotion completed! Scaling down {d.canary.display}")
        d.alert("Canary analysis completed successfully, promotion finished.")


def _roll_back(d: _Draft, reason: str) -> None:
    d.event(reason, warning=True)
    d.set(phase="Failed", canary_weight=0, iterations=0, mirrored=False)
    d.actions.append(RunHooks(POST_ROLLOUT, "Failed"))
    d.event(f"Canary failed! Scaling down {d.canary.display}", warning=True)


PHASES: dict[str, Callable[[_Draft], None]] = {
    "": _initializing,
    "Initializing": _initializing,
    "Initialized": _idle,
    "Waiting": _idle,
    "Succeeded": _idle,
    "Failed": _idle,
    "Progressing": _analysing,
    "WaitingPromotion": _analysing,
    "Promoting": _promoting,
    "Finalising": _finalising,
}

ADVANCE: dict[Strategy, Callable[[_Draft], None]] = {
    Strategy.CANARY: _advance_weight,
    Strategy.AB: _advance_iteration,
    Strategy.BLUE_GREEN: _advance_iteration,
}


# -- helpers -------------------------------------------------------------------


def _metric_message(c: Canary, r: MetricResult) -> str:
    if r.value is None:
        return f"Halt advancement {c.display}: {r.message or 'no values found for ' + r.name}"
    if r.min is not None and r.value < r.min:
        return f"Halt {c.display} advancement {r.name} {r.value:.2f} < {r.min:g}"
    return f"Halt {c.display} advancement {r.name} {r.value:.2f} > {r.max:g}"


def _analysis_record(now: datetime, results: tuple[MetricResult, ...]) -> Obj:
    return {
        "time": rfc3339(now),
        "metrics": [
            {"name": r.name, "value": r.value, "min": r.min, "max": r.max, "message": r.message}
            for r in results
        ],
    }


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return parse_rfc3339(text)
    except ValueError:
        return None
