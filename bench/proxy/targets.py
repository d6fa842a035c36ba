"""What is measured: the backend, and the proxies in front of it.

Each target is started from a config written here into the run's temp dir,
listens on a free 127.0.0.1 port, and is pinned to the server CPU.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from builds import COMPILED, INTERPRETED, build_mismatch, interpreted_env, interpreted_tree
from policies import jwt_filter, ten_rule_allow_filter, token
from procs import Started, Supervisor, free_port, get, listening, process_tree, wait_until
from security import (
    MeshCerts,
    NginxHandshakes,
    PilotfishHandshakes,
    Security,
    inbound_tls,
    mesh_certs,
    nginx_inbound_server,
    nginx_outbound_location,
    nginx_status_server,
    outbound_tls,
)
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
    handshakes: Callable[[], int] | None = None  # TLS handshakes so far, for the TLS rows
    headers: tuple[tuple[str, str], ...] = ()  # added to every request (a JWT)

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
    certs: MeshCerts | None = None
    collector_port: int = 0  # the OTLP sink of the tracing rows, once started
    interpreted: Path | None = None  # PYTHONPATH of the interpreted copy, once made

    @property
    def dir(self) -> Path:
        return self.sup.workdir

    def mesh_certs(self) -> MeshCerts:
        """The run's mesh CA and workload certificates, made on first use."""
        if self.certs is None:
            self.certs = mesh_certs(self.dir)
        return self.certs

    def interpreted_env(self) -> dict[str, str]:
        """The environment of an interpreted sidecar: the run's copy of the
        package without its compiled modules (made on first use) first on PYTHONPATH."""
        if self.interpreted is None:
            self.interpreted = interpreted_tree(self.dir)
        return interpreted_env(self.interpreted)


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


def _backend_block(port: int, *, h2c: bool = False) -> str:
    """The fixed answers of both shapes; with `h2c`, over HTTP/2 with prior knowledge."""
    extra = "\n".join(f'            add_header {k} "{v}";' for k, v in REALISTIC_EXTRA_HEADERS)
    h2 = " http2" if h2c else ""
    return f"""\
    server {{
        listen 127.0.0.1:{port}{h2} backlog=4096;
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


def _proxy_block(
    port: int,
    upstream_port: int,
    pool: int,
    *,
    server_tls: str = "",
    location_tls: str = "",
    extra_servers: str = "",
    h2c_listen: bool = False,
    h2c_upstream: bool = False,
) -> str:
    """A reverse proxy with a keepalive pool to the next hop; with
    `server_tls` its listener does TLS, with `location_tls` its upstream;
    `h2c_listen` takes HTTP/2 with prior knowledge from clients,
    `h2c_upstream` speaks it to the next hop (grpc_pass: nginx's only
    HTTP/2 upstream, which relays any HTTP/2 request, not only gRPC)."""
    ssl = " ssl" if server_tls else ""
    ssl += " http2" if h2c_listen else ""
    scheme = "https" if location_tls else "http"
    forward = (
        "grpc_pass grpc://next_hop;"
        if h2c_upstream
        else f'proxy_pass {scheme}://next_hop;\n            proxy_http_version 1.1;\n'
        '            proxy_set_header Connection "";'
    )
    return f"""\
    upstream next_hop {{
        server 127.0.0.1:{upstream_port};
        keepalive {pool};
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl} backlog=4096;
{server_tls}
        location / {{
            {forward}
{location_tls}
        }}
    }}
{extra_servers}"""


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


def _nginx_mtls_hop(bench: Bench, name: str, upstream_port: int) -> HopStart:
    """The inbound hop serves TLS and counts its handshakes; the outbound one
    does TLS with a client certificate to it."""
    pool, certs = bench.pool_size, bench.mesh_certs()
    if name.endswith("-inbound"):
        status = free_port()
        tls = {
            "server_tls": nginx_inbound_server(certs),
            "extra_servers": nginx_status_server(status),
        }
        proc, port = _start_nginx(
            bench, name, lambda p: _proxy_block(p, upstream_port, pool, **tls)
        )
        return HopStart(proc, port, lambda: listening(port), NginxHandshakes(status))
    location = nginx_outbound_location(certs)
    proc, port = _start_nginx(
        bench, name, lambda p: _proxy_block(p, upstream_port, pool, location_tls=location)
    )
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


HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
HTTP_FILTERS = "type.googleapis.com/envoy.extensions.filters.http"


def pilotfish_bootstrap(
    name: str,
    port: int,
    admin_port: int,
    upstream_port: int,
    security: Security | None = None,
    tracing: dict[str, Any] | None = None,
    upstream_h2: bool = False,
) -> str:
    """The Envoy v3 bootstrap the harness gives `pilotfish proxy`: one listener
    routing / to one STATIC cluster, with a sidecar's HTTP filters (CORS and
    fault, idle unless a route configures them, then the router); routing and
    metrics on, access log off. `security` adds what a mesh sidecar's inbound
    or outbound side carries: TLS on the listener or the cluster, and HTTP
    filters before CORS (jwt_authn, RBAC); `tracing`, the connection
    manager's tracing; `upstream_h2`, HTTP/2 to the cluster (h2c)."""
    security = security or Security()
    filters = [
        *security.http_filters,
        {
            "name": "envoy.filters.http.cors",
            "typed_config": {"@type": f"{HTTP_FILTERS}.cors.v3.Cors"},
        },
        {
            "name": "envoy.filters.http.fault",
            "typed_config": {"@type": f"{HTTP_FILTERS}.fault.v3.HTTPFault"},
        },
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": f"{HTTP_FILTERS}.router.v3.Router"},
        },
    ]
    hcm: dict[str, Any] = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": f"{HCM}.HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {
                "name": name,
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "next_hop"}}],
                    }
                ],
            },
            "http_filters": filters,
        },
    }
    if tracing is not None:
        hcm["typed_config"]["tracing"] = tracing
    chain: dict[str, Any] = {"filters": [hcm]}
    if security.listener_tls is not None:
        chain["filter_chain_match"] = {"transport_protocol": "tls"}
        chain["transport_socket"] = security.listener_tls
    cluster: dict[str, Any] = {
        "name": "next_hop",
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": "next_hop",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(upstream_port)}}]}],
        },
    }
    if security.cluster_tls is not None:
        cluster["transport_socket"] = security.cluster_tls
    if upstream_h2:
        cluster["typed_extension_protocol_options"] = {HTTP_OPTIONS: _explicit_h2()}
    config = {
        "node": {
            "id": f"sidecar~127.0.0.1~{name}.bench~bench.svc.cluster.local",
            "cluster": f"{name}.bench",
            "metadata": {
                "NAME": name,
                "NAMESPACE": "bench",
                "WORKLOAD_NAME": name,
                "LABELS": {"app": name, "version": "v1"},
            },
        },
        "admin": {"address": _address(admin_port)},
        "static_resources": {
            "listeners": [{"name": name, "address": _address(port), "filter_chains": [chain]}],
            "clusters": [cluster],
        },
    }
    return json.dumps(config, indent=2)  # as the node agent writes it (agent/instance.py)


HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _explicit_h2() -> dict[str, Any]:
    return {
        "@type": f"type.googleapis.com/{HTTP_OPTIONS}",
        "explicit_http_config": {"http2_protocol_options": {}},
    }


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def tracing_config(percent: int, collector_port: int) -> dict[str, Any]:
    """The connection manager's tracing: `percent` sampled, spans to the sink."""
    uri = f"http://127.0.0.1:{collector_port}/v1/traces"
    return {
        "random_sampling": {"value": percent},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "http_service": {"http_uri": {"uri": uri, "cluster": "otel", "timeout": "1s"}},
            },
        },
    }


def _collector(bench: Bench) -> int:
    """The run's OTLP sink (started once, not measured: a collector's work is not the proxy's)."""
    if bench.collector_port == 0:
        port = free_port()
        proc = bench.sup.start("otlp-sink", [*OTLP_SINK, str(port)])
        wait_until(lambda: listening(port), START_TIMEOUT_S, proc)
        bench.collector_port = port
    return bench.collector_port


def _pilotfish_hop(
    bench: Bench,
    name: str,
    upstream_port: int,
    security: Security | None = None,
    upstream_h2: bool = False,
) -> HopStart:
    port, admin_port = free_port(), free_port()
    path = bench.dir / f"{name}.bootstrap.yaml"
    percent = name.partition("-trace")[2].partition("-")[0]  # pilotfish-traceN: N% sampled
    tracing = tracing_config(int(percent), _collector(bench)) if percent else None
    bootstrap = pilotfish_bootstrap(
        name, port, admin_port, upstream_port, security, tracing, upstream_h2
    )
    path.write_text(bootstrap)
    interpreted = "-interpreted" in name  # pilotfish-interpreted: the same proxy, uncompiled
    env = {**(bench.interpreted_env() if interpreted else os.environ), "PYTHONUNBUFFERED": "1"}
    proc = bench.sup.start(name, [*PILOTFISH, str(path)], env=env)
    build = INTERPRETED if interpreted else COMPILED
    return HopStart(
        proc,
        port,
        lambda: get(admin_port, "/ready").status == 200,
        admin=admin_port,
        check=partial(build_mismatch, admin_port, build),
    )


def _pilotfish_mtls_hop(bench: Bench, name: str, upstream_port: int) -> HopStart:
    """A sidecar's inbound side (TLS listener, client certificate required)
    or outbound side (a cluster doing mutual TLS), as translation writes them."""
    certs = bench.mesh_certs()
    if name.endswith("-inbound"):
        hop = _pilotfish_hop(bench, name, upstream_port, Security(listener_tls=inbound_tls(certs)))
        return replace(hop, handshakes=PilotfishHandshakes(hop.admin))
    return _pilotfish_hop(bench, name, upstream_port, Security(cluster_tls=outbound_tls(certs)))


def _pilotfish_authz_hop(bench: Bench, name: str, upstream_port: int) -> HopStart:
    """An inbound side with one RequestAuthentication and one ALLOW policy of
    ten rules whose matching one requires a JWT; the load carries a valid one."""
    filters = [jwt_filter(), ten_rule_allow_filter(require_jwt=True)]
    hop = _pilotfish_hop(bench, name, upstream_port, Security(http_filters=filters))
    return replace(hop, headers=(("authorization", f"Bearer {token()}"),))


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
    """A proxy just started: its process, its listener, how to tell it is ready;
    for the TLS rows, how many handshakes its listener made so far; the
    request headers it needs (a JWT)."""

    proc: Started
    port: int
    ready: Callable[[], bool]
    handshakes: Callable[[], int] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    admin: int = 0  # pilotfish's admin port
    check: Callable[[], str | None] | None = None  # once ready: None, or why it is not the one


Hop = Callable[[Bench, str, int], HopStart]


def _chain(bench: Bench, target: Target, hop: Hop, base: str) -> Target:
    """Starts target.hops proxies, the first one (inbound) in front of the backend."""
    upstream = bench.backend_port
    names = [f"{base}-inbound", f"{base}-outbound"] if target.hops == 2 else [base]
    for name in names:
        started = hop(bench, name, upstream)
        target.owned.append(started.proc)
        why = wait_until(started.ready, START_TIMEOUT_S, started.proc)
        if why is None and started.check is not None:
            why = started.check()
        if why is not None:
            target.unavailable = f"{name}: {why}"
            return target
        target.measured.append(started.proc)
        target.handshakes = target.handshakes or started.handshakes
        target.headers += started.headers
        upstream = started.port
    target.port = upstream
    return target


HOPS: dict[str, Hop] = {
    "nginx": _nginx_hop,
    "haproxy": _haproxy_hop,
    "pilotfish": _pilotfish_hop,
    "pilotfish-interpreted": _pilotfish_hop,
    "pilotfish-trace1": _pilotfish_hop,
    "pilotfish-trace100": _pilotfish_hop,
    "relay": _relay_hop,
    "httptools": _httptools_hop,
    "nginx-mtls": _nginx_mtls_hop,
    "pilotfish-mtls": _pilotfish_mtls_hop,
    "pilotfish-authz": _pilotfish_authz_hop,
}
TARGETS = [
    "direct",
    "nginx",
    "haproxy",
    "relay",
    "httptools",
    "pilotfish",
    "pilotfish-interpreted",
    "pilotfish-trace1",
    "pilotfish-trace100",
    "nginx-chain",
    "httptools-chain",
    "pilotfish-chain",
    "pilotfish-interpreted-chain",
    "pilotfish-authz",
    "nginx-mtls-chain",
    "pilotfish-mtls-chain",
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
        check = partial(_answers, target.port, shape, dict(target.headers))
        why = wait_until(check, 5, target.measured[-1])
        if why is not None:
            return f"GET {shape.path} through {target.name}: {why}"
    return None


def _answers(port: int, shape: Shape, headers: dict[str, str]) -> bool:
    got = get(port, shape.path, headers=headers)
    if got.status != 200 or got.body != shape.body:
        raise ValueError(
            f"got {got.status} with {len(got.body)} body bytes, wanted 200 with {len(shape.body)}"
        )
    return True
