"""The latency part of run.py alone, repeated: the chain target's number.

    .venv/bin/python bench/proxy/latency.py [--targets nginx-chain,pilotfish-chain] [--reps 4]

Starts the backend and the targets once, then, per shape and repetition,
runs run.py's paced load (h2load at 1000 req/s, 10 connections) against the
backend alone and each target in turn, so that every target's +p90 has a
backend p90 from the same moment. Prints per repetition the +p90 and the
CPU µs per request over the paced run (the proxies' processes), and each
target's +p90 over the first target's with the median of the repetitions.
A single quick run of run.py moves the chain's ratio by a third; the median
of several interleaved ones is the steadier reading.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import paced  # noqa: E402
from procs import Supervisor, cpu_seconds  # noqa: E402
from shapes import SHAPES  # noqa: E402
from targets import Bench, Target, known_target, start_backend, start_target  # noqa: E402

RATE = 1000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--targets", default="nginx-chain,pilotfish-chain", help="the first is the reference"
    )
    p.add_argument("--reps", type=int, default=4, help="repetitions per shape (default 4)")
    p.add_argument("--seconds", type=int, default=3, help="seconds per paced run (default 3)")
    args = p.parse_args(argv)
    unknown = [n for n in args.targets.split(",") if not known_target(n) or n == "direct"]
    if unknown:
        p.error(f"unknown targets: {', '.join(unknown)}")
    return args


def measure(
    bench: Bench, target: Target, shape: str, seconds: int, workdir: Path
) -> tuple[float, float]:
    """p90 µs and CPU µs per request of one paced run through `target`."""
    pids = target.pids()
    spec = SHAPES[shape]
    before = cpu_seconds(pids)
    lat = paced(
        replace(spec, headers=spec.headers + target.headers), target.port, RATE, seconds, workdir
    )
    return lat.p90_us, (cpu_seconds(pids) - before) * 1e6 / max(1, lat.samples)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.targets.split(",")
    with tempfile.TemporaryDirectory(prefix="pilotfish-latency-") as tmp:
        Path(tmp).chmod(0o755)  # nginx workers drop to an unprivileged user
        bench = Bench(Supervisor(Path(tmp)), pool_size=32)
        try:
            why = start_backend(bench)
            if why is not None:
                raise SystemExit(f"the backend (nginx) did not start: {why}")
            targets = {name: start_target(bench, name) for name in ["direct", *names]}
            down = {n: t.unavailable for n, t in targets.items() if t.unavailable is not None}
            if down:
                raise SystemExit(f"not available: {down}")
            time.sleep(0.5)
            for shape in SHAPES:
                report(bench, targets, names, shape, args, Path(tmp))
        finally:
            bench.sup.stop_all()
    return 0


def report(
    bench: Bench, targets: dict[str, Target], names: list[str], shape: str,
    args: argparse.Namespace, workdir: Path,
) -> None:  # fmt: skip
    added: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.reps):
        backend, _ = measure(bench, targets["direct"], shape, args.seconds, workdir)
        cells = []
        for name in names:
            p90, cpu = measure(bench, targets[name], shape, args.seconds, workdir)
            added[name].append(p90 - backend)
            cells.append(f"{name} +p90 {p90 - backend:,.0f} µs, {cpu:.1f} CPU µs/req")
        print(f"{shape} {rep + 1}: " + "; ".join(cells), flush=True)
    ref = names[0]
    for name in names[1:]:
        ratios = [a / r for a, r in zip(added[name], added[ref], strict=True) if r > 0]
        if ratios:
            shown = ", ".join(f"{x:.2f}" for x in ratios)
            print(f"{shape}: {name}/{ref} +p90 = {statistics.median(ratios):.2f} median ({shown})")


if __name__ == "__main__":
    sys.exit(main())
