"""`pilotfish controlplane --traces-max N --traces-ttl D`: the span store keeps
at most N traces, the oldest dropped first, and what it keeps survives a
restart of the control plane."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest
from processes import ControlPlane
from tests.controlplane.otel_spans import export_trace
from tests.ports import free_port

pytestmark = pytest.mark.slow
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def kept(plane: ControlPlane) -> list[str]:
    url = f"{plane.server}/api/traces?service=ratings.default&limit=100"
    with DIRECT.open(url, timeout=10) as answer:
        return [t["traceID"] for t in json.loads(answer.read())["data"]]


def test_traces_max_keeps_the_newest_and_a_restart_keeps_them(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "PILOTFISH_CONFIG": str(tmp_path / "c.yaml"),
    }
    plane = ControlPlane(
        tmp_path / "data", free_port(), env, args=("--traces-max", "2", "--traces-ttl", "1h")
    )
    plane.start()
    try:
        sent = [export_trace(f"{plane.server}/v1/traces").trace_id for _ in range(3)]
        assert kept(plane) == [sent[2], sent[1]]
        assert plane.stop() == 0
        plane.start()
        assert kept(plane) == [sent[2], sent[1]]
    finally:
        plane.stop()


def test_bad_retention_flags_are_refused(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "PILOTFISH_CONFIG": str(tmp_path / "c.yaml"),
    }
    plane = ControlPlane(tmp_path / "data", free_port(), env)
    for flags, message in (
        (("--traces-max", "0"), 'argument --traces-max: "0": must be a whole number above 0'),
        (("--traces-ttl=-1h",), 'argument --traces-ttl: interval "-1h" must be positive'),
    ):
        done = plane.cli("controlplane", "--data-dir", str(plane.data_dir), *flags)
        assert done.returncode == 2 and message in done.stderr
        assert not (plane.data_dir / "traces.db").exists()  # nothing started
