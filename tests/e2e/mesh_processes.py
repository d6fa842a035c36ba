"""Processes for mesh end-to-end tests: a control plane with its own xDS
port, gRPC backends registered through `pilotfish register --heartbeat`, and
a proxyless grpcio client whose xDS bootstrap points at the control plane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processes import REPO, ControlPlane
from tests.ports import free_port

APPS = Path(__file__).with_name("grpc_apps.py")


@dataclass
class XdsControlPlane(ControlPlane):
    """A control plane serving xDS (pass xds_port), with the processes a test
    starts around it."""

    children: list[subprocess.Popen[Any]] = field(default_factory=list)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.server + path, timeout=5) as response:
            return json.loads(response.read())

    def backend(
        self,
        name: str,
        version: str,
        *,
        app: str = "echo",
        fail_first: bool = False,
        reply: str = "",
    ) -> int:
        """A gRPC server answering `reply` (default: its version), registered
        with a heartbeat."""
        port = free_port()
        args = [sys.executable, str(APPS), "serve", "--port", str(port)]
        args += ["--reply", reply or version]
        server = subprocess.Popen(
            [*args, *(["--fail-first-attempt"] if fail_first else [])],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.children.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "serving"
        self.children.append(self.register(name, port, {"app": app, "version": version}))
        return port

    def register(self, name: str, port: int, labels: dict[str, str]) -> subprocess.Popen[str]:
        label_args = [a for k, v in labels.items() for a in ("--label", f"{k}={v}")]
        return self.pilotfish(
            "register",
            name,
            "--port",
            f"grpc={port}",
            "--workload",
            name.rsplit("-", 1)[0],
            *label_args,
            "--ttl",
            "2",
            "--heartbeat",
        )

    def pilotfish(self, *args: str, stdout: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:
        """A long-running `pilotfish` command (a child of the test, not tracked)."""
        return subprocess.Popen(
            [sys.executable, "-m", "pilotfish", *args],
            env=self.env,
            cwd=REPO,
            stdout=stdout,
            stderr=subprocess.DEVNULL if stdout is subprocess.DEVNULL else subprocess.STDOUT,
            text=True,
        )

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.terminate()
        for child in self.children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


def xds_plane(tmp: Path, *args: str) -> XdsControlPlane:
    """A control plane of its own in `tmp` (home, CLI config, data), with an
    xDS port; `args`: more `pilotfish controlplane` flags."""
    env = {**os.environ, "HOME": str(tmp / "home"), "PILOTFISH_CONFIG": str(tmp / "config.yaml")}
    for var in ("PILOTFISH_SERVER", "PILOTFISH_TOKEN", "GRPC_XDS_BOOTSTRAP"):
        env.pop(var, None)
    return XdsControlPlane(tmp / "data", free_port(), env, xds_port=free_port(), args=args)


def bootstrap(path: Path, xds_port: int, node_id: str) -> Path:
    """gRPC's xDS bootstrap, as Istio's proxyless agent writes it."""
    path.write_text(
        json.dumps(
            {
                "xds_servers": [
                    {
                        "server_uri": f"127.0.0.1:{xds_port}",
                        "channel_creds": [{"type": "insecure"}],
                        "server_features": ["xds_v3"],
                    }
                ],
                "node": {
                    "id": node_id,
                    "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default"},
                    "locality": {},
                },
            }
        )
    )
    return path


class GrpcClient:
    """A proxyless grpcio client in its own process (fresh xDS state)."""

    def __init__(self, target: str, bootstrap_file: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(APPS), "client", "--target", target],
            env={**env, "GRPC_XDS_BOOTSTRAP": str(bootstrap_file)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert json.loads(self._line()) == {"ready": True}

    def calls(self, n: int, metadata: dict[str, str] | None = None) -> dict[str, Any]:
        assert self.process.stdin is not None
        command = {"calls": n, "metadata": metadata or {}}
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        result: dict[str, Any] = json.loads(self._line())
        return result

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the gRPC client exited"
        return line

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


def wait_until(condition: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(message)
