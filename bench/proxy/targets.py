"""What is measured: the backend, and the proxies in front of it.

Each target is started from a config written here into the run's temp dir,
listens on a free 127.0.0.1 port, and is pinned to the server CPU.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from procs import Started, Supervisor, free_port, get, listening, process_tree, wait_until
from shapes import REALISTIC_BODY, REALISTIC_EXTRA_HEADERS, SHAPES, TINY_BODY, Shape

NGINX = "nginx"
HAPROXY = "haproxy"
PILOTFISH = [sys.executable, "-m", "pilotfish", "proxy", "--bootstrap"]
RELAY = [sys.executable, str(Path(__file__).resolve().parent / "relay.py")]
HTTPTOOLS = [sys.executable, str(Path(__file__).resolve().parent / "httptools_proxy.py")]
OTLP_SINK = [sys.executable, str(Path(__file__).resolve().parent / "otlp_sink.py")]
START_TIMEOUT_S = 20.0


@dataclass
class Target:
    """One row group of the table: where the load goes and whose CPU/RSS counts."""

    name: str
    hops: int
    port: int = 0
    measured: list[Started] = field(default_factory=list)  # proxies (the backend for direct)
    owned: list[Started] = field(default_factory=list)  # stopped when the target is done
    unavailable: str | None = None

    def pids(self) -> list[int]:
        return [pid for proc in self.measured for pid in process_tree(proc.pid)]

    def __repr__(self) -> str:
        state = self.unavailable or f"port {self.port}"
        return f"Target({self.name!r}, hops={self.hops}, {state})"


@dataclass
class Bench:
    """The shared state of one run: temp dir, processes, the backend."""

    sup: Supervisor
    pool_size: int
    backend: Started | None = None
    backend_port: int = 0
    collector_port: int = 0  # the OTLP sink of the tracing rows, once started

    @property
    def dir(self) -> Path:
        return self.sup.workdir


# --- nginx ----------------------------------------------------------------


def _nginx_main(bench: Bench, name: str, http_block: str) -> str:
    prefix = bench.dir / name
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    temp_paths = "\n".join(
        f"    {sub}_temp_path {prefix / sub};"
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
{temp_paths}
{http_block}
}}
"""


def _backend_block(port: int) -> str:
    extra = "\n".join(f'            add_header {k} "{v}";' for k, v in REALISTIC_EXTRA_HEADERS)
    return f"""\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = {SHAPES["tiny"].path} {{
            default_type text/plain;
            return 200 '{TINY_BODY.decode()}';
        }}
        location = {SHAPES["realistic"].path} {{
            default_type application/json;
{extra}
            return 200 '{REALISTIC_BODY.decode()}';
        }}
    }}"""


def _proxy_block(port: int, upstream_port: int, pool: int) -> str:
    return f"""\
    upstream next_hop {{
        server 127.0.0.1:{upstream_port};
        keepalive {pool};
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://next_hop;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


def _start_nginx(bench: Bench, name: str, block: Callable[[int], str]) -> tuple[Started, int]:
    port = free_port()
    conf = bench.dir / f"{name}.nginx.conf"
    conf.write_text(_nginx_main(bench, name, block(port)))
    proc = bench.sup.start(name, [NGINX, "-e", "stderr", "-p", str(bench.dir), "-c", str(conf)])
    return proc, port


def start_backend(bench: Bench) -> str | None:
    proc, port = _start_nginx(bench, "backend", _backend_block)
    bench.backend, bench.backend_port = proc, port
    return wait_until(lambda: get(port, SHAPES["tiny"].path).body == TINY_BODY, 10, proc)


def _nginx_hop(bench: Bench, name: str, upstream_port: int) -> HopStart:
    pool = bench.pool_size
    proc, port = _start_nginx(bench, name, lambda p: _proxy_block(p, upstream_port, pool))
    return HopStart(proc, port, lambda: listening(port))


# --- HAProxy ----------------------------------------------------------------


def _haproxy_cfg(port: int, upstream_port: int, pool: int) -> str:
    return f"""\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
frontend bench
    bind 127.0.0.1:{port}
    default_backend next_hop
backend next_hop
    server s1 127.0.0.1:{upstream_port} pool-max-conn {pool}
"""


def _haproxy_hop(bench: Bench, name: str, upstream_port: int) -> HopStart:
    port = free_port()
    cfg = bench.dir / f"{name}.haproxy.cfg"
    cfg.write_text(_haproxy_cfg(port, upstream_port, bench.pool_size))
    proc = bench.sup.start(name, [HAPROXY, "-db", "-f", str(cfg)])
    return HopStart(proc, port, lambda: listening(port))


# --- pilotfish ----------------------------------------------------------------


def pilotfish_bootstrap(
    name: str, port: int, admin_port: int, upstream_port: int, tracing: str = ""
) -> str:
    """The Envoy v3 bootstrap the harness gives `pilotfish proxy`: one listener
    routing / to one STATIC cluster, with a sidecar's HTTP filters (CORS and
    fault, idle unless a route configures them, then the router); routing and
    metrics on, access log off; `tracing`: the connection manager's, as YAML."""
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    filters = "type.googleapis.com/envoy.extensions.filters.http"
    return f"""\
node:
  id: sidecar~127.0.0.1~{name}.bench~bench.svc.cluster.local
  cluster: {name}.bench
  metadata:
    NAME: {name}
    NAMESPACE: bench
    WORKLOAD_NAME: {name}
    LABELS: {{app: {name}, version: v1}}
admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}
static_resources:
  listeners:
  - name: {name}
    address:
      socket_address: {{address: 127.0.0.1, port_value: {port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}.HttpConnectionManager
          stat_prefix: {name}{tracing}
          route_config:
            name: {name}
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: next_hop}}
          http_filters:
          - name: envoy.filters.http.cors
            typed_config:
              "@type": {filters}.cors.v3.Cors
          - name: envoy.filters.http.fault
            typed_config:
              "@type": {filters}.fault.v3.HTTPFault
          - name: envoy.filters.http.router
            typed_config:
              "@type": {filters}.router.v3.Router
  clusters:
  - name: next_hop
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: next_hop
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}
"""


def tracing_yaml(percent: int, collector_port: int) -> str:
    """The connection manager's tracing: `percent` sampled, spans to the sink."""
    otel = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
    uri = f"http://127.0.0.1:{collector_port}/v1/traces"
    return f"""
          tracing:
            random_sampling: {{value: {percent}}}
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": {otel}
                http_service: {{http_uri: {{uri: "{uri}", cluster: otel, timeout: 1s}}}}"""


def _collector(bench: Bench) -> int:
    """The run's OTLP sink (started once, not measured: a collector's work is not the proxy's)."""
    if bench.collector_port == 0:
        port = free_port()
        proc = bench.sup.start("otlp-sink", [*OTLP_SINK, str(port)])
        wait_until(lambda: listening(port), START_TIMEOUT_S, proc)
        bench.collector_port = port
    return bench.collector_port


def _pilotfish_hop(bench: Bench, name: str, upstream_port: int) -> HopStart:
    port, admin_port = free_port(), free_port()
    path = bench.dir / f"{name}.bootstrap.yaml"
    percent = name.partition("-trace")[2].partition("-")[0]  # pilotfish-traceN: N% sampled
    tracing = tracing_yaml(int(percent), _collector(bench)) if percent else ""
    path.write_text(pilotfish_bootstrap(name, port, admin_port, upstream_port, tracing))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = bench.sup.start(name, [*PILOTFISH, str(path)], env=env)
    return HopStart(proc, port, lambda: get(admin_port, "/ready").status == 200)


# --- the Python references (relay.py, httptools_proxy.py) -----------------------


def _relay_hop(bench: Bench, name: str, upstream_port: int) -> HopStart:
    port = free_port()
    work = name.partition("+")[2].partition("-")[0] or "0"  # relay+N, relay+N-inbound
    proc = bench.sup.start(name, [*RELAY, str(port), str(upstream_port), "--work-us", work])
    return HopStart(proc, port, lambda: listening(port))


def _httptools_hop(bench: Bench, name: str, upstream_port: int) -> HopStart:
    port = free_port()
    proc = bench.sup.start(name, [*HTTPTOOLS, str(port), str(upstream_port)])
    return HopStart(proc, port, lambda: listening(port))


# --- targets ----------------------------------------------------------------


@dataclass(frozen=True)
class HopStart:
    """A proxy just started: its process, its listener, how to tell it is ready."""

    proc: Started
    port: int
    ready: Callable[[], bool]


Hop = Callable[[Bench, str, int], HopStart]


def _chain(bench: Bench, target: Target, hop: Hop, base: str) -> Target:
    """Starts target.hops proxies, the first one (inbound) in front of the backend."""
    upstream = bench.backend_port
    names = [f"{base}-inbound", f"{base}-outbound"] if target.hops == 2 else [base]
    for name in names:
        started = hop(bench, name, upstream)
        target.owned.append(started.proc)
        why = wait_until(started.ready, START_TIMEOUT_S, started.proc)
        if why is not None:
            target.unavailable = f"{name}: {why}"
            return target
        target.measured.append(started.proc)
        upstream = started.port
    target.port = upstream
    return target


HOPS: dict[str, Hop] = {
    "nginx": _nginx_hop,
    "haproxy": _haproxy_hop,
    "pilotfish": _pilotfish_hop,
    "pilotfish-trace1": _pilotfish_hop,
    "pilotfish-trace100": _pilotfish_hop,
    "relay": _relay_hop,
    "httptools": _httptools_hop,
}
TARGETS = [
    "direct",
    "nginx",
    "haproxy",
    "relay",
    "httptools",
    "pilotfish",
    "pilotfish-trace1",
    "pilotfish-trace100",
    "nginx-chain",
    "httptools-chain",
    "pilotfish-chain",
]


def known_target(name: str) -> bool:
    """One of TARGETS, or relay+N: the relay with N µs of work per request."""
    base, plus, work = name.partition("+")
    return name in TARGETS or (base == "relay" and bool(plus) and work.isdigit())


def start_target(bench: Bench, name: str) -> Target:
    """Starts the proxies of one target and checks both shapes answer through them."""
    assert bench.backend is not None
    if name == "direct":
        return Target(name, 0, bench.backend_port, measured=[bench.backend])
    base = name.removesuffix("-chain")
    hop = HOPS[base.partition("+")[0]]
    target = _chain(bench, Target(name, 2 if name.endswith("-chain") else 1), hop, base)
    if target.unavailable is None:
        target.unavailable = check_answers(target)
    return target


def check_answers(target: Target) -> str | None:
    """None if both shapes come back right through the target, else what is wrong."""
    for shape in SHAPES.values():
        why = wait_until(partial(_answers, target.port, shape), 5, target.measured[-1])
        if why is not None:
            return f"GET {shape.path} through {target.name}: {why}"
    return None


def _answers(port: int, shape: Shape) -> bool:
    got = get(port, shape.path)
    if got.status != 200 or got.body != shape.body:
        raise ValueError(
            f"got {got.status} with {len(got.body)} body bytes, wanted 200 with {len(shape.body)}"
        )
    return True
