"""The control plane as a process: start, serve, SIGTERM, restart, port in use."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.ports import free_port

from pilotfish.api.kinds import registry
from pilotfish.client import Client, Unreachable
from pilotfish.config import load_client_config

from .cp_testkit import virtual_service

VS = registry().resolve("virtualservice")


def start(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PILOTFISH_CONFIG": str(tmp_path / "config.yaml")}
    for var in ("PILOTFISH_SERVER", "PILOTFISH_TOKEN"):
        env.pop(var, None)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pilotfish.controlplane.main",
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def client_when_ready(tmp_path: Path, process: subprocess.Popen[str]) -> Client:
    deadline = time.monotonic() + 20
    config = tmp_path / "config.yaml"
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        if config.exists():
            saved = load_client_config(path=config)
            try:
                client = Client(saved.server, saved.token)
                client.list(VS, None)
                return client
            except Unreachable:
                pass
        time.sleep(0.05)
    raise AssertionError("the control plane did not come up")


@pytest.mark.slow
def test_sigterm_exits_zero_and_a_restart_keeps_objects_and_token(tmp_path: Path) -> None:
    port = free_port()
    process = start(tmp_path, port)
    client = client_when_ready(tmp_path, process)
    client.apply(virtual_service())
    token = (tmp_path / "data" / "token").read_text()

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert f"serving on http://127.0.0.1:{port}" in stderr

    again = start(tmp_path, port)
    try:
        restarted = client_when_ready(tmp_path, again)
        assert restarted.get(VS, "reviews", "default")["spec"]["hosts"] == ["reviews"]
        assert (tmp_path / "data" / "token").read_text() == token
        restarted.apply(virtual_service("second"))  # the old token still writes
    finally:
        again.send_signal(signal.SIGINT)
        assert again.wait(timeout=10) == 0


@pytest.mark.slow
def test_a_port_in_use_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start(tmp_path, port)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 1
    assert stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: the address is already in use "
        "(is another control plane running?)"
    ]
    assert not (tmp_path / "data").exists() and not (tmp_path / "config.yaml").exists()
