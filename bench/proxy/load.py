"""The load generators, pinned to the load CPU: wrk and h2load (HTTP/1.1, or
h2c with prior knowledge and `streams` concurrent streams per connection).

Throughput: a closed loop of N keep-alive connections for a fixed time.
Latency: h2load paced with --rps (requests per second per connection), every
request's time read from its --log-file; far below saturation, so the
coordinated-omission error of a paced closed loop stays small.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from procs import LOADGEN_CPU, die_with_parent, pinned
from shapes import Shape

LATENCY_CONNECTIONS = 10


@dataclass(frozen=True)
class Load:
    """What a closed-loop run did."""

    requests: int
    seconds: float
    errors: int  # connect/read/write/timeouts and non-2xx answers

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Latency:
    """Percentiles of a fixed-rate run, in microseconds."""

    rate: float  # achieved requests per second
    samples: int
    errors: int
    p50_us: float
    p90_us: float
    p99_us: float


class LoadError(Exception):
    """A load generator failed or printed nothing we can read."""


def _run(argv: list[str], timeout_s: float) -> str:
    try:
        done = subprocess.run(
            pinned(LOADGEN_CPU, argv),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            preexec_fn=die_with_parent,
        )
    except subprocess.TimeoutExpired as e:
        raise LoadError(f"{argv[0]} still running after {timeout_s:.0f} s") from e
    if done.returncode != 0:
        raise LoadError(f"{argv[0]} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return done.stdout


# --- wrk ------------------------------------------------------------------


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_script(shape: Shape) -> str:
    """Sets the request once (wrk formats it a single time) and prints a
    machine-readable summary at the end."""
    headers = "\n".join(
        f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in shape.headers
    )
    return f"""\
wrk.method = "GET"
wrk.path = {_lua_string(shape.path)}
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d %d\\n", summary.requests,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def wrk(shape: Shape, port: int, connections: int, seconds: int, workdir: Path) -> Load:
    script = workdir / f"wrk-{shape.name}.lua"
    script.write_text(wrk_script(shape))
    out = _run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{shape.path}",
        ],
        timeout_s=seconds + 30,
    )
    match = re.search(r"^BENCH ((?:\d+ ?){7})$", out, re.M)
    if match is None:
        raise LoadError(f"wrk printed no summary: {out[-300:]}")
    requests, duration_us, *errors = (int(x) for x in match.group(1).split())
    return Load(requests, duration_us / 1e6, sum(errors))


# --- h2load -----------------------------------------------------------------


def _h2load_argv(
    shape: Shape, port: int, connections: int, seconds: int, streams: int = 0
) -> list[str]:
    """HTTP/1.1 (one request at a time per connection), or with `streams`, h2c
    (h2load's default for an http:// URL) with that many streams in flight."""
    headers = [arg for k, v in shape.headers for arg in ("-H", f"{k}: {v}")]
    return [
        "h2load",
        f"-m{streams}" if streams else "--h1",
        "-t1",
        f"-c{connections}",
        f"-D{seconds}",
        *headers,
        f"http://127.0.0.1:{port}{shape.path}",
    ]


def h2load(shape: Shape, port: int, connections: int, seconds: int, streams: int = 0) -> Load:
    argv = _h2load_argv(shape, port, connections, seconds, streams)
    return parse_h2load(_run(argv, timeout_s=seconds + 30))


def parse_h2load(out: str) -> Load:
    """What h2load's summary says: requests done, seconds, and the failed ones."""
    finished = re.search(r"^finished in ([\d.]+)s, ([\d.]+) req/s", out, re.M)
    counts = re.search(
        r"^requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
        re.M,
    )
    codes = re.search(r"^status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out, re.M)
    if finished is None or counts is None or codes is None:
        raise LoadError(f"h2load output not understood: {out[-300:]}")
    # Not done minus 2xx: over h2c, answers to streams still in flight when
    # the time is up count in the status codes but not in `done`.
    failed = sum(int(counts.group(i)) for i in (4, 5, 6)) + sum(map(int, codes.groups()))
    return Load(int(counts.group(2)), float(finished.group(1)), failed)


def paced(
    shape: Shape, port: int, rate: int, seconds: int, workdir: Path, streams: int = 0
) -> Latency:
    """h2load at `rate` req/s in all, spread over LATENCY_CONNECTIONS connections."""
    log = workdir / f"latency-{shape.name}-{port}.tsv"
    per_conn = max(1, rate // LATENCY_CONNECTIONS)
    argv = _h2load_argv(shape, port, LATENCY_CONNECTIONS, seconds, streams)
    _run([*argv[:-1], f"--rps={per_conn}", f"--log-file={log}", argv[-1]], seconds + 30)
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    log.unlink()
    if not rows:
        raise LoadError("h2load logged no requests")
    times = sorted(int(r[2]) for r in rows if r[1].startswith("2"))
    starts = [int(r[0]) for r in rows]
    span_s = (max(starts) - min(starts)) / 1e6 or float(seconds)
    return Latency(
        rate=len(rows) / span_s,
        samples=len(times),
        errors=len(rows) - len(times),
        p50_us=percentile(times, 50),
        p90_us=percentile(times, 90),
        p99_us=percentile(times, 99),
    )


def percentile(sorted_values: list[int], pct: float) -> float:
    """Nearest-rank percentile; NaN when there are no values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil
    return float(sorted_values[int(rank) - 1])


def versions() -> dict[str, str]:
    """One line of version text per tool the harness drives."""
    probes = {
        "nginx": ["nginx", "-v"],
        "haproxy": ["haproxy", "-v"],
        "wrk": ["wrk", "-v"],
        "h2load": ["h2load", "--version"],
    }
    found: dict[str, str] = {}
    for name, argv in probes.items():
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            text = (done.stdout + done.stderr).strip().splitlines()
            found[name] = text[0] if text else "?"
        except OSError as e:
            found[name] = f"missing ({e.strerror})"
    return found
