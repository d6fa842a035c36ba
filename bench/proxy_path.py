"""Micro-benchmark of the proxy's whole data path in Python, without sockets.

One downstream connection and one pooled upstream connection with in-memory
transports: each iteration feeds a request to the downstream side, the
upstream side receives the forwarded request and is fed a response, which
reaches the downstream transport. Everything a request costs the proxy in
Python (parsing, routing, picking, headers, metrics) and nothing the kernel
does. Shapes as in bench/http1_parse.py.

    .venv/bin/python bench/proxy_path.py [--seconds 2] [--profile]
    .venv/bin/python bench/proxy_path.py --instructions   # needs valgrind, ~3 min
    .venv/bin/python bench/proxy_path.py --shapes tiny tiny+rbac10   # some rows only
    .venv/bin/python bench/proxy_path.py --instructions --interpreted  # both builds

`--interpreted` measures the installed build (compiled, when installed so)
and then the same rows on an interpreted copy of the package (bench/proxy/
builds.py), each table under the data path it ran.

`+rbac10` rows put in front of the router the RBAC filter the control plane
translates from one ALLOW AuthorizationPolicy of ten rules, the request
matching only the last (each rule a method and a path prefix). `+authz` rows
are the inbound side of bench/proxy's pilotfish-authz target: one
RequestAuthentication's jwt_authn filter, then that policy with its last
rule requiring a request principal; the request carries a valid ES256 token.
`+trace1` and `+trace100` rows trace the requests (W3C and B3 headers read
and written, a span per sampled request) at 1% and 100% sampling; their
spans go to a collector's queue that nothing drains here, so what the
exporter does off the request path (encoding, the POST) is not counted.

On a shared machine the timings move by a third from run to run;
`--instructions` counts the CPU instructions per request under valgrind's
callgrind instead (the same count on every run of the same code), by running
N requests and none in two child processes and dividing the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
import yaml

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "proxy")]

from builds import INTERPRETED, interpreted_env, interpreted_tree  # noqa: E402
from http1_parse import (  # noqa: E402
    REALISTIC_REQUEST,
    REALISTIC_RESPONSE,
    TINY_REQUEST,
    TINY_RESPONSE,
)
from policies import jwt_filter, ten_rule_allow_filter, token  # noqa: E402
from security import Security  # noqa: E402
from targets import pilotfish_bootstrap, tracing_config  # noqa: E402

from pilotfish.proxy import compiled  # noqa: E402
from pilotfish.proxy.bootstrap import parse_bootstrap  # noqa: E402
from pilotfish.proxy.config import ProxyConfig  # noqa: E402
from pilotfish.proxy.process import load_static, new_runtime  # noqa: E402
from pilotfish.proxy.server import Downstream  # noqa: E402
from pilotfish.proxy.upstream.pool import UpstreamConnection  # noqa: E402


class MemoryTransport(asyncio.Transport):
    """Keeps what is written; never pauses."""

    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.peer = peer
        self.written: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 15001)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        raise AssertionError("the benchmark's connections stay open")


def security(row: str) -> Security:
    """The HTTP filters a row puts before CORS (see the module's doc)."""
    if row.endswith("+rbac10"):
        return Security(http_filters=[ten_rule_allow_filter()])
    if row.endswith("+authz"):
        return Security(http_filters=[jwt_filter(), ten_rule_allow_filter(require_jwt=True)])
    return Security()


def exchange(row: str) -> tuple[bytes, bytes]:
    """The request and response bytes of a row; +authz requests carry a token."""
    request, response = SHAPES[row.partition("+")[0]]
    if row.endswith("+authz"):
        line, _, rest = request.partition(b"\r\n")
        request = line + b"\r\nAuthorization: Bearer " + token().encode() + b"\r\n" + rest
    return request, response


async def build(
    row: str,
) -> tuple[Downstream, UpstreamConnection, MemoryTransport, MemoryTransport]:
    percent = row.partition("+trace")[2]
    tracing = tracing_config(int(percent), 9) if percent else None
    bootstrap_text = pilotfish_bootstrap("bench", 15001, 0, 8080, security(row), tracing)
    config_dict = yaml.safe_load(bootstrap_text)
    bootstrap = parse_bootstrap(config_dict, "bench.yaml")
    config = ProxyConfig()
    load_static(bootstrap, config)
    runtime = new_runtime(bootstrap, config)
    listener = next(iter(config.snapshot.listeners.values()))
    cluster = config.snapshot.clusters.get("next_hop")
    assert cluster is not None
    host = cluster.hosts[0]
    upstream = UpstreamConnection(runtime.pool, host, cluster)
    up_transport = MemoryTransport(("127.0.0.1", 8080))
    upstream.connection_made(up_transport)
    cluster.breakers.try_acquire_connection()
    runtime.pool.release(upstream)
    down = Downstream(runtime, listener)
    down_transport = MemoryTransport(("127.0.0.1", 40000))
    down.connection_made(down_transport)
    return down, upstream, down_transport, up_transport


def one(down: Downstream, upstream: UpstreamConnection, request: bytes, response: bytes) -> None:
    down.data_received(request)
    upstream.data_received(response)


async def measure(shape: str, seconds: float, profile: bool) -> float:
    request, response = exchange(shape)
    down, upstream, down_t, up_t = await build(shape)
    one(down, upstream, request, response)
    assert down_t.written and b" 200 " in down_t.written[0], down_t.written
    profiler = cProfile.Profile() if profile else None
    count, start = 0, time.perf_counter()
    if profiler is not None:
        profiler.enable()
    while time.perf_counter() - start < seconds:
        for _ in range(1000):
            one(down, upstream, request, response)
        count += 1000
        down_t.written.clear()
        up_t.written.clear()
    elapsed = time.perf_counter() - start
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return elapsed / count * 1e6


SHAPES = {
    "tiny": (TINY_REQUEST, TINY_RESPONSE),
    "realistic": (REALISTIC_REQUEST, REALISTIC_RESPONSE),
}
COUNTED_REQUESTS = 2000


ROWS = (
    *SHAPES,
    *(f"{name}+{extra}" for extra in ("rbac10", "authz", "trace1", "trace100") for name in SHAPES),
)


async def run_requests(shape: str, count: int) -> None:
    request, response = exchange(shape)
    down, upstream, _, _ = await build(shape)
    for _ in range(count):
        one(down, upstream, request, response)


def instructions(shape: str) -> int:
    """Instructions per request, counted by callgrind: (N requests - none) / N."""

    def counted(count: int) -> int:
        argv = [sys.executable, __file__, "--run", shape, str(count)]
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        found = re.search(r"Collected : (\d+)", out)
        assert found is not None, out
        return int(found.group(1))

    return (counted(COUNTED_REQUESTS) - counted(0)) // COUNTED_REQUESTS


def interpreted(argv: list[str]) -> int:
    """This command again, without --interpreted, on an interpreted copy of the package."""
    with tempfile.TemporaryDirectory(prefix="pilotfish-path-") as tmp:
        env = interpreted_env(interpreted_tree(Path(tmp)))
        args = [a for a in argv if a != "--interpreted"]
        command = [sys.executable, __file__, *args, "--expect", INTERPRETED]
        sys.stdout.flush()  # this build's table first
        return subprocess.run(command, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--instructions", action="store_true")
    p.add_argument("--shapes", nargs="+", choices=ROWS, default=ROWS, metavar="SHAPE")
    p.add_argument(
        "--interpreted", action="store_true", help="then the same on an interpreted copy"
    )
    p.add_argument("--run", nargs=2, metavar=("SHAPE", "N"), help=argparse.SUPPRESS)
    p.add_argument("--expect", help=argparse.SUPPRESS)  # the build the parent meant to run
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.run:
        uvloop.run(run_requests(args.run[0], int(args.run[1])))
        return 0
    data_path = compiled.describe()
    if args.expect is not None and data_path.split()[0] != args.expect:
        print(f"error: the data path is {data_path}, not {args.expect}", file=sys.stderr)
        return 1
    print(f"data path: {data_path}")
    status = table(args)
    return interpreted(argv) if args.interpreted and status == 0 else status


def table(args: argparse.Namespace) -> int:
    if args.instructions:
        print(f"{'shape':<20}{'instructions per request':>26}")
        for name in args.shapes:
            print(f"{name:<20}{instructions(name):>26,}")
        return 0
    print(f"{'shape':<20}{'µs per request':>16}{'requests/s':>14}")
    for name in args.shapes:
        micros = uvloop.run(measure(name, args.seconds, args.profile))
        print(f"{name:<20}{micros:>16.1f}{1e6 / micros:>14,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
