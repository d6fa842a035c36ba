"""Readiness and liveness probes with Kubernetes' semantics: a probe is due
every periodSeconds after initialDelaySeconds; successThreshold passes in a
row make it pass, failureThreshold failures in a row make it fail.
`ProbeState` is that counting (pure); `check` runs one attempt."""

from __future__ import annotations

import http.client
import socket
import subprocess
from dataclasses import dataclass

from pilotfish.objects import Obj


@dataclass
class ProbeState:
    """Counts results into a verdict; `passing` starts False (readiness) or
    True (liveness: a process is alive until proven otherwise)."""

    spec: Obj
    passing: bool
    started: float
    next_due: float = 0.0
    successes: int = 0
    failures: int = 0
    last_error: str = ""

    def __post_init__(self) -> None:
        self.next_due = self.started + float(self.spec.get("initialDelaySeconds", 0))

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def record(self, ok: bool, error: str, now: float) -> bool:
        """Record one result; True when the verdict changed."""
        self.next_due = now + float(self.spec.get("periodSeconds", 10))
        before = self.passing
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= int(self.spec.get("successThreshold", 1)):
                self.passing = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            self.last_error = error
            if self.failures >= int(self.spec.get("failureThreshold", 3)):
                self.passing = False
        return self.passing != before


def port_of(value: int | str, ports: dict[str, int]) -> int:
    """A probe's port: a number (the app's own), or the name of a spec port,
    which is the app port the agent allocated for it."""
    if isinstance(value, int):
        return value
    return ports[value] if value in ports else int(value)


def check(spec: Obj, ports: dict[str, int], cwd: str, env: dict[str, str]) -> tuple[bool, str]:
    """One attempt; (passed, why not)."""
    timeout = float(spec.get("timeoutSeconds", 1))
    try:
        if "httpGet" in spec:
            return _http(spec["httpGet"], ports, timeout)
        if "tcpSocket" in spec:
            port = port_of(spec["tcpSocket"]["port"], ports)
            socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
            return True, ""
        return _exec(spec["exec"]["command"], cwd, env, timeout)
    except (OSError, http.client.HTTPException, subprocess.SubprocessError) as e:
        return False, f"{type(e).__name__}: {e}"


def _http(get: Obj, ports: dict[str, int], timeout: float) -> tuple[bool, str]:
    port = port_of(get["port"], ports)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", get.get("path", "/"), headers={"User-Agent": "pilotfish-probe"})
        status = connection.getresponse().status
    finally:
        connection.close()
    if 200 <= status < 400:
        return True, ""
    return False, f"HTTP probe failed with statuscode: {status}"


def _exec(command: list[str], cwd: str, env: dict[str, str], timeout: float) -> tuple[bool, str]:
    done = subprocess.run(command, cwd=cwd, env=env, timeout=timeout, capture_output=True)
    if done.returncode == 0:
        return True, ""
    return False, f"exec probe exited with {done.returncode}"
