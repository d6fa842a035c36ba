"""A small Bookinfo-like mesh of real processes for end-to-end tests through
sidecars: the control plane (xDS on a free port), HTTP backends in the test
process, each behind a `pilotfish proxy` started from an ADS bootstrap, and a
client-side sidecar whose outbound listener curl uses as its HTTP proxy.

Bootstraps come from the node agent's generator (pilotfish.agent.bootstrap),
so these tests also check that what the agent writes is what the control
plane's translation expects (node id, NAME, OUTBOUND_PORT, xds-grpc).
Instances are registered over the REST API rather than with `pilotfish
register`, because a sidecar's instance needs `appPorts` (where the
application listens behind it), which the CLI does not take.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mesh_processes import XdsControlPlane, wait_until
from tests.ports import free_port

# The sidecar's own e2e harness: its backends, proxy process and curl helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy" / "e2e"))
from harness import Backend, Proxy, Response, curl, curl_many

from pilotfish.agent.bootstrap import SidecarIdentity, XdsServer, node_id, sidecar_bootstrap
from pilotfish.api.errors import ApiError
from pilotfish.ca.identity import TLS_MODE_LABEL
from pilotfish.client import Client
from pilotfish.config import load_client_config

__all__ = ["REVIEWS_SERVICE", "Backend", "Response", "Sidecar", "SidecarMesh", "curl", "curl_many"]
NAMESPACE = "default"
# reviews, port http 9080, as a test mesh's callers address it
REVIEWS_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: reviews, labels: {app: reviews}}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
"""
REGISTRATION_TTL_S = 300.0  # the test deregisters at teardown; no heartbeat needed
REVIEWS_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: reviews, labels: {app: reviews}}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
"""


def isolated_env(tmp: Path) -> dict[str, str]:
    """This process's environment for a test mesh's control plane and CLI:
    its own HOME and client config, no server, token or proxy of the caller's."""
    env = {**os.environ, "HOME": str(tmp / "home"), "PILOTFISH_CONFIG": str(tmp / "config.yaml")}
    for var in ("PILOTFISH_SERVER", "PILOTFISH_TOKEN", "HTTP_PROXY", "http_proxy"):
        env.pop(var, None)
    return env


@dataclass
class Sidecar:
    """One `pilotfish proxy` in front of (or, for a client, beside) an app."""

    who: SidecarIdentity
    proxy: Proxy
    outbound_port: int
    inbound_port: int = 0  # 0: a client-only sidecar, not registered

    @property
    def node_id(self) -> str:
        return node_id(self.who)

    def stats(self) -> str:
        status, text = self.proxy.admin_get("/stats/prometheus")
        assert status == 200, text
        return text

    def config_dump(self) -> dict[str, Any]:
        status, text = self.proxy.admin_get("/config_dump")
        assert status == 200, text
        result: dict[str, Any] = json.loads(text)
        return result

    def has_certificate(self) -> bool:
        """Whether the sidecar holds its workload certificate from the CA (SDS)."""
        for config in self.config_dump().get("configs", []):
            if config.get("@type", "").endswith("SecretsConfigDump"):
                return bool(config.get("dynamicActiveSecrets"))
        return False

    def counters(self) -> dict[str, int]:
        """Envoy's /stats text (`name: value`), counters and gauges by name."""
        status, text = self.proxy.admin_get("/stats")
        assert status == 200, text
        pairs = (line.rpartition(": ") for line in text.splitlines())
        return {name: int(value) for name, _, value in pairs if value.isdigit()}


@dataclass
class SidecarMesh:
    """Owns everything it starts; `close` stops it all in reverse order."""

    plane: XdsControlPlane
    directory: Path
    sidecars: list[Sidecar] = field(default_factory=list)
    backends: list[Backend] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    # Sidecars hold a certificate from the CA (--ca-token-file) and their
    # instances carry Istio's tlsMode label, as the node agent's do: mTLS.
    certificates: bool = False
    # The name of the Service port workloads are registered under; its
    # prefix says the protocol (`grpc` for a gRPC app, as in Istio).
    port_name: str = "http"

    def apply(self, manifest: str) -> None:
        done = self.plane.cli("apply", "-f", "-", stdin=manifest)
        assert done.returncode == 0, done.stderr

    def workload(
        self, instance: str, labels: dict[str, str], backend: Backend
    ) -> tuple[Sidecar, Backend]:
        """`backend` started, registered as `instance` (port `http` is its
        sidecar's inbound port, appPorts.http the backend's), and its sidecar."""
        backend.start()
        self.backends.append(backend)
        inbound = free_port()
        who = self._identity(instance, labels)
        self._register(who, inbound, backend.port)
        return self._start_sidecar(who, inbound), backend

    def self_registered(
        self, instance: str, labels: dict[str, str], backend: Backend
    ) -> tuple[Sidecar, Backend]:
        """`backend` behind a sidecar that registers the instance itself
        (`pilotfish proxy --register`), as on a host without the node agent."""
        backend.start()
        self.backends.append(backend)
        inbound = free_port()
        ports = ("--port", f"http={inbound}", "--app-port", f"http={backend.port}")
        sidecar = self._start_sidecar(self._identity(instance, labels), inbound, register=ports)
        return sidecar, backend

    def plain_workload(self, instance: str, labels: dict[str, str], backend: Backend) -> Backend:
        """`backend` registered with no sidecar: peers reach the app directly,
        so it sees what a caller's sidecar sends on the wire."""
        backend.start()
        self.backends.append(backend)
        self._register(self._identity(instance, labels), backend.port, backend.port)
        return backend

    def client(
        self, instance: str, labels: dict[str, str], upstreams: list[dict[str, Any]] | None = None
    ) -> Sidecar:
        """A sidecar for a caller with no inbound port of its own; `upstreams`
        as a Workload's spec.upstreams."""
        return self._start_sidecar(self._identity(instance, labels), 0, upstreams=upstreams or [])

    def _identity(self, instance: str, labels: dict[str, str]) -> SidecarIdentity:
        workload = f"{labels['app']}-{labels.get('version', 'v1')}"
        return SidecarIdentity(
            instance=instance,
            namespace=NAMESPACE,
            workload=workload,
            labels=labels,
            service_account=f"bookinfo-{labels['app']}",
            app_containers=labels["app"],
        )

    def _register(self, who: SidecarIdentity, inbound: int, app_port: int) -> None:
        body = {
            "name": who.instance,
            "namespace": who.namespace,
            "workload": who.workload,
            "address": who.address,
            "ports": {self.port_name: inbound},
            "appPorts": {self.port_name: app_port},
            "labels": {**who.labels, **({TLS_MODE_LABEL: "istio"} if self.certificates else {})},
            "serviceAccount": who.service_account,
            "ttlSeconds": REGISTRATION_TTL_S,
        }
        self._client().register_instance(body)
        self.registered.append(who.instance)

    def _start_sidecar(
        self,
        who: SidecarIdentity,
        inbound: int,
        register: tuple[str, ...] = (),
        upstreams: list[dict[str, Any]] | None = None,
    ) -> Sidecar:
        admin, outbound = free_port(), free_port()
        config = sidecar_bootstrap(
            who,
            admin_port=admin,
            outbound_port=outbound,
            xds=XdsServer("127.0.0.1", self.plane.xds_port),
            upstreams=upstreams or [],
        )
        path = self.directory / f"bootstrap-{who.instance}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        stderr = self.directory / f"sidecar-{who.instance}.stderr"
        args = ("--register", *register) if register else ()
        if self.certificates:
            args += ("--ca-token-file", str(self.token_file(who)))
        proxy = Proxy(path, admin, stderr, args=args, env=self.plane.env if register else None)
        sidecar = Sidecar(who, proxy, outbound, inbound)
        self.sidecars.append(sidecar)
        proxy.start(timeout=15)
        return sidecar

    def token_file(self, who: SidecarIdentity) -> Path:
        """A service account token for the sidecar's identity, as `pilotfish create token` makes it."""
        done = self.plane.cli("create", "token", who.service_account, "-n", who.namespace)
        assert done.returncode == 0, done.stderr
        path = self.directory / f"token-{who.instance}"
        path.write_text(done.stdout, encoding="utf-8")
        return path

    def wait_serving(self, sidecar: Sidecar, timeout: float = 10) -> None:
        """Until the sidecar has its outbound listener (and its inbound one,
        when it fronts an app) from the control plane."""
        wanted = {f"127.0.0.1_{sidecar.outbound_port}"}
        if sidecar.inbound_port:
            wanted.add(f"inbound_127.0.0.1_{sidecar.inbound_port}")

        def has_listeners() -> bool:
            return wanted <= listener_names(sidecar.config_dump())

        wait_until(
            has_listeners,
            timeout,
            f"{sidecar.who.instance} never got {wanted}: {sidecar.proxy.stderr()}",
        )

    def _client(self) -> Client:
        """The API client the CLI would use: the control plane wrote its
        server and token to the plane's PILOTFISH_CONFIG at start."""
        config = load_client_config(path=Path(self.plane.env["PILOTFISH_CONFIG"]))
        return Client(config.server, config.token)

    def instances(self) -> dict[str, dict[str, Any]]:
        """The registry's instances by name."""
        return {i["name"]: i for i in self._client().instances()}

    def delete(self, kind: str, name: str) -> None:
        """Delete if present (a test may run without the one that created it)."""
        self.plane.cli("delete", kind, name)

    def rds_versions(self) -> dict[str, str]:
        """Node id -> RDS version each proxy ACKed (empty while not SYNCED)."""
        out = {}
        for status in self._client().proxy_status():
            rds = status["types"].get("RDS", {})
            out[status["proxy"]] = rds["ackedVersion"] if rds.get("state") == "SYNCED" else ""
        return out

    def apply_and_wait(self, manifest: str, caller: Sidecar, timeout: float = 5.0) -> None:
        """Apply, then wait until the caller's sidecar ACKed new routes: a
        test's traffic must not be judged against the previous test's config."""
        before = self.rds_versions().get(caller.node_id)
        self.apply(manifest)

        def acked_new() -> bool:
            return self.rds_versions().get(caller.node_id) not in ("", before)

        wait_until(acked_new, timeout, f"routes not ACKed after apply: {self.rds_versions()}")

    def proxy_status(self) -> subprocess.CompletedProcess[str]:
        return self.plane.cli("proxy-status")

    def close(self) -> None:
        failures = []
        for sidecar in reversed(self.sidecars):
            if sidecar.proxy.process is not None and sidecar.proxy.process.poll() is None:
                try:
                    sidecar.proxy.stop()
                except AssertionError as e:
                    failures.append(str(e))
        for name in self.registered:
            with contextlib.suppress(ApiError, OSError):  # the control plane is going too
                self._client().deregister_instance(NAMESPACE, name)
        for backend in self.backends:
            backend.stop()
        self.plane.stop_all()
        assert not failures, failures


def listener_names(dump: dict[str, Any]) -> set[str]:
    """Names of the listeners in force, from the proxy's /config_dump
    (`configs`: one entry per type URL with its `resources`)."""
    return {
        str(resource.get("name"))
        for config in dump.get("configs", [])
        if config.get("@type", "").endswith("envoy.config.listener.v3.Listener")
        for resource in config.get("resources", [])
    }
