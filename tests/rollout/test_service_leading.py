"""The rollout controller and its metrics sampler act only while the control
plane leads (several control planes share an etcd)."""

from __future__ import annotations

import time
from pathlib import Path

from pilotfish.rollout.service import RolloutService
from pilotfish.store.resources import ResourceStore
from pilotfish.store.sqlite import SqliteBackend


def test_passes_run_only_while_leading(tmp_path: Path) -> None:
    leading = False
    service = RolloutService(ResourceStore(SqliteBackend(tmp_path / "s.db")), list, lambda: leading)
    passes = {"rollout": 0, "mesh-metrics": 0}
    for loop in (service.controller.loop, service.metrics.loop):
        loop.period_s = 0.02
        loop.work = lambda name=loop.name: passes.__setitem__(name, passes[name] + 1)
    service.start()
    try:
        time.sleep(0.3)
        assert passes == {"rollout": 0, "mesh-metrics": 0}
        leading = True
        time.sleep(0.3)
        assert passes["rollout"] > 3 and passes["mesh-metrics"] > 3
        leading = False
        time.sleep(0.1)  # a pass under way ends
        stopped = dict(passes)
        time.sleep(0.3)
        assert passes == stopped
    finally:
        service.stop()
        service.store.close()
