"""Processes the harness starts: pinned, in their own session, always stopped.

Also the /proc readings (CPU ticks, VmRSS) and small socket helpers.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import resource
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
SERVER_CPU = "0"  # proxies and the backend
LOADGEN_CPU = "1"  # wrk and h2load
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv]


@dataclass
class Started:
    """One server process (and its children, for nginx's master/worker)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def __repr__(self) -> str:
        return f"Started({self.name!r}, pid={self.pid}, alive={self.alive()})"


@dataclass
class Supervisor:
    """Starts servers in a temp dir and stops every one of them, whatever happens."""

    workdir: Path
    started: list[Started] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Started:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                pinned(SERVER_CPU, argv),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
                env=env,
                preexec_fn=die_with_parent,
            )
        proc = Started(name, popen, log)
        self.started.append(proc)
        return proc

    def stop(self, proc: Started, grace_s: float = 6.0) -> None:
        if proc.alive():
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.popen.wait(timeout=5)
        # Children (nginx workers) share the session; make sure none outlive the master.
        _signal_group(proc.pid, signal.SIGKILL)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.started)):
            self.stop(proc)


def die_with_parent() -> None:
    """Even if the harness is killed outright (SIGKILL), its servers get SIGTERM."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# --- /proc readings -------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """root and its descendants (nginx's workers), read from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                parents[int(entry)] = int(fields[1])
    tree, frontier = [root], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree += children
        frontier = children
    return tree


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name: [state, ppid, ...]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return raw[raw.rfind(")") + 2 :].split()


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes, in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            ticks += int(fields[11]) + int(fields[12])
    return ticks * CLOCK_TICK_S


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def _user_seconds(pids: list[int]) -> float:
    ticks = sum(int(f[11]) for f in map(_stat_fields, pids) if f)
    return ticks * CLOCK_TICK_S


def _machine_user_seconds() -> float:
    """user + nice time of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return (int(fields[1]) + int(fields[2])) * CLOCK_TICK_S


class OtherLoad:
    """How much of a CPU processes that are not ours used during a measurement:
    user time of the machine less that of our servers and our load generators
    (reaped children). Another session's tests running meanwhile show up here."""

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.cpus = pids, 0.0

    def _now(self) -> tuple[float, float, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
        return time.monotonic(), _machine_user_seconds(), _user_seconds(self.pids) + children

    def __enter__(self) -> OtherLoad:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        wall, machine, ours = (b - a for a, b in zip(self._start, end, strict=True))
        self.cpus = max(0.0, machine - ours) / wall if wall > 0 else 0.0


class RssPeak:
    """Samples the summed VmRSS of some processes in the background; keeps the peak."""

    def __init__(self, pids: list[int], every_s: float = 0.2) -> None:
        self.pids, self.every_s, self.peak = pids, every_s, rss_kib(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, rss_kib(self.pids))

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pids))


# --- HTTP probes ----------------------------------------------------------


def listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@dataclass(frozen=True)
class Probe:
    status: int
    headers: int
    body: bytes


def get(
    port: int, path: str, timeout_s: float = 2.0, headers: dict[str, str] | None = None
) -> Probe:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return Probe(resp.status, len(resp.getheaders()), resp.read())
    finally:
        conn.close()


def wait_until(
    check: Callable[[], bool], timeout_s: float, proc: Started | None = None
) -> str | None:
    """Polls `check()` (truthy = ready) until timeout; returns None when ready,
    else why not (the process exited, the last error, or the time ran out)."""
    deadline, last = time.monotonic() + timeout_s, "check false"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            return f"exited with status {proc.popen.returncode}: {proc.log_tail()}"
        try:
            if check():
                return None
            last = "check false"
        except (OSError, http.client.HTTPException, ValueError) as e:
            last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        time.sleep(0.1)
    return f"not ready after {timeout_s:.0f} s ({last})"
