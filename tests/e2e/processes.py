"""Running pilotfish as a user does: real processes, the CLI, curl."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ControlPlane:
    data_dir: Path
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log: list[Path] = field(default_factory=list)
    xds_port: int = -1  # -1: no xDS server (most tests do not use it; 15010 may be taken)
    args: tuple[str, ...] = ()  # more `pilotfish controlplane` options (--store ...)

    @property
    def server(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.data_dir.parent / f"controlplane-{len(self.log)}.log"
        self.log.append(log)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pilotfish",
                "controlplane",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--xds-port",
                str(self.xds_port),
                *self.args,
            ],
            env=self.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        # A wait, not a measure: generous, since a loaded CI machine starts
        # Python slowly (imports alone took over 20 s under load).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"{self.server}/readyz", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"control plane not ready: {log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=15)

    def cli(
        self, *args: str, stdin: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pilotfish", *args],
            input=stdin,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
