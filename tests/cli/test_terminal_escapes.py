"""What the CLI prints from the server cannot drive the user's terminal: an
Event quoting a hostile webhook's answer, a label, a server's error. As
kubectl's EscapeTerminal (CVE-2021-25743): ESC shows as ^[ and CR as \\r."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pilotfish.cli.main import main
from pilotfish.client import Client
from pilotfish.controlplane.main import ControlPlane

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\rall good"


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    config = tmp_path / "config.yaml"
    running = ControlPlane.open(tmp_path / "data", "127.0.0.1:0", config)
    running.server.start()
    monkeypatch.setenv("PILOTFISH_CONFIG", str(config))
    for var in ("PILOTFISH_SERVER", "PILOTFISH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    try:
        token = (running.data_dir / "token").read_text().strip()
        yield Client(running.server.url, token, timeout=10)
    finally:
        running.close()


def test_get_and_describe_escape_what_the_server_sent(
    plane: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    plane.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "app", "namespace": "default"},
            "data": {"k": "v"},
        }
    )
    plane.apply(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "app.1", "namespace": "default"},
            "involvedObject": {"kind": "ConfigMap", "name": "app", "namespace": "default"},
            "reason": "Synced",
            "message": f"webhook answered: {HOSTILE}",
            "type": "Warning",
        }
    )
    for argv in (["get", "events"], ["describe", "configmap", "app"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\r" not in out, argv
        assert "^[]0;pwned\x07^[[2J" in out, argv
