"""`pilotfish demo --canary` as a user runs it: Bookinfo comes up with
reviews under a Canary, reviews v3 is released and promoted, a faulty build
is released and rolled back, all on their own; the page then shows v3's red
stars, served by the primary, and `pilotfish down` stops everything."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from tests.agent.mesh_harness import (
    DIRECT,
    REPO,
    bookinfo_with_gateway_port,
    free_port,
    isolated_env,
    processes_under,
    wait_for,
)

pytestmark = pytest.mark.slow
URL_LINE = re.compile(r"Bookinfo is up: (http://\S+)")


def test_demo_canary_promotes_v3_and_rolls_back_the_faulty_build(tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    state = tmp_path / "state"
    argv = [
        sys.executable,
        "-m",
        "pilotfish",
        "demo",
        "--canary",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    argv += ["--state-dir", str(state), "--listen", f"127.0.0.1:{free_port()}"]
    argv += ["--xds-port", str(free_port())]
    argv += ["--examples", str(bookinfo_with_gateway_port(tmp_path, free_port()))]
    out_file = tmp_path / "demo.out"
    with out_file.open("wb") as out:
        process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    output = lambda: out_file.read_text(errors="replace")  # noqa: E731
    try:
        wait_for(lambda: "releases done" in output() or process.poll() is not None, 420, output())
        text = output()
        assert "release-v3.yaml: Succeeded" in text, text
        assert "release-faulty.yaml: Failed" in text, text
        assert "Advance reviews.default canary weight 50" in text
        assert "Promotion completed! Scaling down reviews.default" in text
        assert "Canary failed! Scaling down reviews.default" in text
        url = URL_LINE.search(text)
        assert url is not None
        link = url.group(1)

        def served_by_primary() -> str | None:
            with DIRECT.open(urllib.request.Request(link), timeout=20) as answer:
                body = str(answer.read().decode())
            return body if "reviews-primary-" in body else None

        # The rolled-back routes reach the gateway's sidecars a push after the
        # Canary says Failed: the primary serves within a few seconds.
        body = wait_for(served_by_primary, 30, "the primary never served the page")
        assert '<font color="red">' in body
    finally:
        if process.poll() is None:
            subprocess.run(
                [sys.executable, "-m", "pilotfish", "down", "--state-dir", str(state)],
                env=env,
                cwd=REPO,
                timeout=120,
                check=False,
            )
            process.wait(timeout=60)
        for line in processes_under(tmp_path, environ=True):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
    assert process.returncode == 0
    assert processes_under(tmp_path, environ=True) == []
