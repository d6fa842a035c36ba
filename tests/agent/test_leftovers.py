"""stop_leftovers: at start, the agent stops what a previous agent left
running, and never a stranger that has the recorded pid by now."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pilotfish.agent.node import stop_leftovers

SLEEPER = [sys.executable, "-c", "import time; time.sleep(30)"]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def _start(processes: list[subprocess.Popen[bytes]], **env: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(SLEEPER, env={**os.environ, **env}, start_new_session=True)
    processes.append(process)
    return process


def _record(state: Path, name: str, app: int, sidecar: int) -> None:
    directory = state / "instances" / "default" / name
    directory.mkdir(parents=True)
    (directory / "pids.json").write_text(json.dumps({"app": app, "sidecar": sidecar}))


def test_a_stranger_with_a_recorded_pid_is_not_killed(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    stranger = _start(processes)  # e.g. the user's editor, with a pid reused after a reboot
    ours = _start(processes, POD_NAME="web-0")
    _record(tmp_path, "web-0", app=ours.pid, sidecar=stranger.pid)
    _record(tmp_path, "old-0", app=stranger.pid, sidecar=stranger.pid)
    assert stop_leftovers(tmp_path) == 1
    ours.wait(timeout=5)
    time.sleep(0.2)
    assert stranger.poll() is None
    assert not any((tmp_path / "instances" / "default").iterdir())
