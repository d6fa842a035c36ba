"""`kill -9` of a writing process loses nothing it acknowledged."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from store_testkit import BACKENDS, ETCD_ENV, configmap, kinds_registry
from tests.etcd_server import EtcdServer

from pilotfish.store import Key
from pilotfish.store.resources import ResourceStore

WRITER = Path(__file__).with_name("crash_writer.py")


def run_and_kill(backend: str, data_dir: Path, rng: random.Random) -> list[tuple[int, int]]:
    """Start the writer, SIGKILL it at a random moment once it is writing, and
    return every (i, resourceVersion) it acknowledged."""
    child = subprocess.Popen(
        [sys.executable, str(WRITER), backend, str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    first = child.stdout.readline()  # it is writing once the first line is out
    assert first, child.stderr.read().decode() if child.stderr else "writer died"
    time.sleep(rng.uniform(0.05, 0.5))
    os.kill(child.pid, signal.SIGKILL)
    rest = child.stdout.read()
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    lines = (first + rest).decode().splitlines()
    return [(int(i), int(rv)) for i, rv in (line.split() for line in lines)]


def test_acknowledged_writes_survive_sigkill(backend_name: str, tmp_path: Path) -> None:
    backend = backend_name
    rng = random.Random(os.environ.get("PILOTFISH_CRASH_SEED", "crash"))
    highest_rv = 0
    for round_ in range(4):
        acked = run_and_kill(backend, tmp_path, rng)
        assert len(acked) > 1
        assert [rv for _, rv in acked] == sorted(rv for _, rv in acked)
        assert acked[0][1] > highest_rv, "revisions must keep rising across restarts"
        store = ResourceStore(BACKENDS[backend](tmp_path)(), kinds=kinds_registry())
        try:
            last_for: dict[str, tuple[int, int]] = {}
            for i, rv in acked:
                last_for[f"cm-{i % 20}"] = (i, rv)
            for name, (i, rv) in last_for.items():
                stored = store.get(Key("", "ConfigMap", "default", name))
                # The write after the last acknowledged one may have landed too.
                assert int(stored["data"]["i"]) >= i, name
                assert int(stored["metadata"]["resourceVersion"]) >= rv, name
            highest_rv = max(rv for _, rv in acked)
            # The store still works: a write gets a newer revision, and is watched.
            watch = store.watch("", "ConfigMap", since=str(highest_rv))
            after = store.apply(configmap(f"after-crash-{round_}"), manager="test")
            assert int(after["metadata"]["resourceVersion"]) > highest_rv
            names = []
            while (event := watch.next(timeout=2)) is not None:
                names.append(event.object["metadata"]["name"])
                if names[-1] == after["metadata"]["name"]:
                    break
            assert names[-1] == after["metadata"]["name"]
            watch.close()
            highest_rv = int(after["metadata"]["resourceVersion"])
        finally:
            store.close()


def test_acknowledged_writes_survive_etcd_sigkill(tmp_path: Path) -> None:
    """etcd itself killed -9 under a writer, then restarted on its data: every
    write the writer saw acknowledged is there, and revisions keep rising."""
    rng = random.Random(os.environ.get("PILOTFISH_CRASH_SEED", "etcd-crash"))
    server = EtcdServer(tmp_path / "etcd")
    env = {**os.environ, ETCD_ENV: server.endpoint}
    highest_rv = 0
    try:
        for _ in range(2):
            server.start()
            child = subprocess.Popen(
                [sys.executable, str(WRITER), "etcd", str(tmp_path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            assert child.stdout is not None and child.stderr is not None
            first = child.stdout.readline()
            assert first, child.stderr.read().decode()
            time.sleep(rng.uniform(0.05, 0.5))
            server.kill(signal.SIGKILL)
            rest = child.stdout.read()
            assert child.wait(timeout=30) != 0  # it stops at its first refused write
            assert b"etcd is unavailable" in child.stderr.read()
            acked = [
                (int(i), int(rv))
                for i, rv in (line.split() for line in (first + rest).decode().splitlines())
            ]
            assert acked[0][1] > highest_rv
            server.start()
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv(ETCD_ENV, server.endpoint)
                store = ResourceStore(BACKENDS["etcd"](tmp_path)(), kinds=kinds_registry())
            try:
                for i, rv in acked[-20:]:  # the last write of each name
                    stored = store.get(Key("", "ConfigMap", "default", f"cm-{i % 20}"))
                    assert int(stored["data"]["i"]) >= i
                    assert int(stored["metadata"]["resourceVersion"]) >= rv
            finally:
                store.close()
            highest_rv = acked[-1][1]
            server.kill(signal.SIGTERM)
    finally:
        server.stop()
