"""`pilotfish proxy --bootstrap FILE`: the sidecar process.

Loads the bootstrap, serves its static resources, follows the ADS server it
names, runs the admin listener, and binds one socket per active listener,
reconciled on every config change. SIGTERM, SIGINT and POST /quitquitquit
drain: stop accepting, let in-flight requests finish (bounded), exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Protocol

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.config.cluster.v3.cluster_pb2 import Cluster as ClusterProto

from pilotfish.ca.identity import IdentityError, SpiffeId
from pilotfish.proxy import admin
from pilotfish.proxy.accept import SniffingServer
from pilotfish.proxy.bootstrap import load_bootstrap
from pilotfish.proxy.config import ProxyConfig, Snapshot
from pilotfish.proxy.listeners import CompiledListener
from pilotfish.proxy.sds_secrets import SecretSet
from pilotfish.proxy.server import Downstream, Runtime
from pilotfish.proxy.stats import State, StatsRegistry, listener_stat_name, prometheus_page
from pilotfish.proxy.tap import Tap
from pilotfish.proxy.tcp.listener import TcpListener
from pilotfish.proxy.telemetry import (
    TRUST_DOMAIN,
    Telemetry,
    WorkloadInfo,
    metadata_text,
    peer_metadata_headers,
)
from pilotfish.proxy.tls import SecretSource, TlsContexts
from pilotfish.proxy.tracing.tracer import Tracer
from pilotfish.proxy.upstream import render_clusters
from pilotfish.proxy.upstream.pool import Pool

if TYPE_CHECKING:  # imported where used: gRPC, the client library and cryptography
    # cost a sidecar ~25 MiB, and one with a static bootstrap uses none of them
    from pathlib import Path  # a --ca-token-file's (cli/sidecar.py)

    from pilotfish.proxy.register import Registrar
    from pilotfish.proxy.sds import WorkloadCertificates
    from pilotfish.proxy.tap_stream import TapStream
    from pilotfish.proxy.tracing.exporter import Authorization
    from pilotfish.proxy.xds_channel import ControlPlaneChannel
    from pilotfish.proxy.xds_client import AdsClient

log = logging.getLogger("pilotfish.proxy")
DRAIN_TIMEOUT_S = 5.0
BIND_RETRY_S = 1.0
RegisterWith = Callable[[Bootstrap], "Registrar"]


class Server(Protocol):
    def close(self) -> None: ...


Placement = tuple[str, int, bool]  # host, port, and whether the first bytes choose TLS
AnyListener = CompiledListener | TcpListener


def tcp_relay(runtime: Runtime, listener: TcpListener) -> asyncio.Protocol:
    """A TCP listener's connection. The relay is imported with the first one:
    an HTTP-only sidecar never loads it (docs/benchmarks.md, "Idle memory")."""
    from pilotfish.proxy.tcp.relay import TcpRelay

    return TcpRelay(runtime, listener)


def detecting(runtime: Runtime, listener: CompiledListener) -> asyncio.Protocol:
    """A sniffed listener's connection, HTTP or TCP by its first bytes; the
    detection shell and the TCP relay it may hand over to load with the first."""
    from pilotfish.proxy.detecting import Detecting

    return Detecting(runtime, listener)


def _placement(listener: AnyListener) -> Placement:
    return listener.host, listener.port, listener.has_tls


@dataclass
class Listeners:
    """Bound sockets by listener name; new connections use the newest config."""

    runtime: Runtime
    servers: dict[str, tuple[Placement, Server]] = field(default_factory=dict)
    current: dict[str, AnyListener] = field(default_factory=dict)
    unbound: set[str] = field(default_factory=set)  # names whose bind failed, retried
    closed: bool = False
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def sync(self, snapshot: Snapshot) -> None:
        self.runtime.listeners = snapshot.active_listeners()
        wanted: dict[str, AnyListener] = {**self.runtime.listeners, **snapshot.tcp_listeners}
        self.current = wanted
        for name in [n for n in self.servers if n not in wanted or self._moved(n, wanted[n])]:
            self.servers.pop(name)[1].close()
        for name, listener in wanted.items():
            if name not in self.servers:
                await self._bind(name, listener)

    def _moved(self, name: str, listener: AnyListener) -> bool:
        return self.servers[name][0] != _placement(listener)

    async def _bind(self, name: str, listener: AnyListener) -> None:
        def newest() -> AnyListener:
            return self.current.get(name, listener)

        def factory() -> asyncio.Protocol:
            current = newest()
            if isinstance(current, TcpListener):  # piped, never through the HTTP exchange
                return tcp_relay(self.runtime, current)
            if current.sniffing is not None:  # HTTP or TCP, by the first bytes
                return detecting(self.runtime, current)
            return Downstream(self.runtime, current)

        loop = asyncio.get_running_loop()
        server: Server
        try:
            sock = listen_socket(listener.host, listener.port)
            if not listener.has_tls:
                server = await loop.create_server(factory, sock=sock, backlog=1024)
            else:
                stats = self.runtime.stats.listener(
                    listener_stat_name(listener.host, listener.port)
                )
                server = SniffingServer(sock, newest, factory, self.runtime.tls, stats)
        except OSError as e:
            if name not in self.unbound:  # once: a retry that fails again is quiet
                where = f"{listener.host}:{listener.port}"
                log.error("listener %s cannot bind %s: %s; retrying", name, where, e)
            self._retry_bind(name)
            return
        self.unbound.discard(name)
        self.servers[name] = (_placement(listener), server)
        log.info("listener %s serving on %s:%d", name, listener.host, listener.port)

    def _retry_bind(self, name: str) -> None:
        """Try a taken address again shortly: in a rolling update the old
        instance's sidecar holds a declared upstream's 127.0.0.1:LOCALPORT
        until it stops, and no new xDS snapshot may come to retry it then."""
        self.unbound.add(name)

        async def again() -> None:
            listener = self.current.get(name)
            if not self.closed and listener is not None and name not in self.servers:
                await self._bind(name, listener)

        def start() -> None:
            task = loop.create_task(again())
            self._tasks.add(task)  # held until done, so it is not collected mid-way
            task.add_done_callback(self._tasks.discard)

        loop = asyncio.get_running_loop()
        loop.call_later(BIND_RETRY_S, start)

    def close(self) -> None:
        self.closed = True
        for _, server in self.servers.values():
            server.close()
        self.servers.clear()


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening socket on an IP address (SO_REUSEADDR, as Envoy's). Bound
    here rather than by the event loop, whose getaddrinfo would load the
    `idna` codec (with unicodedata and stringprep) into every sidecar for a
    name that is already an address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)


def run_proxy(
    bootstrap_path: str | os.PathLike[str],
    register: RegisterWith | None = None,
    ca_token_file: Path | None = None,
) -> int:
    """Serve until stopped; with `register`, keep the instance in the registry
    (see register.py). `register` makes a Registrar for the bootstrap. With
    `ca_token_file`, hold a workload certificate from the control plane's CA
    (see sds.py)."""
    bootstrap = load_bootstrap(bootstrap_path)
    registrar = register(bootstrap) if register is not None else None
    certificates = workload_certificates(bootstrap, ca_token_file) if ca_token_file else None
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # the event loop is faster with it, correct without
        pass
    return asyncio.run(_serve(bootstrap, registrar, certificates))


def workload_certificates(bootstrap: Bootstrap, token_file: Path) -> WorkloadCertificates:
    """Who the sidecar is, from its node metadata as Istio writes it
    (NAMESPACE, SERVICE_ACCOUNT: "default" when absent); the CA is the ADS
    server, as istio-agent's CA_ADDR defaults to the discovery address."""
    from pilotfish.proxy.sds import WorkloadCertificates

    fields = bootstrap.node.metadata.fields
    namespace = metadata_text(fields, "NAMESPACE")
    if not namespace:
        raise SystemExit("error: --ca-token-file needs the workload's node.metadata.NAMESPACE")
    account = metadata_text(fields, "SERVICE_ACCOUNT") or "default"
    targets = _ads_targets(bootstrap)
    if not targets:
        raise SystemExit("error: --ca-token-file needs an ADS server (the CA is served there)")
    try:
        spiffe_id = SpiffeId.of(TRUST_DOMAIN, namespace, account)
    except IdentityError as e:
        raise SystemExit(f"error: --ca-token-file: the node metadata's identity: {e}") from e
    channel = _ads_channel(bootstrap)  # the CA is served beside ADS: the same TLS
    return WorkloadCertificates(targets, str(spiffe_id), token_file, channel=channel)


async def _serve(
    bootstrap: Bootstrap,
    registrar: Registrar | None = None,
    certificates: WorkloadCertificates | None = None,
) -> int:
    if registrar is not None:
        await registrar.join()
    stop = asyncio.Event()
    changed = asyncio.Event()
    config = ProxyConfig(on_change=lambda _: changed.set())
    secrets = SecretSet(certificates, config.served_secrets)
    runtime = new_runtime(bootstrap, config, secrets, certificates)
    runtime.start()
    listeners = Listeners(runtime)
    load_static(bootstrap, runtime.config)
    await listeners.sync(runtime.config.snapshot)
    tasks = [asyncio.create_task(_follow(changed, listeners, runtime))]
    token_file = certificates.token_file if certificates is not None else None
    ads = _ads_client(bootstrap, runtime.config, token_file)
    if ads is not None:
        tasks.append(asyncio.create_task(ads.run()))
        tasks.append(asyncio.create_task(_tap_stream(bootstrap, runtime, certificates).run()))
    if certificates is not None:
        tasks.append(asyncio.create_task(certificates.run()))
    admin_server = await _admin(bootstrap, runtime, listeners, stop, ads, secrets)
    settle_memory()
    if registrar is not None:
        tasks.append(asyncio.create_task(registrar.keep(partial(_serving, runtime, ads))))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if registrar is not None:
        await registrar.renew(healthy=False)  # callers stop picking it before it drains
    await _drain(runtime, listeners)
    for task in tasks:
        task.cancel()
    if admin_server is not None:
        admin_server.close()
    runtime.close()
    if registrar is not None:
        await registrar.leave()
    return 0


def settle_memory() -> None:
    """Once started: collect start-up garbage, then freeze what is left (the
    modules, the static config) so that full collections stop scanning it,
    and hand the heap's free pages back to the system (glibc keeps them
    otherwise: parsing the bootstrap's YAML and protobuf leaves ~1 MiB free
    in the middle of the heap)."""
    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): keep them
        ctypes.CDLL(None).malloc_trim(0)


def _serving(runtime: Runtime, ads: AdsClient | None) -> bool:
    """Ready: not draining, and connected to the ADS server if there is one."""
    return not runtime.draining and (ads is None or ads.connected.is_set())


def new_runtime(
    bootstrap: Bootstrap,
    config: ProxyConfig,
    secrets: SecretSource | None = None,
    certificates: WorkloadCertificates | None = None,
) -> Runtime:
    """What the proxy's connections share, for the node the bootstrap names;
    TLS uses `secrets` (the workload certificate and the Secrets from SDS);
    spans to the control plane carry the token `certificates` reads."""
    stats = StatsRegistry()
    contexts = TlsContexts(secrets)
    own = WorkloadInfo.from_node(bootstrap.node)
    runtime = Runtime(
        config,
        Pool(stats, contexts),
        Telemetry(own),
        stats,
        peer_metadata_headers(bootstrap.node),
        tls=contexts,
        tracer=Tracer(
            own,
            bootstrap.node.id,
            stats.tracing,
            partial(pick_host, config),
            _control_plane(bootstrap, certificates),
            metadata_text(bootstrap.node.metadata.fields, "MESH_ID"),
            _ads_root(bootstrap),
        ),
    )
    stats.state = partial(live_stats, runtime, time.monotonic())
    return runtime


def _control_plane(
    bootstrap: Bootstrap, certificates: WorkloadCertificates | None = None
) -> tuple[str, Authorization]:
    """The control plane's API URL (node metadata PILOTFISH_API) and the ADS
    `authorization` the proxy presents (the bootstrap's, else the service
    account token, read at each export as it rotates), for its spans there."""
    api = metadata_text(bootstrap.node.metadata.fields, "PILOTFISH_API")
    if not bootstrap.dynamic_resources.ads_config.grpc_services:
        return api, str
    token_file = certificates.token_file if certificates is not None else None
    return api, lambda: dict(_ads_metadata(bootstrap, token_file)).get("authorization", "")


def pick_host(config: ProxyConfig, cluster: str) -> tuple[str, int] | None:
    """A host of the named cluster, as the cluster's balancer picks it; None
    if the proxy has no such cluster or it has no healthy host."""
    found = config.snapshot.clusters.clusters.get(cluster)
    host = found.pick() if found is not None else None
    return (host.address, host.port) if host is not None else None


def live_stats(runtime: Runtime, started: float) -> State:
    """The stats read from state: every cluster's (membership, breakers,
    outlier detection, active connections and requests), and the server's."""
    state: State = {
        ("cluster", name): cluster.stats()
        for name, cluster in runtime.config.snapshot.clusters.clusters.items()
    }
    state["server", "server"] = {
        "live": int(not runtime.draining),
        "state": int(runtime.draining),  # Envoy's 0 LIVE, 1 DRAINING
        "uptime": int(time.monotonic() - started),
        "concurrency": 1,
        "total_connections": runtime.connections,
    }
    return state


def load_static(bootstrap: Bootstrap, config: ProxyConfig) -> None:
    """The bootstrap's static resources, but the ADS server's cluster: that one
    is the gRPC client's (HTTP/2), not the data path's."""
    resources = bootstrap.static_resources
    ads_cluster = _ads_cluster_name(bootstrap)
    clusters = [c for c in resources.clusters if c.name != ads_cluster]
    try:
        config.load_static(list(resources.listeners), clusters)
    except Exception as e:  # any invalid static resource: say which, and do not start
        raise SystemExit(f"error: bootstrap static_resources: {e}") from e


def _ads_cluster_name(bootstrap: Bootstrap) -> str:
    services = bootstrap.dynamic_resources.ads_config.grpc_services
    return services[0].envoy_grpc.cluster_name if services else ""


async def _follow(changed: asyncio.Event, listeners: Listeners, runtime: Runtime) -> None:
    while True:
        await changed.wait()
        changed.clear()
        await listeners.sync(runtime.config.snapshot)


def _ads_client(
    bootstrap: Bootstrap, config: ProxyConfig, token_file: Path | None = None
) -> AdsClient | None:
    hosts = _ads_targets(bootstrap)
    if not hosts:
        return None
    from pilotfish.proxy.ads import AdsProtocol  # with DiscoveryRequest's messages
    from pilotfish.proxy.xds_client import AdsClient

    protocol = AdsProtocol(bootstrap.node, config.apply)
    metadata = partial(_ads_metadata, bootstrap, token_file)
    return AdsClient(hosts, protocol, metadata, _ads_channel(bootstrap))


def _ads_metadata(bootstrap: Bootstrap, token_file: Path | None = None) -> list[tuple[str, str]]:
    """The bootstrap's initial_metadata; without an `authorization` there,
    the workload's service account token (`--ca-token-file`, read at each
    stream as it is rotated), as istio-agent sends its JWT to istiod."""
    headers = [
        (header.key.lower(), header.value)
        for header in bootstrap.dynamic_resources.ads_config.grpc_services[0].initial_metadata
    ]
    if token_file is not None and not any(key == "authorization" for key, _ in headers):
        try:
            headers.append(("authorization", f"Bearer {token_file.read_text().strip()}"))
        except OSError as e:
            log.warning("xDS: cannot read the token file %s: %s", token_file, e.strerror)
    return headers


def _tap_stream(
    bootstrap: Bootstrap, runtime: Runtime, certificates: WorkloadCertificates | None
) -> TapStream:
    """`pilotfish tap`'s stream to the control plane, beside the ADS stream."""
    from pilotfish.proxy.tap_stream import TapStream

    me = runtime.telemetry.own
    identity = certificates.spiffe_id if certificates is not None else ""
    runtime.tap = Tap(me, identity)
    hello = {"node": bootstrap.node.id, "namespace": me.namespace, "workload": me.workload}
    token_file = certificates.token_file if certificates is not None else None
    targets, metadata = _ads_targets(bootstrap), partial(_ads_metadata, bootstrap, token_file)
    return TapStream(runtime.tap, targets, metadata, hello, _ads_channel(bootstrap))


def _ads_targets(bootstrap: Bootstrap) -> list[str]:
    """HOST:PORT of each ADS server (control-plane replica); none without one."""
    cluster_name = _ads_cluster_name(bootstrap)
    if not cluster_name:
        return []
    proto = next((c for c in bootstrap.static_resources.clusters if c.name == cluster_name), None)
    hosts = _ads_hosts(proto) if proto is not None else []
    if not hosts:
        raise SystemExit(
            f"error: the ADS cluster {cluster_name!r} is not a static cluster with an endpoint"
        )
    return hosts


def _ads_root(bootstrap: Bootstrap) -> bytes | None:
    """The root the xds cluster's TLS trusts, for spans to an https control
    plane; None without ADS, so a static proxy never loads gRPC."""
    if not bootstrap.dynamic_resources.ads_config.grpc_services:
        return None
    return _ads_channel(bootstrap).root_pem


def _ads_channel(bootstrap: Bootstrap) -> ControlPlaneChannel:
    """Plaintext, or TLS as the xds cluster's transport socket says."""
    from pilotfish.proxy.xds_channel import PLAINTEXT, channel_for

    name = _ads_cluster_name(bootstrap)
    proto = next((c for c in bootstrap.static_resources.clusters if c.name == name), None)
    try:
        return channel_for(proto) if proto is not None else PLAINTEXT
    except ValueError as e:
        raise SystemExit(f"error: the ADS cluster {name!r}: {e}") from e


def _ads_hosts(proto: ClusterProto) -> list[str]:
    """The ADS servers' addresses: the cluster's endpoints, in order (HTTP/2
    options and the like are the gRPC client's business, not checked here)."""
    return [
        f"[{socket.address}]:{socket.port_value}"
        if ":" in socket.address  # IPv6, as a gRPC target writes it
        else f"{socket.address}:{socket.port_value}"
        for locality in proto.load_assignment.endpoints
        for lb in locality.lb_endpoints
        if (socket := lb.endpoint.address.socket_address).address and socket.port_value
    ]


async def _admin(
    bootstrap: Bootstrap,
    runtime: Runtime,
    listeners: Listeners,
    stop: asyncio.Event,
    ads: AdsClient | None,
    secrets: SecretSet,
) -> asyncio.Server | None:
    address = bootstrap.admin.address.socket_address
    if not address.port_value:
        return None

    def ready() -> tuple[int, str, bytes]:
        if _serving(runtime, ads):
            return 200, admin.TEXT, b"LIVE\n"
        return 503, admin.TEXT, b"PRE_INITIALIZING\n"

    def server_info() -> tuple[int, str, bytes]:
        state = "LIVE" if _serving(runtime, ads) else "PRE_INITIALIZING"
        return 200, admin.JSON, admin.server_info("DRAINING" if runtime.draining else state)

    def drain() -> tuple[int, str, bytes]:
        runtime.draining = True
        listeners.close()
        return 200, admin.TEXT, b"OK\n"

    def quit_() -> tuple[int, str, bytes]:
        stop.set()
        return 200, admin.TEXT, b"OK\n"

    routes = admin.AdminRoutes(
        get={
            "/ready": ready,
            "/server_info": server_info,
            "/stats/prometheus": lambda: (
                200,
                "text/plain; version=0.0.4",
                prometheus_page(runtime.telemetry, runtime.stats),
            ),
            "/stats": lambda: (200, admin.TEXT, runtime.stats.text()),
            "/config_dump": lambda: (
                200,
                admin.JSON,
                admin.config_dump(
                    {t: dict(m) for t, m in runtime.config.snapshot.raw.items()},
                    secrets.config_dumps(),
                ),
            ),
            "/clusters": lambda: (
                200,
                admin.TEXT,
                render_clusters(runtime.config.snapshot.clusters.clusters.values()).encode(),
            ),
        },
        post={"/drain": drain, "/quitquitquit": quit_, "/drain_listeners": drain},
    )
    sock = listen_socket(address.address or "127.0.0.1", address.port_value)
    return await admin.serve_admin(sock, routes)


async def _drain(runtime: Runtime, listeners: Listeners) -> None:
    """Stop accepting; wait for in-flight exchanges, at most DRAIN_TIMEOUT_S."""
    runtime.draining = True
    listeners.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            while runtime.connections > 0:
                await asyncio.sleep(0.05)
