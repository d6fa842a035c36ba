"""Fixtures that run pilotfish as a user does."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import ControlPlane
from tests.ports import free_port


@pytest.fixture
def controlplane(tmp_path: Path) -> Iterator[ControlPlane]:
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "PILOTFISH_CONFIG": str(tmp_path / "config.yaml"),
    }
    for var in ("PILOTFISH_SERVER", "PILOTFISH_TOKEN"):
        env.pop(var, None)
    plane = ControlPlane(tmp_path / "data", free_port(), env)
    plane.start()
    yield plane
    if plane.process and plane.process.poll() is None:
        plane.process.kill()
        plane.process.wait()
