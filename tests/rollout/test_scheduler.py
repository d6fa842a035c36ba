"""The controller's shell against a real store: the objects a Canary makes
(primary, config copies, services, routes, replicas), status writes, events,
requests from the CLI, and a restart that resumes. The node agent's part
(running instances and reporting them ready) is played by writing Workload
status; metrics and webhooks answer from tables."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from pilotfish.api.errors import NotFound
from pilotfish.api.validation import validate_or_raise, with_defaults
from pilotfish.rollout.scheduler import RolloutController
from pilotfish.rollout.types import MetricResult, WebhookResult
from pilotfish.store.resources import ResourceStore
from pilotfish.store.sqlite import SqliteBackend
from pilotfish.store.types import Key

Obj = dict[str, Any]
WORKLOAD: Obj = {
    "apiVersion": "pilotfish.dev/v1alpha1",
    "kind": "Workload",
    "metadata": {"name": "reviews", "namespace": "default"},
    "spec": {
        "labels": {"app": "reviews", "version": "v2"},
        "command": ["python3", "reviews.py"],
        "ports": [{"name": "http", "port": 9080}],
        "envFrom": [{"configMapRef": {"name": "reviews-config"}}],
    },
}
CONFIG: Obj = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "reviews-config", "namespace": "default"},
    "data": {"STAR_COLOR": "black"},
}
CANARY: Obj = {
    "apiVersion": "flagger.app/v1beta1",
    "kind": "Canary",
    "metadata": {"name": "reviews", "namespace": "default"},
    "spec": {
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "reviews"},
        "service": {"port": 9080},
        "analysis": {
            "interval": "10s",
            "threshold": 2,
            "maxWeight": 20,
            "stepWeight": 10,
            "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99}}],
        },
    },
}


class World:
    """A store, a controller on a hand-moved clock, and the agent's part."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.now = 1_790_000_000.0
        self.success = 100.0
        self.hooks: list[tuple[str, str]] = []
        self.alerts: list[tuple[str, str]] = []  # severity, message
        self.store = self._open()
        self.controller = self._controller()

    def _open(self) -> ResourceStore:
        return ResourceStore(
            SqliteBackend(self.path / "store.db"), validate=validate_or_raise, default=with_defaults
        )

    def _controller(self) -> RolloutController:
        return RolloutController(
            self.store,
            self.measure,
            self.call_hooks,
            clock=lambda: self.now,
            alert=lambda canary, alert: self.alerts.append((alert.severity, alert.message)),
        )

    def restart(self) -> None:
        self.store.close()
        self.store = self._open()
        self.controller = self._controller()

    def measure(self, canary: Obj, metric: Obj) -> MetricResult:
        return MetricResult(metric["name"], self.success, min=99)

    def call_hooks(
        self, canary: Obj, kind: str, phase: str, extra: Mapping[str, str]
    ) -> tuple[WebhookResult, ...]:
        self.hooks.append((kind, phase))
        return ()

    def apply(self, obj: Obj) -> None:
        self.store.apply(copy.deepcopy(obj), manager="user", force=True)

    def get(self, group: str, kind: str, name: str) -> Obj:
        return self.store.get(Key(group, kind, "default", name))

    def workload(self, name: str) -> Obj:
        return self.get("pilotfish.dev", "Workload", name)

    def canary(self) -> Obj:
        return self.get("flagger.app", "Canary", "reviews")

    def agent_reports(self) -> None:
        """Every Workload runs what its spec says and is ready."""
        items, _ = self.store.list("pilotfish.dev", "Workload")
        for w in items:
            n = int(w["spec"].get("replicas", 1))
            status = {"observedGeneration": w["metadata"]["generation"], "readyReplicas": n}
            status["updatedReplicas"] = n
            self.store.update_status(self.store.key_of(w), status, manager="agent")

    def tick(self, seconds: float = 10.0) -> Obj:
        self.now += seconds
        self.agent_reports()
        self.controller.sync()
        return self.canary().get("status") or {}

    def events(self) -> list[str]:
        items, _ = self.store.list("", "Event", "default")
        items.sort(key=lambda e: (e["firstTimestamp"], e["metadata"]["name"]))
        return [e["message"] for e in items]


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    for obj in (CONFIG, WORKLOAD, CANARY):
        w.apply(obj)
    yield w
    w.store.close()


def phase_after_ticks(world: World, phase: str, ticks: int = 20) -> Obj:
    for _ in range(ticks):
        status = world.tick()
        if status.get("phase") == phase:
            return status
    raise AssertionError(f"not {phase}: {world.canary().get('status')} {world.events()}")


def test_initialization_makes_the_primary_and_routes_everything_to_it(world: World) -> None:
    phase_after_ticks(world, "Initialized")
    primary = world.workload("reviews-primary")
    assert primary["spec"]["labels"] == {"app": "reviews-primary", "version": "v2"}
    assert primary["spec"]["envFrom"] == [{"configMapRef": {"name": "reviews-config-primary"}}]
    copied = world.get("", "ConfigMap", "reviews-config-primary")
    assert copied["data"] == {"STAR_COLOR": "black"}
    assert world.workload("reviews")["spec"]["replicas"] == 0
    selectors = {
        name: world.get("", "Service", name)["spec"]["selector"]["app"]
        for name in ("reviews", "reviews-primary", "reviews-canary")
    }
    assert selectors == {
        "reviews": "reviews-primary",
        "reviews-primary": "reviews-primary",
        "reviews-canary": "reviews",
    }
    route = world.get("networking.istio.io", "VirtualService", "reviews")["spec"]["http"][0]
    assert [(r["destination"]["host"], r["weight"]) for r in route["route"]] == [
        ("reviews-primary", 100),
        ("reviews-canary", 0),
    ]
    assert world.events() == ["Initialization done! reviews.default"]


def test_a_config_change_is_released_and_promoted(world: World) -> None:
    phase_after_ticks(world, "Initialized")
    world.apply({**CONFIG, "data": {"STAR_COLOR": "red"}})
    status = world.tick()
    assert status["phase"] == "Progressing"
    assert world.workload("reviews")["spec"]["replicas"] == 1, "the canary scales up"
    weights = [world.tick().get("canaryWeight") for _ in range(2)]
    assert weights == [10, 20]
    phase_after_ticks(world, "Succeeded")
    copied = world.get("", "ConfigMap", "reviews-config-primary")
    assert copied["data"] == {"STAR_COLOR": "red"}, "promotion copies the config"
    assert world.workload("reviews")["spec"]["replicas"] == 0
    assert ("post-rollout", "Succeeded") in world.hooks
    route = world.get("networking.istio.io", "VirtualService", "reviews")["spec"]["http"][0]
    assert route["route"][0]["weight"] == 100


def test_revert_on_deletion_gives_the_service_back_to_the_target(world: World) -> None:
    """Flagger's revertOnDeletion: a finalizer holds the deleted Canary until
    the target runs the primary's replicas and is ready; then the Canary's
    Service selects the target, what the Canary made goes, and so does it."""
    world.apply({**CANARY, "spec": {**CANARY["spec"], "revertOnDeletion": True}})
    phase_after_ticks(world, "Initialized")
    assert world.canary()["metadata"]["finalizers"] == ["finalizer.flagger.app"]
    world.store.apply({**_scale_of("reviews-primary", 2)}, manager="user", force=True)
    world.store.delete(Key("flagger.app", "Canary", "default", "reviews"))
    world.now += 1
    world.controller.sync()  # at once: a deleted Canary does not wait for its interval
    assert world.canary()["status"]["phase"] == "Terminating"
    assert world.workload("reviews")["spec"]["replicas"] == 2, "scaled back like the primary"
    assert world.get("", "Service", "reviews")["spec"]["selector"] == {"app": "reviews-primary"}
    world.now += 1
    world.agent_reports()  # the target runs two ready replicas
    world.controller.sync()
    with pytest.raises(NotFound):
        world.canary()
    assert world.get("", "Service", "reviews")["spec"]["selector"] == {"app": "reviews"}
    for group, kind, name in [
        ("pilotfish.dev", "Workload", "reviews-primary"),
        ("", "ConfigMap", "reviews-config-primary"),
        ("", "Service", "reviews-primary"),
        ("", "Service", "reviews-canary"),
        ("networking.istio.io", "DestinationRule", "reviews-primary"),
        ("networking.istio.io", "DestinationRule", "reviews-canary"),
        ("networking.istio.io", "VirtualService", "reviews"),
    ]:
        with pytest.raises(NotFound):
            world.get(group, kind, name)
    assert world.workload("reviews")["spec"]["replicas"] == 2
    assert world.events()[-2:] == [
        "Terminating canary reviews.default",
        "Terminated canary reviews.default",
    ]


def test_without_revert_on_deletion_a_deleted_canary_goes_at_once(world: World) -> None:
    phase_after_ticks(world, "Initialized")
    world.apply({**CANARY, "spec": {**CANARY["spec"], "revertOnDeletion": True}})
    world.tick()
    assert world.canary()["metadata"]["finalizers"] == ["finalizer.flagger.app"]
    world.apply({**CANARY, "spec": {**CANARY["spec"], "revertOnDeletion": False}})
    world.tick()
    assert not world.canary()["metadata"].get("finalizers"), "opting out drops the finalizer"
    world.store.delete(Key("flagger.app", "Canary", "default", "reviews"))
    with pytest.raises(NotFound):
        world.canary()
    assert world.get("", "Service", "reviews")["spec"]["selector"] == {"app": "reviews-primary"}


def _scale_of(name: str, replicas: int) -> Obj:
    return {
        "apiVersion": "pilotfish.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": replicas},
    }


def test_bad_metrics_roll_back_and_the_primary_is_untouched(world: World) -> None:
    phase_after_ticks(world, "Initialized")
    world.apply({**WORKLOAD, "spec": {**WORKLOAD["spec"], "args": ["--broken"]}})
    world.tick()
    world.tick()
    world.success = 50.0
    phase_after_ticks(world, "Failed")
    assert "args" not in world.workload("reviews-primary")["spec"]
    assert world.workload("reviews")["spec"]["replicas"] == 0
    assert "Canary failed! Scaling down reviews.default" in world.events()


def test_alerts_say_what_flagger_alerts_say(world: World) -> None:
    phase_after_ticks(world, "Initialized")
    assert world.alerts == [("info", "New Deployment detected, initialization completed.")]
    world.apply({**CONFIG, "data": {"STAR_COLOR": "red"}})
    world.tick()
    assert world.alerts[-1] == ("info", "New revision detected, progressing canary analysis.")
    world.tick()
    world.success = 50.0
    phase_after_ticks(world, "Failed")
    assert world.alerts[-1] == ("error", "Failed checks threshold reached 2")
    assert len(world.alerts) == 3, "nothing else is alerted on the way"


def test_session_affinity_routes_pass_istios_validation(world: World) -> None:
    sticky = copy.deepcopy(CANARY)
    sticky["spec"]["analysis"]["sessionAffinity"] = {
        "cookieName": "canary-user",
        "primaryCookieName": "primary-user",
    }
    world.apply(sticky)
    phase_after_ticks(world, "Initialized")
    world.apply({**CONFIG, "data": {"STAR_COLOR": "red"}})
    world.tick()
    status = world.tick()
    assert status["canaryWeight"] == 10
    http = world.get("networking.istio.io", "VirtualService", "reviews")["spec"]["http"]
    cookies = [m["headers"]["cookie"]["regex"] for route in http[:2] for m in route["match"]]
    assert [c.split(".*")[1] for c in cookies] == ["canary-user", "primary-user"]
    assert [[d["weight"] for d in route["route"]] for route in http[:2]] == [[0, 100], [100, 0]]
    assert all("headers" not in d for route in http[:2] for d in route["route"])
    weighted = http[2]["route"]
    assert weighted[0]["headers"]["response"]["add"]["Set-Cookie"].endswith("; Max-Age=10")
    assert weighted[1]["headers"]["response"]["add"]["Set-Cookie"].endswith("; Max-Age=86400")


def test_a_restart_resumes_where_the_status_says(world: World) -> None:
    phase_after_ticks(world, "Initialized")
    world.apply({**CONFIG, "data": {"STAR_COLOR": "red"}})
    world.tick()
    assert world.tick()["canaryWeight"] == 10
    world.restart()
    world.now += 1
    world.controller.sync()
    assert world.canary()["status"]["canaryWeight"] == 10, "not due before its interval"
    assert world.tick(9)["canaryWeight"] == 20
    assert world.events().count("Starting canary analysis for reviews.default") == 1


def test_abort_and_pause_from_the_cli_annotations(world: World) -> None:
    phase_after_ticks(world, "Initialized")
    world.apply({**CONFIG, "data": {"STAR_COLOR": "red"}})
    world.tick()
    world.tick()
    paused = world.canary()["status"]
    world.store.apply(
        {**_partial(), "spec": {"suspend": True}}, manager="pilotfish-rollout", force=True
    )
    assert world.tick() == paused
    world.store.apply(
        {**_partial(), "spec": {"suspend": False}}, manager="pilotfish-rollout", force=True
    )
    world.store.apply(
        {**_partial(annotations={"rollout.pilotfish.dev/abort": "now"})},
        manager="pilotfish-rollout-abort",
    )
    assert world.tick()["phase"] == "Failed"
    assert "rollout.pilotfish.dev/abort" not in (
        world.canary()["metadata"].get("annotations") or {}
    )


def _partial(annotations: dict[str, str] | None = None) -> Obj:
    meta: Obj = {"name": "reviews", "namespace": "default"}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "flagger.app/v1beta1", "kind": "Canary", "metadata": meta}


def test_a_canary_held_by_a_slow_webhook_holds_up_no_other(world: World) -> None:
    """As Flagger runs a job per Canary: with steps on threads (the control
    plane's way), one Canary waiting on its webhook does not stop another."""
    released = threading.Event()

    def call_hooks(canary: Obj, kind: str, phase: str, extra: Mapping[str, str]) -> tuple[()]:
        if canary["metadata"]["name"] == "ratings":  # listed, and so stepped, first
            released.wait(10)
        return ()

    world.controller = RolloutController(
        world.store, world.measure, call_hooks, clock=lambda: world.now, threads=True
    )
    ratings = copy.deepcopy(CANARY)
    ratings["metadata"]["name"] = ratings["spec"]["targetRef"]["name"] = "ratings"
    world.apply({**WORKLOAD, "metadata": {"name": "ratings", "namespace": "default"}})
    world.apply(ratings)
    held = world.get("flagger.app", "Canary", "ratings")["metadata"]["uid"]

    def reviews_initialized() -> bool:
        world.tick()
        return (world.canary().get("status") or {}).get("phase") == "Initialized"

    assert _within(5.0, reviews_initialized), world.events()
    assert world.controller.stepping(held), "ratings still waits on its webhook"
    released.set()
    assert _within(5.0, lambda: not world.controller.stepping(held))


def _within(seconds: float, check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_a_target_ref_may_name_the_workload_itself(tmp_path: Path) -> None:
    w = World(tmp_path)
    target = {"apiVersion": "pilotfish.dev/v1alpha1", "kind": "Workload", "name": "reviews"}
    canary = copy.deepcopy(CANARY)
    canary["spec"]["targetRef"] = target
    for obj in (CONFIG, WORKLOAD, canary):
        w.apply(obj)
    try:
        phase_after_ticks(w, "Initialized")
        assert w.workload("reviews-primary")["spec"]["labels"]["app"] == "reviews-primary"
        assert w.events() == ["Initialization done! reviews.default"]
    finally:
        w.store.close()
