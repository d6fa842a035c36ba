"""Fencing on a real etcd: the rollout controller's writes carry a compare
on the election key, so a leader whose lease is gone (revoked, or expired
while it was paused) has its writes refused by etcd even before it notices;
a step interrupted so writes nothing, and the next leader steps once."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_scheduler import CANARY, CONFIG, WORKLOAD, World, phase_after_ticks
from tests.etcd_server import EtcdServer

from pilotfish.api.errors import NotFound
from pilotfish.api.validation import validate_or_raise, with_defaults
from pilotfish.controlplane.election import Elector
from pilotfish.controlplane.leader import Tick, Timing
from pilotfish.objects import Obj
from pilotfish.rollout.scheduler import RolloutController
from pilotfish.rollout.types import MetricResult
from pilotfish.store.etcd import EtcdBackend
from pilotfish.store.etcd_client import message
from pilotfish.store.resources import ResourceStore
from pilotfish.store.types import FenceLost, Key

KEY = "/pilotfish-election/rollout"
SLOW = Timing()  # client-go's: the leader renews only every 2 s, so it has not noticed yet
NOTE = Key("", "ConfigMap", "default", "note")


def leader(etcd: EtcdServer, clock: Callable[[], float] = time.monotonic) -> Elector:
    """An elector that has taken the lead, driven by hand (no renewals)."""
    elector = Elector(etcd.client(), KEY, timing=SLOW, clock=clock)
    elector.feed(Tick(clock()))
    assert elector.leading()
    return elector


def revoke_lead(etcd: EtcdServer) -> None:
    """What an expired lease does, from outside the leader."""
    client = etcd.client()
    held = client.call("Range", message("RangeRequest", key=KEY.encode())).kvs
    client.call("LeaseRevoke", message("LeaseRevokeRequest", ID=held[0].lease))


def store(etcd: EtcdServer, elector: Elector | None = None) -> ResourceStore:
    backend = EtcdBackend(etcd.client())
    if elector is not None:
        backend = backend.fenced(elector.fence)
    return ResourceStore(backend, validate=validate_or_raise, default=with_defaults)


def note(value: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "note"},
        "data": {"v": value},
    }


def test_a_leader_whose_lease_was_revoked_writes_nothing(etcd: EtcdServer) -> None:
    old = leader(etcd)
    fenced = store(etcd, old)
    fenced.apply(note("old leads"), manager="rollout")
    revoke_lead(etcd)
    assert old.leading(), "it has not renewed since: it still believes it leads"
    with pytest.raises(FenceLost, match="no longer held"):
        fenced.apply(note("old again"), manager="rollout")
    new = leader(etcd)
    with pytest.raises(FenceLost, match="taken again"):
        fenced.apply(note("old again"), manager="rollout")
    store(etcd, new).apply(note("new leads"), manager="rollout")
    assert store(etcd).get(NOTE)["data"] == {"v": "new leads"}


def test_a_paused_leader_past_its_renew_deadline_does_not_even_try(etcd: EtcdServer) -> None:
    now = [time.monotonic()]
    paused = leader(etcd, clock=lambda: now[0])
    now[0] += SLOW.renew_deadline  # it slept through its deadline
    with pytest.raises(FenceLost, match="does not lead"):
        store(etcd, paused).apply(note("late"), manager="rollout")
    with pytest.raises(NotFound):
        store(etcd).get(NOTE)


class EtcdWorld(World):
    """test_scheduler's world on etcd, its controller fenced by `elector`."""

    def __init__(self, path: Path, etcd: EtcdServer, elector: Elector) -> None:
        self.etcd, self.elector = etcd, elector
        self.during_measure = lambda: None
        super().__init__(path)

    def _open(self) -> ResourceStore:
        return store(self.etcd)

    def _controller(self) -> RolloutController:
        return RolloutController(
            store(self.etcd, self.elector), self.measure, self.call_hooks, clock=lambda: self.now
        )

    def measure(self, canary: Obj, metric: Obj) -> MetricResult:
        self.during_measure()
        return super().measure(canary, metric)


def test_the_lease_lost_in_the_middle_of_a_step_then_the_next_leader_steps_once(
    etcd: EtcdServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = EtcdWorld(tmp_path, etcd, leader(etcd))
    for obj in (CONFIG, WORKLOAD, CANARY):
        world.apply(obj)
    phase_after_ticks(world, "Initialized")
    world.apply({**CONFIG, "data": {"STAR_COLOR": "red"}})
    assert world.tick()["phase"] == "Progressing"
    assert world.tick()["canaryWeight"] == 10
    measured: list[float] = []

    def lose_the_lead() -> None:  # mid-analysis: after the reads, before any write
        measured.append(time.monotonic())
        revoke_lead(etcd)

    before, events = copy.deepcopy(world.canary()), world.events()
    world.during_measure = lose_the_lead
    caplog.clear()
    world.tick()
    assert measured, "the analysis did run in that step"
    stopped = [r for r in caplog.records if "step of default/reviews" in r.getMessage()]
    assert [(r.levelname, r.exc_info) for r in stopped] == [("WARNING", None)], (
        "one line, no traceback: losing the lead is not a bug"
    )
    assert "stopped: " in stopped[0].getMessage()
    assert world.canary() == before, "the old leader's step wrote nothing"
    assert world.events() == events
    world.during_measure = lambda: None
    world.elector = leader(etcd)
    world.controller = world._controller()
    assert world.tick()["canaryWeight"] == 20
    weights = [e for e in world.events() if "weight" in e]
    assert weights == [f"Advance reviews.default canary weight {w}" for w in (10, 20)]
