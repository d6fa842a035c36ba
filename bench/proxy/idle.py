"""Idle memory of one sidecar: VmRSS of `pilotfish proxy` started from the
benchmark's bootstrap (one listener with the sidecar's HTTP filters, one
static cluster; no ADS, TLS, JWT or --register), once it is ready and has
settled; then again after a few requests of both shapes (`--requests`, to a
backend in this process), as run.py reads it after its check requests: what
the first exchanges import and keep. Needs nothing but the venv (no load
generator).

    .venv/bin/python bench/proxy/idle.py [--runs 3] [--requests 4] [--importtime]

--importtime also prints the imports that took longest (`python -X
importtime`, cumulative), the first place to look for what a sidecar loads
and need not.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ beside the harness
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import free_port, get, rss_kib, wait_until  # noqa: E402
from shapes import REALISTIC_EXTRA_HEADERS, SHAPES  # noqa: E402
from targets import PILOTFISH, pilotfish_bootstrap  # noqa: E402

SETTLE_S = 1.0  # after /ready: the first admin answers and GC have run


class Backend(BaseHTTPRequestHandler):
    """Answers each shape's path with its body (the realistic one with its
    11 headers), over keep-alive connections, as the benchmark's nginx does."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # http.server's name
        shape = next((s for s in SHAPES.values() if s.path == self.path), SHAPES["tiny"])
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(shape.body)))
        if shape.name == "realistic":
            for name, value in REALISTIC_EXTRA_HEADERS:
                self.send_header(name, value.replace("$http_x_request_id", "echo"))
        self.end_headers()
        self.wfile.write(shape.body)

    def log_message(self, *args: object) -> None:
        pass


def send_requests(port: int, count: int) -> None:
    """`count` requests of each shape through the sidecar, each answered right."""
    for shape in SHAPES.values():
        for _ in range(count):
            got = get(port, shape.path, headers=dict(shape.headers))
            if got.status != 200 or got.body != shape.body:
                raise SystemExit(f"GET {shape.path}: {got.status}, {len(got.body)} body bytes")


def idle_rss_kib(
    directory: Path, importtime: bool, backend: int, requests: int
) -> tuple[int, int, str]:
    """One sidecar's VmRSS when idle, again after `requests` of each shape,
    and its stderr (the import times)."""
    port, admin = free_port(), free_port()
    path = directory / "idle.bootstrap.yaml"
    path.write_text(pilotfish_bootstrap("idle", port, admin, backend))
    argv = [*PILOTFISH, str(path)]
    if importtime:
        argv[1:1] = ["-X", "importtime"]
    log = directory / "idle.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    try:
        why = wait_until(lambda: get(admin, "/ready").status == 200, 30)
        if why is not None:
            raise SystemExit(f"the sidecar did not start: {why}\n{log.read_text()[-2000:]}")
        time.sleep(SETTLE_S)
        idle = rss_kib([proc.pid])
        send_requests(port, requests)
        time.sleep(SETTLE_S)
        return idle, rss_kib([proc.pid]), log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)


def slowest_imports(stderr: str, count: int) -> list[str]:
    rows = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            _, cumulative, name = line.split("|")
            rows.append((int(cumulative), name.rstrip()))
    return [f"{us / 1000:8.1f} ms {name}" for us, name in sorted(rows, reverse=True)[:count]]


def _mib(runs: list[int]) -> str:
    median = statistics.median(runs)
    return f"median {median / 1024:.1f} MiB = {median * 1024 / 1e6:.1f} MB (runs: " + ", ".join(
        f"{kib / 1024:.1f}" for kib in runs
    ) + " MiB)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=4, help="of each shape, after idle")
    parser.add_argument("--importtime", action="store_true")
    args = parser.parse_args()
    backend = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = [
                idle_rss_kib(Path(tmp), args.importtime, backend.server_port, args.requests)
                for _ in range(args.runs)
            ]
    finally:
        backend.shutdown()
    print(f"pilotfish proxy idle VmRSS: {_mib([idle for idle, _, _ in results])}")
    after = _mib([after for _, after, _ in results])
    print(f"after {args.requests} requests of each shape: {after}")
    if args.importtime:
        print("\n".join(slowest_imports(results[-1][2], 25)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
