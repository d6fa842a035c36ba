"""The phase table, without I/O: a Canary's status driven tick by tick
through Flagger's phases, with webhook answers and metric values given."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pilotfish.api.validation import validate_or_raise
from pilotfish.rollout.canary import Strategy, read_canary
from pilotfish.rollout.phases import (
    ABORT,
    METRICS,
    PROMOTE,
    Alert,
    ClearRequest,
    Decision,
    Event,
    Observations,
    RunHooks,
    step,
)
from pilotfish.rollout.router import routes, virtual_service
from pilotfish.rollout.status import CanaryStatus
from pilotfish.rollout.types import MetricResult, WebhookResult

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
GOOD = (MetricResult("request-success-rate", 100.0, min=99),)
BAD = (MetricResult("request-success-rate", 50.0, min=99),)


def canary(**analysis: Any) -> Any:
    return read_canary(
        {
            "apiVersion": "flagger.app/v1beta1",
            "kind": "Canary",
            "metadata": {"name": "reviews", "namespace": "default", "uid": "u1"},
            "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "reviews"},
                "service": {"port": 9080},
                "analysis": {"interval": "10s", "threshold": 2, **analysis},
            },
        }
    )


class Driver:
    """Ticks a canary, answering what step() asks for from a table."""

    def __init__(self, c: Any, **obs: Any) -> None:
        self.c = c
        self.status: dict[str, Any] = {}
        self.now = T0
        self.obs = Observations(now=T0, checksum="v1", primary_ready=True, canary_ready=True)
        self.obs = replace(self.obs, **obs)
        self.gates: dict[str, tuple[WebhookResult, ...]] = {}
        self.metrics = GOOD
        self.asked: list[str] = []
        self.events: list[str] = []
        self.actions: list[Any] = []

    def tick(self, **changes: Any) -> Decision:
        self.now += timedelta(seconds=10)
        self.obs = replace(self.obs, now=self.now, hooks={}, metrics=None, **changes)
        decision = step(self.c, self.typed, self.obs)
        while decision.needs:
            (need,) = decision.needs
            self.asked.append(need)
            if need == METRICS:
                self.obs = replace(self.obs, metrics=self.metrics)
            else:
                self.obs = replace(
                    self.obs, hooks={**self.obs.hooks, need: self.gates.get(need, ())}
                )
            decision = step(self.c, self.typed, self.obs)
        self.status = decision.status.to_obj()  # as the store keeps it, read back each tick
        self.events += [a.message for a in decision.actions if isinstance(a, Event)]
        self.actions += decision.actions
        return decision

    @property
    def typed(self) -> CanaryStatus:
        return CanaryStatus.of(self.status)

    def until(self, phase: str, ticks: int = 30) -> None:
        for _ in range(ticks):
            if self.status.get("phase") == phase:
                return
            self.tick()
        raise AssertionError(f"never reached {phase}: {self.status} {self.events}")


def released(d: Driver) -> Driver:
    d.until("Initialized")
    d.tick(checksum="v2")
    assert d.status["phase"] == "Progressing"
    return d


def test_initialization_waits_for_the_primary_then_records_the_revision() -> None:
    d = Driver(canary(stepWeight=10, maxWeight=30), primary_ready=False)
    d.tick()
    assert d.status["phase"] == "Initializing"
    d.tick(primary_ready=True)
    assert d.status["phase"] == "Initialized"
    assert d.status["lastAppliedSpec"] == d.status["lastPromotedSpec"] == "v1"
    assert d.events == ["Initialization done! reviews.default"]
    assert d.status["conditions"][0]["reason"] == "Initialized"
    d.tick()
    assert d.status["phase"] == "Initialized", "no change, no analysis"


def test_a_canary_advances_step_by_step_and_is_promoted() -> None:
    d = released(Driver(canary(stepWeight=10, maxWeight=30)))
    weights = []
    while d.status["phase"] == "Progressing":
        d.tick()
        weights.append(d.status["canaryWeight"])
    assert weights[:3] == [10, 20, 30]
    assert d.status["phase"] == "Promoting"
    d.until("Succeeded")
    assert d.status["canaryWeight"] == 0
    assert d.status["lastPromotedSpec"] == "v2"
    assert d.status["conditions"][0]["status"] == "True"
    assert RunHooks("post-rollout", "Succeeded") in d.actions
    assert "Copying reviews.default template spec to reviews-primary.default" in d.events
    assert d.events[-1] == "Promotion completed! Scaling down reviews.default"


def test_failed_metric_checks_roll_back_at_the_threshold() -> None:
    d = released(Driver(canary(stepWeight=10, maxWeight=50)))
    d.tick()
    assert d.status["canaryWeight"] == 10
    d.metrics = BAD
    d.tick()
    assert (d.status["failedChecks"], d.status["canaryWeight"]) == (1, 10)
    d.tick()
    assert d.status["failedChecks"] == 2
    d.tick()
    assert d.status["phase"] == "Failed"
    assert d.status["canaryWeight"] == 0
    assert "Halt reviews.default advancement request-success-rate 50.00 < 99" in d.events
    assert "Rolling back reviews.default failed checks threshold reached 2" in d.events
    assert d.status["conditions"][0]["status"] == "False"
    assert RunHooks("post-rollout", "Failed") in d.actions


def test_no_traffic_is_a_failed_check_that_says_so() -> None:
    d = released(Driver(canary(stepWeight=10)))
    d.tick()
    d.metrics = (MetricResult("request-success-rate", None, min=99, message="no requests"),)
    d.tick()
    assert d.status["failedChecks"] == 1
    assert d.events[-1] == "Halt advancement reviews.default: no requests"
    assert d.status["lastAnalysis"]["metrics"][0]["value"] is None


def test_a_new_revision_during_the_analysis_restarts_it() -> None:
    d = released(Driver(canary(stepWeight=10)))
    d.tick()
    d.tick()
    assert d.status["canaryWeight"] == 20
    d.tick(checksum="v3")
    assert (d.status["phase"], d.status["canaryWeight"]) == ("Progressing", 0)
    assert d.status["lastAppliedSpec"] == "v3"
    assert d.events[-1] == "New revision detected! Restarting analysis for reviews.default"


def test_confirm_rollout_holds_in_waiting_until_approved() -> None:
    d = Driver(canary(stepWeight=10))
    d.until("Initialized")
    d.gates["confirm-rollout"] = (WebhookResult("gate", "confirm-rollout", False, "403"),)
    d.tick(checksum="v2")
    d.tick()
    assert d.status["phase"] == "Waiting"
    assert d.events[-1] == "Halt reviews.default advancement waiting for approval gate"
    d.gates["confirm-rollout"] = (WebhookResult("gate", "confirm-rollout", True),)
    d.tick()
    assert d.status["phase"] == "Progressing"


def test_confirm_promotion_holds_in_waiting_promotion() -> None:
    d = released(Driver(canary(stepWeight=50, maxWeight=50)))
    d.gates["confirm-promotion"] = (WebhookResult("gate", "confirm-promotion", False, "403"),)
    d.tick()
    d.tick()
    assert d.status["phase"] == "WaitingPromotion"
    d.tick()
    assert d.status["phase"] == "WaitingPromotion", "analysis goes on, promotion waits"
    del d.gates["confirm-promotion"]
    d.tick()
    assert d.status["phase"] == "Promoting"


def test_traffic_increase_gate_holds_the_weight() -> None:
    d = released(Driver(canary(stepWeight=10)))
    d.gates["confirm-traffic-increase"] = (WebhookResult("g", "confirm-traffic-increase", False),)
    d.tick()
    d.tick()
    assert d.status["canaryWeight"] == 0
    del d.gates["confirm-traffic-increase"]
    d.tick()
    assert d.status["canaryWeight"] == 10


def test_pre_rollout_failure_counts_and_rollout_hooks_gate_each_step() -> None:
    d = released(Driver(canary(stepWeight=10)))
    d.gates["pre-rollout"] = (WebhookResult("smoke", "pre-rollout", False, "HTTP 500"),)
    d.tick()
    assert (d.status["failedChecks"], d.status["canaryWeight"]) == (1, 0)
    assert "pre-rollout check smoke failed HTTP 500" in d.events[-1]
    d.gates["pre-rollout"] = ()
    d.tick()
    assert d.status["canaryWeight"] == 10
    d.gates["rollout"] = (WebhookResult("load", "rollout", False, "refused"),)
    d.tick()
    assert (d.status["failedChecks"], d.status["canaryWeight"]) == (2, 10)


def test_rollback_webhook_and_abort_request_fail_the_release() -> None:
    d = released(Driver(canary(stepWeight=10)))
    d.gates["rollback"] = (WebhookResult("rb", "rollback", True),)
    d.tick()
    assert d.status["phase"] == "Failed"
    assert "Rolling back reviews.default manual webhook invoked" in d.events
    d = released(Driver(canary(stepWeight=10)))
    decision = d.tick(requested=frozenset({ABORT}))
    assert d.status["phase"] == "Failed"
    assert ClearRequest(ABORT) in decision.actions


def test_promote_request_skips_the_rest_of_the_analysis() -> None:
    d = released(Driver(canary(stepWeight=10)))
    d.tick()
    decision = d.tick(requested=frozenset({PROMOTE}))
    assert d.status["phase"] == "Promoting"
    assert ClearRequest(PROMOTE) in decision.actions


def test_a_canary_that_never_gets_ready_rolls_back_at_the_deadline() -> None:
    c = replace(canary(stepWeight=10), progress_deadline_s=25)
    d = released(Driver(c))
    d.tick(canary_ready=False)
    assert d.status["phase"] == "Progressing"
    d.tick()
    d.tick()
    assert d.status["phase"] == "Failed"
    assert "progress deadline exceeded" in " ".join(d.events)


def test_step_weights_and_gradual_promotion() -> None:
    d = released(Driver(canary(stepWeights=[5, 25, 60], stepWeightPromotion=40)))
    seen = []
    while d.status["phase"] == "Progressing":
        d.tick()
        seen.append(d.status["canaryWeight"])
    assert seen == [5, 25, 60, 60]
    d.tick()
    assert (d.status["phase"], d.status["canaryWeight"]) == ("Promoting", 20)
    d.tick()
    assert (d.status["phase"], d.status["canaryWeight"]) == ("Finalising", 0)


def test_ab_testing_counts_iterations_and_routes_matching_users_only() -> None:
    c = canary(iterations=2, match=[{"headers": {"x-canary": {"exact": "insider"}}}])
    assert c.strategy is Strategy.AB
    d = released(Driver(c))
    assert not routes(c, d.typed).match_to_canary
    d.tick()
    assert d.status["iterations"] == 1
    assert routes(c, d.typed).match_to_canary
    assert routes(c, d.typed).canary == 0
    d.until("Promoting")
    assert d.events.count("Advance reviews.default canary iteration 2/2") == 1
    d.until("Succeeded")
    assert not routes(c, d.typed).match_to_canary


def test_blue_green_mirrors_then_switches_all_traffic() -> None:
    c = canary(iterations=2, mirror=True)
    assert c.strategy is Strategy.BLUE_GREEN
    d = released(Driver(c))
    d.tick()
    r = routes(c, d.typed)
    assert (r.primary, r.canary, r.mirror) == (100, 0, True)
    d.until("Promoting")
    r = routes(c, d.typed)
    assert (r.primary, r.canary, r.mirror) == (0, 100, False)
    assert "Routing all traffic to canary reviews.default" in d.events
    d.until("Succeeded")
    assert routes(c, d.typed).primary == 100


def test_a_mirrored_canary_mirrors_one_step_then_shifts_weight() -> None:
    """Flagger's traffic mirroring as a pre-stage of a weighted release: one
    step mirrored at weight 0, its metrics checked, then weight moves."""
    c = canary(stepWeight=20, maxWeight=40, mirror=True, mirrorWeight=50)
    assert c.strategy is Strategy.CANARY
    d = released(Driver(c))
    d.tick()  # pre-rollout checks; no traffic yet, so no metrics
    assert METRICS not in d.asked
    assert (d.status["canaryWeight"], d.status["mirrored"]) == (0, True)
    r = routes(c, d.typed)
    assert (r.primary, r.canary, r.mirror) == (100, 0, True)
    vs = virtual_service(c, d.typed)
    validate_or_raise(vs)  # Istio's schema and webhook rules take it
    http = vs["spec"]["http"][0]
    assert http["mirror"]["host"] == "reviews-canary"
    assert http["mirrorPercentage"] == {"value": 50.0}
    d.metrics = BAD
    d.tick()  # the mirrored copies are analysed
    assert METRICS in d.asked
    assert (d.status["failedChecks"], d.status["canaryWeight"]) == (1, 0)
    d.metrics = GOOD
    d.tick()
    assert d.status["canaryWeight"] == 20 and "mirrored" not in d.status
    assert not routes(c, d.typed).mirror
    assert d.events.count("Advance reviews.default canary weight 0") == 1
    d.until("Succeeded")
    assert not routes(c, d.typed).mirror


def test_traffic_increase_is_confirmed_before_the_mirror_not_after_it() -> None:
    d = released(Driver(canary(stepWeight=20, mirror=True)))
    closed = (WebhookResult("gate", "confirm-traffic-increase", False, "closed"),)
    d.gates["confirm-traffic-increase"] = closed
    d.tick()
    assert "mirrored" not in d.status, "held before the mirror"
    del d.gates["confirm-traffic-increase"]
    d.tick()
    assert (d.status["mirrored"], d.status["canaryWeight"]) == (True, 0)
    d.gates["confirm-traffic-increase"] = closed
    d.tick()
    assert d.status["canaryWeight"] == 20, "the mirror gives way without asking"
    d.tick()
    assert d.status["canaryWeight"] == 20, "the next increase asks again"


def test_a_failed_mirrored_canary_stops_mirroring() -> None:
    d = released(Driver(canary(stepWeight=20, mirror=True, threshold=1)))
    d.tick()
    d.metrics = BAD
    d.tick()
    d.tick()
    assert d.status["phase"] == "Failed" and "mirrored" not in d.status
    assert not routes(d.c, d.typed).mirror


def test_suspended_and_missing_targets_change_nothing() -> None:
    d = released(Driver(canary(stepWeight=10)))
    before = dict(d.status)
    d.c = replace(d.c, suspended=True)
    d.tick()
    assert d.status == before
    d.c = replace(d.c, suspended=False)
    d.tick(checksum=None)
    assert d.status["phase"] == "Progressing"
    assert d.events[-1] == "reviews.default not found"


def test_a_restart_replays_nothing_already_decided() -> None:
    """The status alone carries the analysis: stepping a copy of it gives
    the very next move, not the first one again."""
    d = released(Driver(canary(stepWeight=10)))
    d.tick()
    d.tick()
    resumed = Driver(d.c)
    resumed.status, resumed.now = dict(d.status), d.now
    resumed.obs = replace(resumed.obs, checksum="v2")
    resumed.tick()
    assert resumed.status["canaryWeight"] == 30
    assert "Starting canary analysis for reviews.default" not in resumed.events
    assert "pre-rollout" not in resumed.asked


@pytest.mark.parametrize(
    ("analysis", "weights"),
    [({"stepWeight": 20, "maxWeight": 50}, (20, 40, 50)), ({"stepWeights": [1, 2]}, (1, 2))],
)
def test_step_weights_follow_flagger(analysis: dict[str, Any], weights: tuple[int, ...]) -> None:
    assert canary(**analysis).step_weights == weights


def test_approval_gates_alert_once_when_they_close_unless_muted() -> None:
    def alerts(d: Driver) -> list[tuple[str, str]]:
        return [(a.severity, a.message) for a in d.actions if isinstance(a, Alert)]

    d = Driver(canary(stepWeight=10))
    d.until("Initialized")
    d.gates["confirm-rollout"] = (WebhookResult("gate", "confirm-rollout", False, "403"),)
    for _ in range(3):
        d.tick(checksum="v2")
    assert alerts(d)[1:] == [("warn", "Canary is waiting for approval.")]
    assert d.events.count("Halt reviews.default advancement waiting for approval gate") == 1

    muted = Driver(canary(stepWeight=10))
    muted.until("Initialized")
    closed = WebhookResult("gate", "confirm-rollout", False, "403", mute_alert=True)
    muted.gates["confirm-rollout"] = (closed,)
    muted.tick(checksum="v2")
    assert muted.status["phase"] == "Waiting"
    assert len(alerts(muted)) == 1, "only the initialization's"


def test_session_affinity_keeps_canary_users_there_then_expires_their_cookie() -> None:
    affinity = {"cookieName": "flagger-cookie", "maxAge": 3600, "httpOnly": True}
    d = released(Driver(canary(stepWeight=10, maxWeight=20, sessionAffinity=affinity)))
    assert "sessionAffinityCookie" not in d.status, "no cookie while the canary gets nothing"
    d.tick()
    cookie = d.status["sessionAffinityCookie"]
    assert cookie.startswith("flagger-cookie=")
    value = cookie.partition("=")[2]
    http = virtual_service(d.c, d.typed)["spec"]["http"]
    assert http[0]["match"] == [{"headers": {"cookie": {"regex": f".*flagger-cookie.*{value}.*"}}}]
    assert [r["weight"] for r in http[0]["route"]] == [0, 100]
    weighted = http[1]["route"]
    assert [r["weight"] for r in weighted] == [90, 10]
    set_cookie = {"response": {"add": {"Set-Cookie": f"{cookie}; Max-Age=3600; HttpOnly"}}}
    assert weighted[1]["headers"] == set_cookie and "headers" not in weighted[0]
    d.tick()
    assert d.status["sessionAffinityCookie"] == cookie, "one cookie per release"

    d.until("Succeeded")
    assert "sessionAffinityCookie" not in d.status
    assert d.status["previousSessionAffinityCookie"] == cookie
    expire, weighted_after = virtual_service(d.c, d.typed)["spec"]["http"]
    assert expire["headers"] == {"response": {"add": {"Set-Cookie": f"{cookie}; Max-Age=-1"}}}
    assert (
        [r["weight"] for r in expire["route"]]
        == [100, 0]
        == [r["weight"] for r in weighted_after["route"]]
    )
    d.tick(checksum="v3")
    d.tick()
    assert d.status["sessionAffinityCookie"] not in (None, cookie), "a new release, a new cookie"


def test_skipped_analysis_says_so_when_promoted() -> None:
    c = read_canary(
        {
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {
                "targetRef": {"kind": "Deployment", "name": "reviews"},
                "service": {"port": 9080},
                "skipAnalysis": True,
                "analysis": {"stepWeight": 10},
            },
        }
    )
    d = released(Driver(c))
    d.until("Succeeded")
    assert d.events[-1] == "Promotion completed! Canary analysis was skipped for reviews.default"
    last = [a for a in d.actions if isinstance(a, Alert)][-1]
    assert last == Alert("Canary analysis was skipped, promotion finished.")
