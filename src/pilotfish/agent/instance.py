"""One instance: the application process and its own sidecar, supervised by
a thread of their own.

Life of an instance (the decisions are lifecycle.py's pure `step`; this is
the shell that runs them): the sidecar starts, the instance registers as not
healthy (so the control plane sends the sidecar its inbound listener), the
app starts; once the readiness probe passes and the sidecar is ready and
listening, the instance is registered healthy and becomes an endpoint. An
app that exits, or fails its liveness probe, is restarted after an
exponential back-off, and is unhealthy meanwhile. Stopping: leave the
endpoint set, wait for the callers' proxies to hear it, drain the sidecar,
then stop the app, and only then deregister.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pilotfish.agent import lifecycle as lc
from pilotfish.agent.adopted import Adopted
from pilotfish.agent.bootstrap import Placement, SidecarIdentity, XdsServer, sidecar_bootstrap
from pilotfish.agent.lifecycle import Lifecycle, Status
from pilotfish.agent.ports import PortAllocator
from pilotfish.agent.probes import check
from pilotfish.agent.proxyless import CERT_CHAIN, grpc_agent_args
from pilotfish.agent.spec import Resolved
from pilotfish.agent.tokens import TOKEN_FILE, ProjectedToken, TokenClient
from pilotfish.api.gotypes import rfc3339
from pilotfish.client import registration
from pilotfish.config import write_private

TICK_S = 0.1
DEREGISTER_SETTLE_S = 1.0  # for the endpoint removal to reach callers' proxies


@dataclass
class Ports:
    app: dict[str, int]
    inbound: dict[str, int]
    outbound: int
    admin: int

    @classmethod
    def allocate(cls, names: list[str], allocator: PortAllocator) -> Ports:
        return cls(
            app={n: allocator.allocate() for n in names},
            inbound={n: allocator.allocate() for n in names},
            outbound=allocator.allocate(),
            admin=allocator.allocate(),
        )

    def all(self) -> list[int]:
        return [*self.app.values(), *self.inbound.values(), self.outbound, self.admin]


Process = subprocess.Popen[bytes] | Adopted


class InstanceClient(registration.RegistryClient, TokenClient, Protocol):
    """What an instance asks of the control plane: its registration, and its
    sidecar's service account token."""


RECORD = "instance.json"  # what a later agent needs to adopt the instance


@dataclass
class Instance:
    name: str
    namespace: str
    workload: str
    template: str
    spec: dict[str, Any]
    directory: Path
    ports: Ports
    xds: XdsServer
    client: InstanceClient
    placement: Placement = field(default_factory=Placement)
    proxyless: bool = False  # grpc-agent beside the app instead of a sidecar (agent/proxyless.py)
    created: float = field(default_factory=time.monotonic)
    state: Lifecycle | None = None
    app: Process | None = None
    sidecar: Process | None = None
    _resolved: Resolved | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _token: ProjectedToken | None = None

    def __post_init__(self) -> None:
        if self.state is None:
            self.state = Lifecycle(self.spec, next(iter(self.ports.app), 0))

    def __repr__(self) -> str:
        return (
            f"<Instance {self.namespace}/{self.name} {self.status.phase} ready={self.status.ready}>"
        )

    @property
    def status(self) -> Status:
        assert self.state is not None
        return self.state.status

    # -- lifecycle (called by the node) --------------------------------------------

    def start(self, resolved: Resolved) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for path, content in resolved.files.items():
            target = self.directory / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        self._write_record()
        self._spawn_supervisor(resolved)

    def adopt(self, resolved: Resolved, app: Adopted, sidecar: Adopted) -> None:
        """Take over the running processes of an instance a previous agent
        started: supervised from here on, ready again once its probe passes."""
        self.app, self.sidecar = app, sidecar
        self.state = Lifecycle.adopted(self.spec, next(iter(self.ports.app), 0), time.monotonic())
        self._spawn_supervisor(resolved)

    def _spawn_supervisor(self, resolved: Resolved) -> None:
        self._resolved = resolved
        self._thread = threading.Thread(
            target=self._supervise, name=f"instance-{self.name}", daemon=True
        )
        self._thread.start()

    def _write_record(self) -> None:
        record = {
            "name": self.name,
            "namespace": self.namespace,
            "workload": self.workload,
            "template": self.template,
            "spec": self.spec,
            "ports": asdict(self.ports),
            "proxyless": self.proxyless,
            "createdAt": time.time() - (time.monotonic() - self.created),
        }
        (self.directory / RECORD).write_text(json.dumps(record))

    def stop(self, grace: float) -> None:
        """Leave the endpoint set, drain, stop; returns when both processes are gone."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=grace + DEREGISTER_SETTLE_S + 15)
        self.status.phase, self.status.ready = "Terminated", False

    def request_stop(self) -> None:
        self._stop.set()

    def identity(self) -> SidecarIdentity:
        return SidecarIdentity(
            instance=self.name,
            namespace=self.namespace,
            workload=self.workload,
            labels=dict(self.spec["labels"]),
            service_account=self.spec.get("serviceAccountName", "default"),
            app_containers=self.workload,
            address=self.placement.address,
            locality=self.placement.locality_for(self.spec["labels"]),
        )

    # -- the supervising thread: events in, commands run ---------------------------

    def _supervise(self) -> None:
        try:
            self._token = ProjectedToken(
                self.directory / TOKEN_FILE,
                self.namespace,
                self.spec.get("serviceAccountName") or "default",
            )
            self._refresh_token()
            self._feed(lc.Begin(sidecar_running=self.sidecar is not None))
            while not self._stop.wait(TICK_S):
                self._refresh_token()
                for event in self._exits():
                    self._feed(event)
                self._feed(lc.Tick())
        except Exception as e:  # a supervisor that dies silently would strand processes
            self.status.last_error = f"agent error: {e}"
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        assert self.state is not None
        if self.state.phase in (lc.TERMINATING, lc.TERMINATED):
            return
        running = self.app is not None and self.app.poll() is None
        self._feed(lc.Stop(app_running=running))
        self._feed(lc.Stopped())

    def _exits(self) -> list[lc.Event]:
        """The processes that exited since the last tick."""
        events: list[lc.Event] = []
        if self.sidecar is not None and self.sidecar.poll() is not None:
            events.append(self._exited("sidecar", self.sidecar.returncode))
            self.sidecar = None
        if self.app is not None and self.app.poll() is not None:
            events.append(self._exited("app", self.app.returncode))
            self.app = None
        return events

    def _exited(self, which: str, code: int | None) -> lc.Exited:
        tail = _tail(self.directory / f"{which}.log") if code is not None and code >= 0 else ""
        return lc.Exited(which, code, tail)

    def _feed(self, event: lc.Event) -> None:
        """One event through the step; a command's outcome is the next event."""
        assert self.state is not None
        for command in lc.step(self.state, event, time.monotonic()):
            outcome = self._run(command)
            if outcome is not None:
                self._feed(outcome)

    def _run(self, command: lc.Command) -> lc.Event | None:
        match command:
            case lc.StartSidecar():
                self._start_sidecar()
            case lc.StartApp():
                return self._start_app()
            case lc.KillApp():
                self._kill(self.app)
            case lc.Probe(kind=kind):
                return self._probe(kind)
            case lc.Register(healthy=healthy):
                self._register(healthy)
            case lc.Settle():
                time.sleep(DEREGISTER_SETTLE_S)
            case lc.Terminate(which=which):
                grace = float(self.spec.get("terminationGracePeriodSeconds", 30))
                terminate(self.sidecar if which == "sidecar" else self.app, grace)
            case lc.Deregister():
                registration.deregister(self.client, self.namespace, self.name)
                (self.directory / "pids.json").unlink(missing_ok=True)
        return None

    def _probe(self, kind: str) -> lc.ProbeResult:
        assert self.state is not None and self._resolved is not None
        probe = self.state.liveness if kind == "liveness" else self.state.readiness
        assert probe is not None
        ok, why = check(probe.spec, self.ports.app, self._cwd(), self._resolved.env)
        if ok and kind == "readiness" and not self._sidecar_ready():
            ok, why = False, "sidecar not ready"
        return lc.ProbeResult(kind, ok, why)

    # -- processes -----------------------------------------------------------------

    def _cwd(self) -> str:
        working = self.spec.get("workingDir")
        return str(Path(working).resolve()) if working else str(self.directory)

    def _start_app(self) -> lc.Event | None:
        if self.proxyless and not self._sidecar_ready():
            # Held until grpc-agent wrote the certificate (Istio's
            # holdApplicationUntilProxyStarts): gRPC would read no files and
            # retry only every refresh interval. The next tick asks again.
            return None
        assert self._resolved is not None
        resolved = self._resolved
        log = (self.directory / "app.log").open("ab")
        try:
            self.app = subprocess.Popen(
                resolved.argv,
                cwd=self._cwd(),
                env=resolved.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            return lc.AppStartFailed(f"cannot start {resolved.argv[0]}: {e}")
        finally:
            log.close()
        self._write_pids()
        return lc.AppStarted(rfc3339(time.time()))

    def _start_sidecar(self) -> None:
        if self.proxyless:
            args = grpc_agent_args(
                self.identity(), self.xds, self.grpc_dir, self.directory / TOKEN_FILE
            )
            self.sidecar = spawn_pilotfish(args, self.directory / "sidecar.log")
            self._write_pids()
            return
        path = self.directory / "bootstrap.yaml"
        config = sidecar_bootstrap(
            self.identity(),
            admin_port=self.ports.admin,
            outbound_port=self.ports.outbound,
            xds=self.xds,
            upstreams=self.spec.get("upstreams") or (),
        )
        write_bootstrap(path, config)
        token = ["--ca-token-file", str(self.directory / TOKEN_FILE)]
        self.sidecar = spawn_proxy(path, self.directory / "sidecar.log", token)
        self._write_pids()

    def _refresh_token(self) -> None:
        error = self._token.refresh(self.client) if self._token is not None else ""
        if error:
            self.status.last_error = error

    @property
    def grpc_dir(self) -> Path:
        """A proxyless instance's bootstrap and certificate files."""
        return self.directory / "grpc"

    def _sidecar_ready(self) -> bool:
        if self.proxyless:  # the app can start its xDS client once its certificate is there
            return (self.grpc_dir / CERT_CHAIN).is_file()
        url = f"http://127.0.0.1:{self.ports.admin}/ready"
        try:
            with _DIRECT.open(url, timeout=1) as response:
                ok = response.status == 200
        except OSError:
            return False
        address = self.placement.address
        return ok and all(_listening(address, p) for p in self.ports.inbound.values())

    def _kill(self, process: Process | None) -> None:
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGKILL)

    def _write_pids(self) -> None:
        pids = {
            "app": self.app.pid if self.app else None,
            "sidecar": self.sidecar.pid if self.sidecar else None,
            "workload": self.workload,
            "namespace": self.namespace,
        }
        (self.directory / "pids.json").write_text(json.dumps(pids))

    def _register(self, healthy: bool) -> None:
        body = registration.registration(
            name=self.name,
            namespace=self.namespace,
            workload=self.workload,
            labels=dict(self.spec["labels"]),
            service_account=self.spec.get("serviceAccountName", "default"),
            # Callers reach a proxyless app itself, and only ISTIO_MUTUAL sends it TLS.
            ports=self.ports.app if self.proxyless else self.ports.inbound,
            app_ports=self.ports.app,
            metrics_port=0 if self.proxyless else self.ports.admin,
            healthy=healthy,
            mtls=not self.proxyless,  # a sidecar always holds a certificate (--ca-token-file)
            address=self.placement.address,
            locality=self.placement.locality_for(self.spec["labels"]),
        )
        error = registration.register(self.client, body)
        if error:
            self.status.last_error = f"registration: {error}"


_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def write_bootstrap(path: Path, config: dict[str, Any]) -> None:
    """Write a bootstrap only its owner can read: it may carry the token. In
    JSON (which is YAML too): the sidecar then reads it without loading
    PyYAML (docs/benchmarks.md, "Idle memory")."""
    write_private(path, json.dumps(config, indent=2) + "\n")


def spawn_proxy(
    bootstrap: Path, log_path: Path, extra_args: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """`pilotfish proxy` in a session of its own, output appended to `log_path`."""
    return spawn_pilotfish(["proxy", "--bootstrap", str(bootstrap), *extra_args], log_path)


def spawn_pilotfish(args: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """A `pilotfish` command beside an app (its proxy or grpc-agent), in a
    session of its own, output appended to `log_path`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pilotfish", *args],
            env=proxy_free_env(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def proxy_free_env(base: Mapping[str, str]) -> dict[str, str]:
    """A proxy process's environment: a proxy must not send its own upstream
    calls (xDS, clusters) through an HTTP proxy set for the agent."""
    return {k: v for k, v in base.items() if k.lower() not in _PROXY_VARS}


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _listening(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _signal_group(process: Process, sig: signal.Signals) -> None:
    """The whole process group: an app may have started children of its own."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def terminate(process: Process | None, grace: float) -> None:
    if process is None or process.poll() is not None:
        if process is not None:
            _signal_group(process, signal.SIGKILL)  # children it left behind
        return
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _tail(path: Path, limit: int = 200) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][-limit:] if lines else ""
