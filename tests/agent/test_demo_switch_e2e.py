"""`pilotfish demo`, stopped, then `pilotfish demo --canary` on the same
store: the canary demo removes the Bookinfo demo's reviews-v1/v2/v3 (and
says so), so the canary's service selects only the Canary's instances and
the primary's; the release measures what it releases."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.agent.mesh_harness import (
    REPO,
    bookinfo_with_gateway_port,
    free_port,
    isolated_env,
    processes_under,
    run_cli,
    wait_for,
)

from pilotfish.client import Client
from pilotfish.config import load_client_config

pytestmark = pytest.mark.slow
URL_LINE = re.compile(r"Bookinfo is up: (http://\S+)")


def _start(tmp: Path, env: dict[str, str], out: Path, *extra: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "pilotfish", "demo", "--data-dir", str(tmp / "data")]
    argv += ["--state-dir", str(tmp / "state"), "--listen", f"127.0.0.1:{free_port()}"]
    argv += ["--xds-port", str(free_port()), *extra]
    examples = bookinfo_with_gateway_port(tmp / out.stem, free_port())
    argv += ["--examples", str(examples)]
    with out.open("wb") as sink:
        return subprocess.Popen(argv, env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)


def _down(tmp: Path, env: dict[str, str], process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        run_cli(env, "down", "--state-dir", str(tmp / "state"))
        process.wait(timeout=60)


def _selected(env: dict[str, str], service: str) -> set[str]:
    """The Workloads of the registered instances `service`'s selector selects."""
    selector = json.loads(run_cli(env, "get", "service", service, "-o", "json"))["spec"]["selector"]
    config = load_client_config(path=Path(env["PILOTFISH_CONFIG"]))
    instances: list[dict[str, Any]] = Client(config.server, config.token).instances()
    return {
        i["workload"]
        for i in instances
        if all((i.get("labels") or {}).get(k) == v for k, v in selector.items())
    }


def test_the_canary_demo_after_the_bookinfo_demo_selects_only_its_own(tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    first_out, second_out = tmp_path / "demo.out", tmp_path / "canary.out"
    first = _start(tmp_path, env, first_out)
    try:
        wait_for(lambda: URL_LINE.search(first_out.read_text()), 150, "the demo printed no URL")
    finally:
        _down(tmp_path, env, first)
    second = _start(tmp_path, env, second_out, "--canary")
    try:
        wait_for(
            lambda: "Initialized" in run_cli(env, "get", "canary", "reviews", check=False),
            240,
            second_out.read_text(errors="replace"),
        )
        assert _selected(env, "reviews-canary") <= {"reviews"}
        assert _selected(env, "reviews-primary") == {"reviews-primary"}
        out = second_out.read_text()
        assert "removed the Workloads reviews-v1, reviews-v2, reviews-v3 an earlier demo" in out
    finally:
        _down(tmp_path, env, second)
        for line in processes_under(tmp_path, environ=True):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
