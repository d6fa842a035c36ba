"""Processes a previous agent started, which this agent takes over: a
handle with the part of Popen the instance code uses (pid, poll, wait,
returncode), read from /proc since they are not this process's children.

A pid is only taken over if the process is still the one recorded (its
environment names the instance): pids are reused, and an agent must never
supervise, or kill, a stranger."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from pilotfish.agent.lifecycle import UNKNOWN_EXIT


class Adopted:
    UNKNOWN_EXIT = UNKNOWN_EXIT

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def __repr__(self) -> str:
        return f"Adopted(pid={self.pid}, returncode={self.returncode})"

    def poll(self) -> int | None:
        if self.returncode is None and not alive(self.pid):
            self.returncode = self.UNKNOWN_EXIT
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, PermissionError, OSError, IndexError):
        return False


def adopt(pid: object, marker: str) -> Adopted | None:
    """The process `pid` if it is alive and `marker` appears in its command
    line or environment (a bootstrap path, POD_NAME=...), else None."""
    if not isinstance(pid, int) or not alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    needle = marker.encode()
    if needle in cmdline or needle + b"\0" in environ + b"\0":
        return Adopted(pid)
    return None
