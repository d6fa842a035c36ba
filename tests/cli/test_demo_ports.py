"""`pilotfish demo` checks its ports before it starts anything: a port in
use fails within seconds, naming the port, the process that holds it and
the flag that moves it (the issue's case is the gateway's 8080; the tests
hold an ephemeral port and put the examples' Gateway on it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.agent.mesh_harness import (
    REPO,
    bookinfo_with_gateway_port,
    free_port,
    isolated_env,
    run_cli,
)

from pilotfish.cli.ports import holder, in_use


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _demo(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    argv = [sys.executable, "-m", "pilotfish", "demo", "--state-dir", str(tmp / "state")]
    argv += ["--data-dir", str(tmp / "data"), *args]
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv, env=isolated_env(tmp), cwd=REPO, capture_output=True, text=True, timeout=60
        )
    finally:  # a demo that started anything (the check failed) leaves nothing behind
        if any((tmp / "state" / f"{role}.pid").exists() for role in ("controlplane", "agent")):
            run_cli(isolated_env(tmp), "down", "--state-dir", str(tmp / "state"), check=False)
    return done, time.monotonic() - started


def test_the_listening_process_is_named(held_port: int) -> None:
    assert in_use("127.0.0.1", held_port)
    assert holder(held_port).startswith(f"pid {os.getpid()} (")
    assert not in_use("127.0.0.1", free_port())


def test_demo_fails_at_once_when_the_gateway_port_is_taken(tmp_path: Path, held_port: int) -> None:
    examples = bookinfo_with_gateway_port(tmp_path, held_port)
    done, took = _demo(
        tmp_path,
        "--examples",
        str(examples),
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--xds-port",
        str(free_port()),
    )
    assert done.returncode == 1 and took < 10
    assert f"port {held_port} on 127.0.0.1 is already in use (by pid {os.getpid()} (" in done.stderr
    assert "--gateway-port" in done.stderr
    assert not (tmp_path / "state" / "controlplane.pid").exists()  # nothing was started


def test_demo_fails_at_once_when_the_api_port_is_taken(tmp_path: Path, held_port: int) -> None:
    done, took = _demo(
        tmp_path, "--listen", f"127.0.0.1:{held_port}", "--gateway-port", str(free_port())
    )
    assert done.returncode == 1 and took < 10
    assert f"port {held_port} on 127.0.0.1 is already in use" in done.stderr
    assert "choose another port with --listen" in done.stderr


def test_demo_fails_at_once_when_a_workloads_program_is_missing(tmp_path: Path) -> None:
    """On a machine without redis-server (its ratings keeps the stars there),
    the demo says what is missing rather than wait for an instance that
    never starts."""
    examples = bookinfo_with_gateway_port(tmp_path, free_port())
    workloads = examples / "30-workloads.yaml"
    workloads.write_text(workloads.read_text().replace("redis-server ", "no-such-redis-server "))
    done, took = _demo(
        tmp_path,
        "--examples",
        str(examples),
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--xds-port",
        str(free_port()),
    )
    assert done.returncode == 1 and took < 10
    assert "Workload redis-v1 runs no-such-redis-server, which is not installed" in done.stderr
    assert not (tmp_path / "state" / "controlplane.pid").exists()  # nothing was started
