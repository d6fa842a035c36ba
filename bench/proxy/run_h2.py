"""HTTP/2 throughput and latency: pilotfish beside nginx, h2load over h2c with
10 streams per connection, in one run.

    bash bench/proxy/setup.sh                  # nginx, h2load, curl (once)
    .venv/bin/python bench/proxy/run_h2.py [--quick] [--targets direct,nginx,...]

Clients speak HTTP/2 with prior knowledge (h2c) to every target:
  direct          the backend alone, over h2c
  nginx           nginx `listen ... http2` -> proxy_pass (HTTP/1.1, keepalive pool)
  pilotfish       pilotfish (h2c from clients) -> HTTP/1.1 cluster
  nginx-h2up      nginx `listen ... http2` -> grpc_pass (HTTP/2, keepalive pool)
  pilotfish-h2up  pilotfish -> a cluster with HTTP/2 (explicit_http_config)
One nginx process (one worker) is the backend for all of them, with the
fixed answers of run.py's two shapes on two ports: HTTP/1.1 and h2c.

Per target and shape: h2load throughput (32 connections, as run.py's HTTP/1.1
rows, each with 10 streams in flight), p50/p90/p99 at a fixed 1000 req/s
(h2load --rps over 10 connections, 10 streams each), the p90 added over the
backend alone, CPU µs per request, VmRSS idle and busy. Pinning and noise
handling as in run.py. Prints a Markdown table and the pilotfish/nginx
ratios of both pairs; writes bench/proxy/h2_results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # leave no __pycache__ beside the harness
sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
from load import LoadError, h2load, paced, versions  # noqa: E402
from procs import (  # noqa: E402
    RssPeak,
    Started,
    cpu_seconds,
    free_port,
    listening,
    wait_until,
)
from report import (  # noqa: E402
    Settings,
    ShapeResult,
    TargetResult,
    _mib,
    _num,
    added_p90,
    document,
    table,
)
from run import WARMUP_S, log, measure_all, measure_target, run_options  # noqa: E402
from shapes import SHAPES, Shape  # noqa: E402
from targets import (  # noqa: E402
    START_TIMEOUT_S,
    Bench,
    HopStart,
    Target,
    _backend_block,
    _pilotfish_hop,
    _proxy_block,
    _start_nginx,
)

HERE = Path(__file__).resolve().parent
TOOLS = ["nginx", "h2load", "curl", "taskset"]
STREAMS = 10  # h2load -m: concurrent streams per connection
TARGETS = ["direct", "nginx", "pilotfish", "nginx-h2up", "pilotfish-h2up"]
PAIRS = {
    "HTTP/1.1 upstream": ("pilotfish", "nginx"),
    "h2c upstream": ("pilotfish-h2up", "nginx-h2up"),
}


def start_backends(bench: Bench) -> int:
    """The one backend process: HTTP/1.1 on bench.backend_port, h2c on the port returned."""
    h2c_port = free_port()

    def block(port: int) -> str:
        return _backend_block(port) + "\n" + _backend_block(h2c_port, h2c=True)

    bench.backend, bench.backend_port = _start_nginx(bench, "backend", block)
    why = wait_until(
        lambda: listening(bench.backend_port) and listening(h2c_port), 10, bench.backend
    )
    if why is None:
        why = check_h2c(h2c_port, "backend", bench.backend)
    if why is not None:
        raise SystemExit(f"the backend (nginx) did not start: {why}")
    return h2c_port


def _hop(bench: Bench, name: str, upstream_port: int, h2up: bool) -> HopStart:
    if name.startswith("pilotfish"):
        return _pilotfish_hop(bench, name, upstream_port, upstream_h2=h2up)
    pool = bench.pool_size
    block = partial(
        _proxy_block, upstream_port=upstream_port, pool=pool, h2c_listen=True, h2c_upstream=h2up
    )
    proc, port = _start_nginx(bench, name, block)
    return HopStart(proc, port, lambda: listening(port))


def start_h2_target(bench: Bench, name: str, h2c_port: int) -> Target:
    """Starts one proxy (or none, for direct) and checks both shapes come back over h2c."""
    assert bench.backend is not None
    if name == "direct":
        return Target(name, 0, h2c_port, measured=[bench.backend])
    h2up = name.endswith("-h2up")
    hop = _hop(bench, name, h2c_port if h2up else bench.backend_port, h2up)
    target = Target(name, 1, hop.port, owned=[hop.proc])
    target.unavailable = wait_until(hop.ready, START_TIMEOUT_S, hop.proc)
    if target.unavailable is None:
        target.measured.append(hop.proc)
        target.unavailable = check_h2c(hop.port, name, hop.proc)
    return target


def check_h2c(port: int, name: str, proc: Started) -> str | None:
    """None if both shapes come back right over h2c (curl, prior knowledge), else what is wrong."""
    for shape in SHAPES.values():
        why = wait_until(partial(_answers_h2c, port, shape), 5, proc)
        if why is not None:
            return f"GET {shape.path} over h2c through {name}: {why}"
    return None


def _answers_h2c(port: int, shape: Shape) -> bool:
    headers = [arg for k, v in shape.headers for arg in ("-H", f"{k}: {v}")]
    argv = ["curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}"]
    done = subprocess.run(
        [*argv, *headers, f"http://127.0.0.1:{port}{shape.path}"],
        capture_output=True,
        timeout=5,
        check=False,
    )
    body, _, tail = done.stdout.rpartition(b"\n")
    if done.returncode != 0 or tail != b"2 200" or body != shape.body:
        why = done.stderr.decode(errors="replace").strip() or tail.decode(errors="replace")
        raise ValueError(
            f"curl: {why}, {len(body)} body bytes, wanted HTTP/2 200 with {len(shape.body)}"
        )
    return True


def measure_h2(
    target: Target, pids: list[int], shape: Shape, settings: Settings, workdir: Path
) -> ShapeResult:
    """run.py's measurement with h2load over h2c in place of wrk."""
    result = ShapeResult()
    try:
        h2load(shape, target.port, settings.connections, WARMUP_S, STREAMS)
        cpu_before = cpu_seconds(pids)
        with RssPeak(pids) as rss:
            load = h2load(shape, target.port, settings.connections, settings.seconds, STREAMS)
        result.h2load, result.rss_busy_kib = load, rss.peak
        if load.requests:
            result.cpu_us_per_req = (cpu_seconds(pids) - cpu_before) * 1e6 / load.requests
    except LoadError as e:
        result.errors.append(f"h2load: {e}")
    try:
        result.latency = paced(
            shape, target.port, settings.rate, settings.seconds, workdir, STREAMS
        )
    except LoadError as e:
        result.errors.append(f"latency: {e}")
    dead = [p.name for p in target.measured if not p.alive()]
    if dead:
        result.errors.append(f"exited during the run: {', '.join(dead)}")
    return result


# --- the table and the ratios ----------------------------------------------------

# run.py's columns less wrk's, the paced CPU and the TLS rows'.
COLUMNS = [c for c in report.COLUMNS if c not in ("wrk req/s", "CPU µs/req paced", "TLS hs/1k req")]


def _row(res: TargetResult, shape: str, results: dict[str, TargetResult]) -> list[str]:
    r = res.shapes.get(shape, ShapeResult())
    lat = r.latency
    errors = sum(x.errors for x in (r.h2load, lat) if x is not None) + len(r.errors)
    lat_cols = [_num(getattr(lat, f"{p}_us") if lat else None) for p in ("p50", "p90", "p99")]
    return [
        res.name,
        shape,
        _num(r.h2load.rps if r.h2load else None),
        str(errors),
        *lat_cols,
        _num(added_p90(results, res.name, shape) if res.hops else None),
        _num(r.cpu_us_per_req, 1),
        _mib(res.rss_idle_kib),
        _mib(r.rss_busy_kib),
    ]


def _metric(results: dict[str, TargetResult], name: str, shape: str, what: str) -> float | None:
    res = results.get(name)
    r = res.shapes.get(shape) if res is not None and res.unavailable is None else None
    if r is None:
        return None
    if what == "rps":
        return r.h2load.rps if r.h2load else None
    if what == "added_p90":
        return added_p90(results, name, shape)
    return r.cpu_us_per_req


def ratios(results: dict[str, TargetResult], shapes: tuple[str, ...]) -> dict[str, Any]:
    """pilotfish over nginx per pair and shape: req/s, added p90, CPU µs/req."""
    out: dict[str, Any] = {}
    for pair, (ours, theirs) in PAIRS.items():
        for shape in shapes:
            row = {}
            for what in ("rps", "added_p90", "cpu_us_per_req"):
                a, b = (_metric(results, n, shape, what) for n in (ours, theirs))
                row[what] = round(a / b, 3) if a is not None and b else None
            out[f"{pair}/{shape}"] = row
    return out


def ratio_lines(rat: dict[str, Any]) -> str:
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    return "\n".join(
        f"{key:>28}: pilotfish/nginx req/s {fmt(r['rps'])}, added p90 {fmt(r['added_p90'])}, "
        f"CPU µs/req {fmt(r['cpu_us_per_req'])}"
        for key, r in rat.items()
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)}",
    )
    run_options(p, HERE / "h2_results.json")
    args = p.parse_args(argv)
    unknown = set(args.targets.split(",")) - set(TARGETS)
    if unknown:
        p.error(f"unknown targets: {', '.join(sorted(unknown))}")
    return args


def run(bench: Bench, settings: Settings, names: list[str]) -> dict[str, TargetResult]:
    h2c_port = start_backends(bench)
    # "direct" is measured whenever anything is: the added latency is relative to it.
    ordered = ["direct"] + [n for n in names if n != "direct"]
    start = partial(start_h2_target, h2c_port=h2c_port)
    return {name: measure_target(bench, name, settings, start, measure_h2) for name in ordered}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings, results = measure_all(args, TOOLS, run)
    doc = document(results, settings, versions())
    doc["settings"]["streams_per_connection"] = STREAMS
    doc["settings"]["latency_generator"] = f"h2load -m{STREAMS} --rps (10 connections), --log-file"
    doc["ratios"] = ratios(results, settings.shapes)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    print(
        f"{doc['date']}  {settings.seconds} s per run, {settings.connections} connections "
        f"x {STREAMS} streams, latency at {settings.rate} req/s"
    )
    print(table(results, settings, COLUMNS, _row))
    print()
    print(ratio_lines(doc["ratios"]))
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
