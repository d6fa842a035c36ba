"""The ingress gateway the agent runs beside its instances: the sidecar
binary in router mode (node id `router~IP~NAME.NAMESPACE~...`), with
Istio's ingress-gateway labels, so that every `Gateway` whose selector
matches them gets its servers' ports as listeners on this proxy, and the
VirtualServices bound to it as routes.

The agent runs it, not the demo, for the reason Kubernetes runs Istio's
gateway as a Deployment: something must restart it when it dies, stop it
with everything else on `pilotfish down`, and find it after a crash of its
own. Its files sit where an instance's do (instances/NAMESPACE/NAME/, with
pids.json and sidecar.log), so leftover cleanup and `pilotfish logs NAME
--sidecar -n NAMESPACE` work for it unchanged.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pilotfish.agent.bootstrap import SidecarIdentity, XdsServer, gateway_bootstrap
from pilotfish.agent.instance import spawn_proxy, terminate, write_bootstrap
from pilotfish.agent.lifecycle import BACKOFF_BASE_S, BACKOFF_MAX_S
from pilotfish.agent.tokens import TOKEN_FILE, ProjectedToken, TokenClient

DEFAULT_LABELS = {"istio": "ingressgateway", "app": "istio-ingressgateway"}
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class GatewaySpec:
    """Who the gateway proxy is; `address` is where its listeners bind."""

    name: str = "istio-ingressgateway"
    namespace: str = "istio-system"
    labels: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    address: str = "127.0.0.1"
    locality: str = ""  # the node's: callers through the gateway prefer it too

    def identity(self, node: str) -> SidecarIdentity:
        return SidecarIdentity(
            instance=f"{self.name}-{node}",
            namespace=self.namespace,
            workload=self.name,
            labels=dict(self.labels),
            service_account=f"{self.name}-service-account",
            app_containers="",
            address=self.address,
            locality=self.locality,
        )


class GatewayProxy:
    """One gateway proxy process, restarted with back-off when it exits."""

    def __init__(
        self,
        spec: GatewaySpec,
        node: str,
        state_dir: Path,
        admin_port: int,
        xds: XdsServer,
        client: TokenClient,
    ) -> None:
        self.who = spec.identity(node)
        self.directory = state_dir / "instances" / spec.namespace / self.who.instance
        self.admin_port = admin_port
        self.xds = xds
        self.client = client
        # Its workload certificate, as Istio's gateway has one (for mTLS to sidecars).
        self.token = ProjectedToken(
            self.directory / TOKEN_FILE, self.who.namespace, self.who.service_account
        )
        self.restarts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        pid = self.process.pid if self.process else None
        return f"<GatewayProxy {self.who.instance} pid={pid} restarts={self.restarts}>"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = gateway_bootstrap(self.who, admin_port=self.admin_port, xds=self.xds)
        write_bootstrap(self.directory / "bootstrap.yaml", config)
        self._thread = threading.Thread(target=self._supervise, name="gateway", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_GRACE_S + 10)

    def _supervise(self) -> None:
        backoff = BACKOFF_BASE_S
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self._refresh_token()
                self._spawn()
                while self.process is not None and self.process.poll() is None:
                    if self._stop.wait(0.2):
                        return
                    self._refresh_token()
                self.restarts += 1
                if time.monotonic() - started > BACKOFF_MAX_S:
                    backoff = BACKOFF_BASE_S
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            terminate(self.process, STOP_GRACE_S)
            (self.directory / "pids.json").unlink(missing_ok=True)

    def _refresh_token(self) -> None:
        error = self.token.refresh(self.client)
        if error:
            print(f"gateway {self.who.instance}: {error}", flush=True)

    def _spawn(self) -> None:
        bootstrap = self.directory / "bootstrap.yaml"
        token = ["--ca-token-file", str(self.token.path)]
        self.process = spawn_proxy(bootstrap, self.directory / "sidecar.log", token)
        pids = {
            "app": None,
            "sidecar": self.process.pid,
            "workload": self.who.workload,
            "namespace": self.who.namespace,
        }
        (self.directory / "pids.json").write_text(json.dumps(pids))
