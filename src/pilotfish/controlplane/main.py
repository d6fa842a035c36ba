"""`pilotfish controlplane`: open the store, serve the API and xDS, stop cleanly
on a signal.

Start-up binds the API port first, so a port in use fails before a store is
opened or a config written; anything opened before a later failure is closed
again. The registry follows the store and the instance registrations; the ADS
server (port 15010 on the REST API's host by default, as istiod's plaintext
port; peers off loopback present the token) pushes what they produce. Only
validated config is ever stored, so only validated config reaches a proxy.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sqlite3
import stat
import sys
import threading
from pathlib import Path
from types import FrameType

from pilotfish.analysis import warnings_for
from pilotfish.api.errors import ApiError
from pilotfish.api.kinds import registry
from pilotfish.api.validation import compile_all_schemas, validate_or_raise, with_defaults
from pilotfish.ca import tokens
from pilotfish.ca.cacerts import CaError
from pilotfish.ca.identity import DEFAULT_TRUST_DOMAIN
from pilotfish.ca.pin import ca_cert_hash
from pilotfish.ca.service import CertificateService
from pilotfish.config import ClientConfig, write_client_config
from pilotfish.controlplane import analysis_status, xds_tls
from pilotfish.controlplane.analysis_status import StatusWriter
from pilotfish.controlplane.analyze_api import AnalyzeApi
from pilotfish.controlplane.api import Api, chain
from pilotfish.controlplane.api_tls import ROOT_FILE, ApiTls, serving_context
from pilotfish.controlplane.auth import Authenticator, load_or_create_token
from pilotfish.controlplane.bootstrap_tokens import BootstrapTokens
from pilotfish.controlplane.election import Elector
from pilotfish.controlplane.heap import HeapKeeper
from pilotfish.controlplane.http import ApiServer, parse_listen
from pilotfish.controlplane.identity import CaOptions, TokenApi, add_ca_flags, ca_options, open_ca
from pilotfish.controlplane.jwks import JwksResolver, start_jwks_resolver
from pilotfish.controlplane.jwks_shared import SharedJwks
from pilotfish.controlplane.loadtester_api import LoadTesterApi
from pilotfish.controlplane.mesh_api import MeshApi
from pilotfish.controlplane.nodes import NodeAuthorizer, NodeCertificates
from pilotfish.controlplane.tap import TapHub
from pilotfish.controlplane.traces_api import TracesApi
from pilotfish.dashboard.api import DashboardApi, Metrics
from pilotfish.dashboard.config import config_rows
from pilotfish.dashboard.prometheus import PrometheusMetrics
from pilotfish.dashboard.sampler import MeshSampler
from pilotfish.objects import Obj
from pilotfish.periodic import when
from pilotfish.registry.instances import InstanceRegistry
from pilotfish.registry.mesh import MeshRegistry
from pilotfish.registry.shared import SharedInstanceRegistry
from pilotfish.rollout.service import RolloutService
from pilotfish.store.backends import STORE_FILE, StoreOptions, open_backend
from pilotfish.store.etcd import EtcdBackend
from pilotfish.store.resources import ResourceStore
from pilotfish.store.types import Backend
from pilotfish.tracing import jaeger
from pilotfish.tracing.store import DEFAULT_RETENTION, TRACES_FILE, Retention, SpanStore
from pilotfish.xds.debounce import debounce_from_env
from pilotfish.xds.limits import DEFAULT_LIMITS, Limits
from pilotfish.xds.server import DEFAULT_LISTEN as DEFAULT_XDS_LISTEN
from pilotfish.xds.server import AdsServer, BindError, TokenCheck

log = logging.getLogger("pilotfish.controlplane")

DEFAULT_LISTEN = "127.0.0.1:15080"


class StartError(Exception):
    """Why the control plane could not start, in one line."""


class ControlPlane:
    """The running parts: the API server over a store, the registry, the ADS
    server, and how to stop them."""

    def __init__(
        self,
        server: ApiServer,
        store: ResourceStore,
        data_dir: Path,
        mesh: MeshRegistry | None = None,
        ads: AdsServer | None = None,
    ) -> None:
        self.server = server
        self.store = store
        self.data_dir = data_dir
        self.mesh = mesh
        self.ads = ads
        self.rollout: RolloutService | None = None
        self.elector: Elector | None = None
        self.leader_store: ResourceStore | None = None  # on etcd: writes fenced by the lead
        self.loadtester: LoadTesterApi | None = None
        self.ca: CertificateService | None = None
        self.analysis: StatusWriter | None = None
        self.jwks: JwksResolver | None = None
        self.sampler: MeshSampler | None = None
        self.spans: SpanStore | None = None
        self.tap: TapHub | None = None
        self.heap = HeapKeeper()  # started with the server; see heap.py for why

    def __repr__(self) -> str:
        return f"ControlPlane({self.server.url}, data_dir={str(self.data_dir)!r})"

    @classmethod
    def open(
        cls,
        data_dir: Path,
        listen: str = DEFAULT_LISTEN,
        config_path: Path | None = None,
        xds_listen: str | None = None,
        ca: CaOptions | None = None,
        store_options: StoreOptions | None = None,
        *,
        anonymous_reads: bool = True,
        xds_limits: Limits = DEFAULT_LIMITS,
        prometheus: str | None = None,
        traces: Retention = DEFAULT_RETENTION,
        api_tls: ApiTls | None = None,
        xds_tls_listen: str | None = None,
    ) -> ControlPlane:
        """Everything started and serving, or nothing left running. Without
        `xds_listen` there is no ADS server (the registry API still works): a
        library caller does not take the well-known port unless it asks.
        The CA is served on the xDS port, so it runs when xDS does."""
        options = store_options or StoreOptions()
        server = _bind(listen, api_tls)
        store: ResourceStore | None = None
        plane: ControlPlane | None = None
        try:
            if xds_listen is None:  # no CA to issue a certificate: refuse before writing
                serving_context(api_tls or ApiTls(), listen, None, data_dir)
            _make_data_dir(data_dir)
            token = load_or_create_token(data_dir)
            backend = open_backend(options, data_dir)
            store = ResourceStore(backend, validate=validate_or_raise, default=with_defaults)
            plane = cls(server, store, data_dir)
            plane.spans = SpanStore(data_dir / TRACES_FILE, traces)
            service_tokens = tokens.load_or_create(data_dir)
            if xds_listen is not None:
                plane.ca = open_ca(store, data_dir, token, service_tokens, ca or CaOptions())
            root = plane._use_tls(api_tls, listen)
            instances, accept = plane._instances_on(backend), workload_token(service_tokens)
            plane._start_mesh(xds_listen, token, xds_limits, instances, xds_tls_listen, accept)
            loadtester = plane._start_rollout()
            if analysis_status.enabled():
                plane.analysis = StatusWriter(store)
                plane.analysis.start()
            extensions = chain(
                MeshApi(plane.instances, plane.ads),
                TokenApi(service_tokens),
                AnalyzeApi(store),
                loadtester,
                TracesApi(plane.spans),
                plane.tap or TapHub(None),  # without xDS no sidecar connects: nothing to tap
                plane._start_dashboard(prometheus),
                plane._node_certificates(),
            )
            auth = plane._authenticator(token, anonymous_reads, service_tokens)
            server.api = Api(
                store, auth, analyze=warnings_for, extension=extensions, config=plane.mesh
            )
            write_client_config(ClientConfig(server.url, token, root), config_path)
            threading.Thread(target=compile_all_schemas, name="schemas", daemon=True).start()
            plane.heap.start()
        except BaseException as e:
            if plane is not None:
                plane.close()
            else:
                server.stop()
                if store is not None:
                    store.close()
            reason = _start_error(e, data_dir, options)
            if reason is None:
                raise
            raise reason from e
        return plane

    def _use_tls(self, api_tls: ApiTls | None, listen: str) -> str | None:
        """HTTPS as api_tls.serving_context decides; the CA file local clients
        verify the API with when the mesh CA issued its certificate."""
        authority = self.ca.authority if self.ca is not None else None
        tls = serving_context(api_tls or ApiTls(), listen, authority, self.data_dir)
        if tls is None:
            return None
        self.server.use_tls(tls)
        issued = api_tls is None or api_tls.cert_file is None
        return str(self.data_dir / ROOT_FILE) if issued else None

    def _authenticator(
        self, token: str, anonymous_reads: bool, service_tokens: tokens.ServiceAccountTokens
    ) -> Authenticator:
        """Who is calling: the admin, read-only, bootstrap and service account
        tokens, and nodes' certificates (when the mesh CA, their issuer, runs)."""
        return Authenticator(
            token,
            data_dir=self.data_dir,
            anonymous_reads=anonymous_reads,
            workloads=service_tokens,
            bootstrap=BootstrapTokens(self.data_dir),
            nodes=self._node_rules(),
        )

    def _node_certificates(self) -> NodeCertificates | None:
        """Joining node agents' certificates, signed by the mesh CA (if it runs)."""
        if self.ca is None:
            return None
        return NodeCertificates(self.ca.authority, lambda: self.server.url)

    def _node_rules(self) -> NodeAuthorizer | None:
        if self.ca is None:
            return None
        store, instances, kind = self.store, self.instances, registry().resolve("Workload")

        def instance_workload(namespace: str, name: str) -> str | None:
            found = [i for i in instances.instances() if (i.namespace, i.name) == (namespace, name)]
            return found[0].workload if found else None

        return NodeAuthorizer(lambda: store.list(kind.group, kind.kind, None)[0], instance_workload)

    @property
    def instances(self) -> InstanceRegistry:
        assert self.mesh is not None
        return self.mesh.instances

    def _instances_on(self, backend: Backend) -> InstanceRegistry | None:
        """On etcd, the leader election, and registrations shared with the other
        replicas (swept by the leader); None: this process's own registry."""
        if not isinstance(backend, EtcdBackend):
            return None
        self.elector = Elector(backend.client, f"{backend.prefix}-election/rollout")
        self.elector.start()
        # The leader's writes land only while it leads (EtcdBackend.fenced).
        fenced = backend.fenced(self.elector.fence)
        self.leader_store = ResourceStore(fenced, validate=validate_or_raise, default=with_defaults)
        return SharedInstanceRegistry(backend, self.elector.leading)

    def _start_mesh(
        self,
        xds_listen: str | None,
        token: str,
        limits: Limits,
        instances: InstanceRegistry | None,
        tls_listen: str | None = None,
        accept: TokenCheck | None = None,
    ) -> None:
        domain = self.ca.authority.trust_domain if self.ca is not None else DEFAULT_TRUST_DOMAIN
        self.mesh = MeshRegistry(self.store, instances, trust_domain=domain)
        self.mesh.start()
        shared, writes = None, self.store
        if self.elector is not None and self.leader_store is not None:
            shared = SharedJwks(self.leader_store, self.elector.leading)
            writes = self.leader_store
        self.jwks = start_jwks_resolver(writes, self.mesh, shared)
        if xds_listen is None:
            return
        self.tap = TapHub(token, accept)  # sidecars' tap streams, authenticated as ADS streams
        services = [self.ca.handler()] if self.ca is not None else []
        services.append(self.tap)
        secure = None
        if tls_listen is not None and self.ca is not None:
            secure = (tls_listen, xds_tls.credentials(self.ca.authority, tls_listen))
        try:
            quiet, longest = debounce_from_env(os.environ)
        except ValueError as e:
            raise StartError(str(e)) from None
        self.ads = AdsServer(
            self.mesh.snapshot,
            xds_listen,
            debounce=quiet,
            debounce_max=longest,
            token=token,
            limits=limits,
            services=services,
            secure=secure,
            accept=accept,
        )
        self.mesh.add_listener(self.ads.changed)
        self.ads.start()

    def _start_rollout(self) -> LoadTesterApi:
        """The rollout controller, its metrics sampler and the load tester. On
        etcd, where other control planes may share the store, the controller
        and sampler act only while this one is the elected leader, and the
        controller's writes are fenced by its lead (EtcdBackend.fenced)."""
        assert self.mesh is not None
        self.loadtester = LoadTesterApi(self.mesh.snapshot)
        leading, store = None, self.store
        if self.elector is not None and self.leader_store is not None:
            leading, store = self.elector.leading, self.leader_store
        self.rollout = RolloutService(store, self.instances.instances, leading)
        self.rollout.start()
        return self.loadtester

    def _start_dashboard(self, prometheus: str | None) -> DashboardApi:
        """The dashboard's paths, reading `prometheus` or else the mesh
        metrics sampler (run on the leader only, as the rollout's)."""
        metrics: Metrics
        if prometheus:
            metrics = PrometheusMetrics(prometheus, self.instances.instances)
        else:
            metrics = self.sampler = MeshSampler(self.instances.instances)
            if self.elector is not None:
                self.sampler.loop.work = when(self.elector.leading, self.sampler.loop.work)
            self.sampler.start()
        store = self.store

        def canaries(namespace: str | None) -> list[Obj]:
            return store.list("flagger.app", "Canary", namespace)[0]

        return DashboardApi(
            metrics,
            self.instances.instances,
            canaries,
            lambda: config_rows(store),
            trace=self._trace,
        )

    def _trace(self, trace_id: str) -> Obj | None:
        assert self.spans is not None
        try:
            spans = self.spans.trace(jaeger.trace_id(trace_id))
        except jaeger.BadQuery:
            return None
        return jaeger.trace(spans) if spans else None

    def close(self) -> None:
        """Stop what was started, newest first; safe on a half-open plane."""
        self.heap.stop()
        if self.analysis is not None:
            self.analysis.stop()
        if self.sampler is not None:
            self.sampler.stop()
        if self.rollout is not None:
            self.rollout.stop()
        if self.elector is not None:
            self.elector.stop()
        if self.loadtester is not None:
            self.loadtester.close()
        if self.ads is not None:
            self.ads.stop()
        if self.jwks is not None:
            self.jwks.stop()
        if self.mesh is not None:
            self.mesh.stop()
        self.server.stop()
        if self.spans is not None:
            self.spans.close()
        self.store.close()


def run_controlplane(
    data_dir: Path,
    listen: str = DEFAULT_LISTEN,
    config_path: Path | None = None,
    xds_listen: str | None = DEFAULT_XDS_LISTEN,
    ca: CaOptions | None = None,
    store_options: StoreOptions | None = None,
    *,
    anonymous_reads: bool = True,
    xds_limits: Limits = DEFAULT_LIMITS,
    prometheus: str | None = None,
    traces: Retention = DEFAULT_RETENTION,
    api_tls: ApiTls | None = None,
    xds_tls_listen: str | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT, then shut down cleanly: 0; 1 if it cannot start."""
    _configure_logging()
    try:
        plane = ControlPlane.open(
            data_dir,
            listen,
            config_path,
            xds_listen,
            ca,
            store_options,
            anonymous_reads=anonymous_reads,
            xds_limits=xds_limits,
            prometheus=prometheus,
            traces=traces,
            api_tls=api_tls,
            xds_tls_listen=xds_tls_listen,
        )
    except StartError as e:
        log.error("error: %s", e)
        return 1
    stop = threading.Event()
    _stop_on_signals(stop)
    serving = plane.server.start()
    log.info("pilotfish control plane serving on %s (data in %s)", plane.server.url, data_dir)
    if store_options is not None and store_options.url != "sqlite":
        log.info("store: %s (prefix %s)", store_options.url, store_options.etcd_prefix)
    if plane.ads is not None:
        log.info(
            "xDS (ADS) serving on %s", plane.ads.listen.rpartition(":")[0] + f":{plane.ads.port}"
        )
    if plane.ads is not None and plane.ads.secure_port:
        log.info("xDS and the CA over TLS on port %d", plane.ads.secure_port)
    if plane.ca is not None:
        log.info("CA: trust domain %s, %s", plane.ca.authority.trust_domain, plane.ca.authority)
        # kubeadm prints it too: what `pilotfish node --join --ca-cert-hash` pins.
        log.info("CA certificate hash: %s", ca_cert_hash(plane.ca.authority.root))
    while not stop.wait(0.5) and serving.is_alive():
        pass
    log.info("pilotfish control plane stopping")
    plane.close()
    return 0


def workload_token(service_tokens: tokens.ServiceAccountTokens) -> TokenCheck:
    """xDS off loopback takes a workload's service account token too (a
    joined node's sidecars have no admin token), as istiod takes a proxy's JWT."""

    def valid(presented: str) -> bool:
        try:
            service_tokens.verify(presented)
        except tokens.TokenError:
            return False
        return True

    return valid


def _start_error(error: BaseException, data_dir: Path, store: StoreOptions) -> StartError | None:
    """A one-line reason for what users can fix (permissions, a bad store file,
    an unreachable etcd, a bad CA); anything else is a bug and keeps its traceback."""
    if isinstance(error, CaError):
        return StartError(f"the CA cannot start: {error}")
    if isinstance(error, ValueError):  # the REST API's TLS (api_tls.serving_context)
        return StartError(str(error))
    if isinstance(error, BindError):
        return StartError(f"{error} (is another control plane running? see --xds-listen)")
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        return StartError(f"cannot start:{where}: {error.strerror or error}")
    if isinstance(error, sqlite3.Error):
        return StartError(f"cannot open the store {data_dir / STORE_FILE}: {error}")
    if isinstance(error, ApiError):
        return StartError(f"cannot open the store {store.url}: {error}")
    return None


def _bind(listen: str, tls: ApiTls | None = None) -> ApiServer:
    """The API's socket; the user's TLS files are checked here too, so a bad
    one stops the start before anything is written (the context is made
    again once the mesh CA, which verifies clients, is open)."""
    try:
        if tls is not None and tls.cert_file is not None:
            tls.context()
        return ApiServer(listen)
    except ValueError as e:
        raise StartError(str(e)) from e
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise StartError(
                f"cannot listen on {listen}: the address is already in use "
                "(is another control plane running?)"
            ) from e
        raise StartError(f"cannot listen on {listen}: {e.strerror or e}") from e


def _make_data_dir(data_dir: Path) -> None:
    """Create it 0700, or check that nobody else can write an existing one: who
    can write the directory can swap the store or the token files under us."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    problem = unsafe_directory(data_dir)
    if problem:
        raise StartError(f"refusing to use the data directory {data_dir}: {problem}")


def unsafe_directory(path: Path) -> str | None:
    """Why other users could change what is in `path`, or None if they cannot."""
    info = path.stat()
    if info.st_uid != os.geteuid():
        return (
            f"it is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()}); "
            f"use a directory of your own, or run: chown {os.geteuid()} {path} && chmod 700 {path}"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (
            f"other users can write to it (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run: chmod 700 {path}"
        )
    return None


def _stop_on_signals(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pilotfish.controlplane.main")
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".pilotfish" / "data")
    parser.add_argument("--listen", default=DEFAULT_LISTEN)
    parser.add_argument("--config", type=Path, default=None, help="client config to write")
    parser.add_argument("--xds-port", type=int, default=15010, help="ADS port on --listen's host")
    parser.add_argument("--xds-listen", help="ADS address (default: --xds-port on --listen's host)")
    add_ca_flags(parser)
    args = parser.parse_args(argv)
    try:
        xds = xds_listen(args.xds_port, args.listen, args.xds_listen)
    except ValueError as e:
        parser.error(str(e))
    return run_controlplane(args.data_dir, args.listen, args.config, xds, ca_options(args))


def xds_listen(port: int, api_listen: str, explicit: str | None = None) -> str | None:
    """Where the ADS server binds: `explicit` (--xds-listen) if given, else
    `port` (--xds-port) on the REST API's host, so xDS is never reachable from
    where the API is not; a negative port turns xDS off. ValueError names a
    bad address."""
    if explicit is not None:
        host, port = parse_listen(explicit)
    elif port < 0:
        return None
    else:
        host = parse_listen(api_listen)[0]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


if __name__ == "__main__":
    sys.exit(main())
