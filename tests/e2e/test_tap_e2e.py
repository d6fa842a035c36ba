"""`pilotfish tap` end to end: curl goes through productpage's sidecar to
reviews' sidecar (real `pilotfish proxy` processes driven over ADS), and the
tap, relayed by the control plane from reviews' sidecar's tap stream, shows
each request as it happens; it stops after --count and on Ctrl-C, and a
reader that stops reading costs the requests nothing (drops are counted)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import pytest
from mesh_processes import XdsControlPlane
from processes import REPO
from sidecar_mesh import (
    REVIEWS_SERVICE,
    Backend,
    Sidecar,
    SidecarMesh,
    curl,
    curl_many,
    isolated_env,
)
from tests.ports import free_port

pytestmark = pytest.mark.slow

TAP_PATH = "/apis/tap.pilotfish.dev/v1alpha1/watch/namespaces/default/workloads/reviews-v1/tap"


@dataclass
class Mesh:
    mesh: SidecarMesh
    caller: Sidecar
    reviews: Sidecar

    def get(self, path: str) -> int:
        return curl(f"http://reviews:9080{path}", proxy=self.caller.outbound_port).status

    def tap(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "pilotfish", "tap", "reviews-v1", *args],
            env=self.mesh.plane.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("tap")
    env = isolated_env(tmp)
    plane = XdsControlPlane(tmp / "data", free_port(), env, xds_port=free_port())
    sidecars = SidecarMesh(plane, tmp)
    try:
        plane.start()
        sidecars.apply(REVIEWS_SERVICE)
        reviews, _ = sidecars.workload(
            "reviews-v1-0", {"app": "reviews", "version": "v1"}, Backend("reviews-v1")
        )
        caller = sidecars.client("productpage-v1-0", {"app": "productpage", "version": "v1"})
        for sidecar in sidecars.sidecars:
            sidecars.wait_serving(sidecar)
        yield Mesh(sidecars, caller, reviews)
    finally:
        sidecars.close()


def lines_while_sending(
    mesh: Mesh, out: IO[str], wanted: int, paths: list[str], timeout: float = 30
) -> list[str]:
    """Send requests (each of `paths` in turn) until `wanted` lines are read:
    the tap starts a moment after the command, so early requests may go unseen."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(_read(out, wanted)), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while reader.is_alive() and time.monotonic() < deadline:
        for path in paths:
            assert mesh.get(path) == 200
        time.sleep(0.05)
    reader.join(5)
    return lines


def _read(out: IO[str], wanted: int) -> list[str]:
    got = []
    while len(got) < wanted and (line := out.readline()):
        got.append(line.rstrip("\n"))
    return got


def test_tap_shows_requests_as_they_happen_and_stops_after_count(mesh: Mesh) -> None:
    tap = mesh.tap("--path", "/echo", "--method", "GET", "--count", "3")
    assert tap.stdout is not None
    lines = lines_while_sending(mesh, tap.stdout, 3, ["/echo/a", "/other"])
    assert tap.wait(15) == 0, tap.stderr.read() if tap.stderr else ""
    assert len(lines) == 3, lines
    for line in lines:
        fields = dict(f.split("=", 1) for f in line.split(" ")[1:])
        assert line.startswith("req id=")
        assert fields["proxy"] == "in"
        assert fields[":method"] == "GET"
        assert fields[":path"] == "/echo/a"  # /other is filtered out
        assert fields[":authority"] == "reviews:9080"
        assert fields[":status"] == "200"
        assert fields["latency"].endswith("ms")
        assert fields["src_res"] == "workload/productpage-v1.default"
        assert fields["dst_res"] == "workload/reviews-v1.default"
        assert fields["dst"] == f"127.0.0.1:{mesh.reviews.inbound_port}"


def test_ctrl_c_stops_the_tap_cleanly(mesh: Mesh) -> None:
    tap = mesh.tap("-o", "json")
    assert tap.stdout is not None and tap.stderr is not None
    (line,) = lines_while_sending(mesh, tap.stdout, 1, ["/echo/json"])
    event = json.loads(line)
    assert event["method"] == "GET" and event["path"] == "/echo/json"
    assert event["source"]["workload"] == "productpage-v1"
    tap.send_signal(signal.SIGINT)
    assert tap.wait(10) == 130
    assert "Traceback" not in tap.stderr.read()


def test_a_tap_of_a_workload_without_sidecars_is_a_404(mesh: Mesh) -> None:
    done = mesh.mesh.plane.cli("tap", "ghost-v1")
    assert done.returncode == 1
    assert 'workload "default/ghost-v1" has no sidecar connected' in done.stderr


def test_a_bad_filter_is_refused_before_any_sidecar_sees_it(mesh: Mesh) -> None:
    done = mesh.mesh.plane.cli("tap", "reviews-v1", "--max-rps", "0")
    assert done.returncode == 1
    assert "invalid maxRps 0.0" in done.stderr
    done = mesh.mesh.plane.cli("tap", "reviews-v1", "--path", "echo")
    assert 'invalid path prefix "echo"' in done.stderr


def test_a_reader_that_stops_reading_does_not_slow_requests(mesh: Mesh) -> None:
    """The bounded queues themselves (and their drop counts) are tested without
    sockets in tests/proxy/test_tap.py and tests/controlplane/test_tap_relay.py:
    filling them here would take thousands of requests."""
    urls = ["http://reviews:9080/echo/burst"] * 240
    proxy = ("-x", f"http://127.0.0.1:{mesh.caller.outbound_port}")

    def burst() -> float:
        started = time.monotonic()
        results = curl_many(urls, *proxy, parallel=6)
        assert [status for status, _ in results] == [200] * len(urls)
        return time.monotonic() - started

    alone = burst()
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    stalled = direct.open(f"{mesh.mesh.plane.server}{TAP_PATH}?maxRps=1000", timeout=30)
    try:
        time.sleep(0.5)  # the tap reaches the sidecar
        tapped = burst()  # while nobody reads the tap
        assert tapped < alone * 1.5 + 2, (alone, tapped)
        event = json.loads(stalled.readline())  # what it saw waited, bounded
        assert event["path"] == "/echo/burst"
    finally:
        stalled.close()
