"""Idle memory of one sidecar: VmRSS of `pilotfish proxy` started from the
benchmark's bootstrap (one listener with the sidecar's HTTP filters, one
static cluster; no ADS, TLS, JWT or --register), once it is ready and has
settled. Needs nothing but the venv (no load generator).

    .venv/bin/python bench/proxy/idle.py [--runs 3] [--importtime]

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
import time
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ beside the harness
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import free_port, get, rss_kib, wait_until  # noqa: E402
from targets import PILOTFISH, pilotfish_bootstrap  # noqa: E402

SETTLE_S = 1.0  # after /ready: the first admin answers and GC have run


def idle_rss_kib(directory: Path, importtime: bool) -> tuple[int, str]:
    """One sidecar's VmRSS when idle, and its stderr (the import times)."""
    port, admin = free_port(), free_port()
    path = directory / "idle.bootstrap.yaml"
    path.write_text(pilotfish_bootstrap("idle", port, admin, free_port()))
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
        return rss_kib([proc.pid]), log.read_text()
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--importtime", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [idle_rss_kib(Path(tmp), args.importtime) for _ in range(args.runs)]
    rss = [kib for kib, _ in results]
    print(f"pilotfish proxy idle VmRSS: median {statistics.median(rss) / 1024:.1f} MiB", end="")
    print(f" (runs: {', '.join(f'{kib / 1024:.1f}' for kib in rss)} MiB)")
    if args.importtime:
        print("\n".join(slowest_imports(results[-1][1], 25)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
