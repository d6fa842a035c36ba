"""`kill -9` of a writing process loses nothing it acknowledged."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from store_testkit import BACKENDS, configmap, kinds_registry

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
