"""TCP throughput and connection rate: pilotfish's tcp_proxy beside HAProxy
`mode tcp`, in one run.

    bash bench/proxy/setup.sh          # haproxy (once)
    .venv/bin/python bench/proxy/tcp.py [--seconds 3]

Backends (this script, `--serve`): a sink that reads and discards (bulk
throughput: 4 connections sending 64 KiB writes) and a one-byte echo
(connection rate: 4 clients each connect, send a byte, read it back, close).
Servers share CPU 0, the load generator has CPU 1, as in run.py. Prints a
Markdown table and the ratios; writes bench/proxy/tcp_results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import Supervisor, free_port, listening, wait_until  # noqa: E402

HERE = Path(__file__).resolve().parent
CLIENTS, CHUNK = 4, 64 * 1024


def serve(sink_port: int, echo_port: int) -> None:
    """The backends, one thread per connection (the load is 4 at a time)."""

    def sink(conn: socket.socket) -> None:
        with conn:
            while conn.recv(1 << 20):
                pass

    def echo(conn: socket.socket) -> None:
        with conn:
            data = conn.recv(1)
            if data:
                conn.sendall(data)

    def accept(port: int, handle: object) -> None:
        server = socket.create_server(("127.0.0.1", port), backlog=1024)
        while True:
            conn, _ = server.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()  # type: ignore[arg-type]

    threading.Thread(target=accept, args=(sink_port, sink), daemon=True).start()
    accept(echo_port, echo)


def haproxy_cfg(listen: dict[int, int]) -> str:
    out = "global\n    nbthread 1\n    maxconn 4096\n"
    out += "defaults\n    mode tcp\n    option splice-auto\n"
    out += "    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n"
    for port, upstream in listen.items():
        out += f"listen l{port}\n    bind 127.0.0.1:{port}\n    server s 127.0.0.1:{upstream}\n"
    return out


def pilotfish_bootstrap(listen: dict[int, int], admin: int) -> str:
    tcp = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
    listeners, clusters = [], []
    for port, upstream in listen.items():
        proxy = {"@type": tcp, "stat_prefix": f"l{port}", "cluster": f"c{port}"}
        listeners.append({
            "name": f"l{port}",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                            "typed_config": proxy}]}],
        })  # fmt: skip
        endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}
        clusters.append({
            "name": f"c{port}", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": f"c{port}",
                                "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]},
        })  # fmt: skip
    return json.dumps({
        "node": {"id": "sidecar~127.0.0.1~bench.default~default.svc.cluster.local"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })  # fmt: skip


def throughput(port: int, seconds: float) -> float:
    """MB/s through `port` to the sink."""
    sent = [0] * CLIENTS
    block = b"x" * CHUNK
    stop = time.monotonic() + seconds

    def pump(i: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            while time.monotonic() < stop:
                s.sendall(block)
                sent[i] += CHUNK

    threads = [threading.Thread(target=pump, args=(i,)) for i in range(CLIENTS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(sent) / (time.monotonic() - started) / 1e6


def connection_rate(port: int, seconds: float) -> float:
    """Connections/s: connect, one byte there and back, close."""
    done = [0] * CLIENTS
    stop = time.monotonic() + seconds

    def churn(i: int) -> None:
        while time.monotonic() < stop:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"x")
                if s.recv(1) != b"x":
                    raise RuntimeError(f"port {port}: no echo")
            done[i] += 1

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(CLIENTS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--serve", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pilotfish-tcp-bench-") as tmp:
        sup = Supervisor(Path(tmp))
        try:
            results = run(sup, Path(tmp), args.seconds)
        finally:
            sup.stop_all()
    report(results, args.seconds)


def run(sup: Supervisor, tmp: Path, seconds: float) -> dict[str, dict[str, float]]:
    sink, echo = free_port(), free_port()
    sup.start("backends", [sys.executable, __file__, "--serve", str(sink), str(echo)])
    ports = {"haproxy": (free_port(), free_port()), "pilotfish": (free_port(), free_port())}
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(haproxy_cfg({ports["haproxy"][0]: sink, ports["haproxy"][1]: echo}))
    sup.start("haproxy", ["haproxy", "-db", "-f", str(cfg)])
    boot = tmp / "pilotfish.json"
    listen = {ports["pilotfish"][0]: sink, ports["pilotfish"][1]: echo}
    boot.write_text(pilotfish_bootstrap(listen, free_port()))
    sup.start("pilotfish", [sys.executable, "-m", "pilotfish", "proxy", "--bootstrap", str(boot)])
    every = [sink, echo, *ports["haproxy"], *ports["pilotfish"]]
    why = wait_until(lambda: all(listening(p) for p in every), 20)
    if why is not None:
        raise SystemExit(f"servers never listened: {why}")
    os.sched_setaffinity(0, {1})  # the load generator's CPU
    targets = {"direct": (sink, echo), **ports}
    return {
        name: {
            "throughput_mb_s": throughput(bulk, seconds),
            "connections_per_s": connection_rate(churn, seconds),
        }
        for name, (bulk, churn) in targets.items()
    }


def report(results: dict[str, dict[str, float]], seconds: float) -> None:
    print("| target | throughput MB/s | connections/s |")
    print("| --- | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['throughput_mb_s']:.0f} | {r['connections_per_s']:.0f} |")
    pf, ha = results["pilotfish"], results["haproxy"]
    bulk = pf["throughput_mb_s"] / ha["throughput_mb_s"]
    rate = pf["connections_per_s"] / ha["connections_per_s"]
    print(f"\npilotfish / HAProxy: throughput {bulk:.2f} x, connection rate {rate:.2f} x")
    out = {"seconds": seconds, "clients": CLIENTS, "chunk": CHUNK, "results": results}
    (HERE / "tcp_results.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
