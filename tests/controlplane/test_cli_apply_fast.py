"""`pilotfish apply` is parsed and run without the rest of the command line:
the change leaves the CLI before the analyzers, servers and sidecar would
have loaded, and the user sees the same help, output and warnings."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pilotfish.cli.dispatch import apply_parser
from pilotfish.cli.main import build_parser
from pilotfish.controlplane.main import ControlPlane

# What `apply` never needs: were any of them imported, the CLI would start
# as slowly as before (0.7-2.5 s on a loaded machine, 820 modules).
HEAVY = ("pilotfish.analysis", "pilotfish.controlplane", "pilotfish.xds", "pilotfish.proxy", "grpc")

VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
"""


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-X", "importtime", "-m", "pilotfish", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def _imported(stderr: str) -> set[str]:
    lines = (line.rpartition("|")[2].strip() for line in stderr.splitlines())
    return {name for name in lines if name and not name.startswith("imported package")}


def _env(plane: ControlPlane) -> dict[str, str]:
    token = (plane.data_dir / "token").read_text().strip()
    cache = str(plane.data_dir / "cache")  # the parsed CRDs, kept by the first command
    env = {"PILOTFISH_SERVER": plane.server.url, "PILOTFISH_TOKEN": token}
    return {**os.environ, **env, "XDG_CACHE_HOME": cache}


def test_apply_sends_the_change_with_only_the_client_loaded(
    plane: ControlPlane, tmp_path: Path
) -> None:
    (tmp_path / "vs.yaml").write_text(VS)
    done = _cli("apply", "-f", str(tmp_path / "vs.yaml"), env=_env(plane))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "virtualservice.networking.istio.io/reviews created\n"
    # The server's analysis still reaches the user, as kubectl prints warnings.
    warnings = [line for line in done.stderr.splitlines() if line.startswith("Warning:")]
    assert warnings == [
        'Warning: Error [IST0101] (VirtualService default/reviews) Referenced host not found: "reviews"'
    ]
    heavy = {m for m in _imported(done.stderr) if m.startswith(HEAVY)}
    assert heavy == set()


def test_apply_errors_as_before(plane: ControlPlane, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(VS.replace("kind: VirtualService", "kind: Nope"))
    done = _cli("apply", "-f", str(tmp_path / "bad.yaml"), env=_env(plane))
    assert done.returncode == 1
    assert "error:" in done.stderr and "Nope" in done.stderr
    missing = _cli("apply", env=_env(plane))
    assert missing.returncode == 2
    assert "the following arguments are required: -f/--filename" in missing.stderr


def test_apply_help_is_the_same_alone_and_among_the_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    among = io.StringIO()
    with contextlib.redirect_stdout(among), pytest.raises(SystemExit):
        build_parser().parse_args(["apply", "--help"])
    assert apply_parser().format_help() == among.getvalue()
    assert "--force-conflicts" in among.getvalue()
