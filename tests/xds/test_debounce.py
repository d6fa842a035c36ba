"""Istio's push debouncing: PILOT_DEBOUNCE_AFTER (100 ms) and
PILOT_DEBOUNCE_MAX (10 s), read from the environment as istiod reads them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from xds_harness import CDS, SIDECAR, AdsStream, node, service

from pilotfish.client import Client
from pilotfish.controlplane.main import ControlPlane, StartError
from pilotfish.xds.debounce import Debounce, debounce_from_env


def test_istio_defaults_and_go_durations() -> None:
    assert debounce_from_env({}) == (0.1, 10.0)
    assert debounce_from_env({"PILOT_DEBOUNCE_AFTER": "250ms", "PILOT_DEBOUNCE_MAX": "2s"}) == (
        0.25,
        2.0,
    )
    assert debounce_from_env({"PILOT_DEBOUNCE_AFTER": "0"}) == (0.0, 10.0)


@pytest.mark.parametrize(
    ("environ", "error"),
    [
        (
            {"PILOT_DEBOUNCE_AFTER": "100"},
            "PILOT_DEBOUNCE_AFTER='100': time: missing unit in duration \"100\"",
        ),
        (
            {"PILOT_DEBOUNCE_MAX": "soon"},
            "PILOT_DEBOUNCE_MAX='soon': time: invalid duration \"soon\"",
        ),
        ({"PILOT_DEBOUNCE_AFTER": "-1s"}, "PILOT_DEBOUNCE_AFTER='-1s': must not be negative"),
        (
            {"PILOT_DEBOUNCE_AFTER": "2s", "PILOT_DEBOUNCE_MAX": "1s"},
            "PILOT_DEBOUNCE_MAX (1s) must not be shorter than PILOT_DEBOUNCE_AFTER (2s)",
        ),
    ],
)
def test_a_bad_value_is_named(environ: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError) as raised:
        debounce_from_env(environ)
    assert str(raised.value) == error


def test_steady_changes_push_at_the_maximum() -> None:
    """Changes every 20 ms never leave 50 ms of quiet: the push goes at 0.3 s."""
    debounce, stopping = Debounce(0.05, 0.3), threading.Event()
    done = threading.Event()

    def keep_changing() -> None:
        while not done.is_set():
            debounce.event()
            time.sleep(0.02)

    changer = threading.Thread(target=keep_changing)
    start = time.monotonic()
    changer.start()
    try:
        assert debounce.wait_for_quiet(stopping)
        assert 0.29 <= time.monotonic() - start < 0.6
    finally:
        done.set()
        changer.join()


def test_the_control_plane_refuses_a_bad_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PILOT_DEBOUNCE_MAX", "10")
    with pytest.raises(StartError, match="PILOT_DEBOUNCE_MAX='10': time: missing unit"):
        ControlPlane.open(tmp_path / "data", "127.0.0.1:0", tmp_path / "c.yaml", "127.0.0.1:0")


def test_the_control_plane_waits_for_quiet_as_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PILOT_DEBOUNCE_AFTER", "1s")
    plane = ControlPlane.open(tmp_path / "data", "127.0.0.1:0", tmp_path / "c.yaml", "127.0.0.1:0")
    plane.server.start()
    try:
        assert plane.ads is not None
        stream = AdsStream(f"127.0.0.1:{plane.ads.port}", node(SIDECAR, NAMESPACE="default"))
        stream.send(CDS)
        stream.ack(stream.receive())
        token = (plane.data_dir / "token").read_text().strip()
        start = time.monotonic()
        Client(plane.server.url, token, timeout=10).apply(service("reviews"))
        pushed = stream.receive(timeout=5)
        assert time.monotonic() - start >= 0.95
        assert pushed.type_url == CDS
        stream.close()
    finally:
        plane.close()
