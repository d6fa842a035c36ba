"""One instance: the application process and its own sidecar, supervised by
a thread of their own.

Life of an instance: the sidecar starts, the instance registers as not
healthy (so the control plane sends the sidecar its inbound listener), the
app starts; once the readiness probe passes and the sidecar is ready and
listening, the instance is registered healthy and becomes an endpoint. An
app that exits, or fails its liveness probe, is restarted after an
exponential back-off (1 s doubling to 30 s, reset after 30 s of running),
and is unhealthy meanwhile. Stopping: leave the endpoint set, wait for the
callers' proxies to hear it, drain the sidecar, then stop the app, and
only then deregister (a sidecar whose instance is unknown to the registry
loses its inbound listener).
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

import yaml

from pilotfish.agent import registration
from pilotfish.agent.adopted import Adopted
from pilotfish.agent.bootstrap import SidecarIdentity, XdsServer, sidecar_bootstrap
from pilotfish.agent.ports import PortAllocator
from pilotfish.agent.probes import ProbeState, check
from pilotfish.agent.spec import Resolved
from pilotfish.agent.tokens import TOKEN_FILE, ProjectedToken, TokenClient
from pilotfish.api.gotypes import rfc3339
from pilotfish.config import write_private

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_S = 30.0
HEARTBEAT_S = 1.0
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


@dataclass
class Status:
    """What the Workload's status shows of this instance."""

    phase: str = "Pending"
    ready: bool = False
    restarts: int = 0
    last_error: str = ""
    started_at: str = ""


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
    created: float = field(default_factory=time.monotonic)
    status: Status = field(default_factory=Status)
    app: Process | None = None
    sidecar: Process | None = None
    _app_started: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _token: ProjectedToken | None = None

    def __repr__(self) -> str:
        return (
            f"<Instance {self.namespace}/{self.name} {self.status.phase} ready={self.status.ready}>"
        )

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
        self._app_started = time.monotonic()
        self.status.phase = "Running"
        self._spawn_supervisor(resolved)

    def _spawn_supervisor(self, resolved: Resolved) -> None:
        self._thread = threading.Thread(
            target=self._supervise, args=(resolved,), name=f"instance-{self.name}", daemon=True
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
        )

    # -- the supervising thread ----------------------------------------------------

    def _supervise(self, resolved: Resolved) -> None:
        try:
            self._token = ProjectedToken(
                self.directory / TOKEN_FILE,
                self.namespace,
                self.spec.get("serviceAccountName") or "default",
            )
            self._refresh_token()
            if self.sidecar is None:  # else adopted, and running
                self._start_sidecar()
            self._register(healthy=False)
            self._run(resolved)
        except Exception as e:  # a supervisor that dies silently would strand processes
            self.status.last_error = f"agent error: {e}"
        finally:
            self._shutdown()

    def _run(self, resolved: Resolved) -> None:
        backoff, restart_at = BACKOFF_BASE_S, 0.0
        readiness, liveness = self._probes(time.monotonic()) if self.app else (None, None)
        beat = 0.0
        while not self._stop.wait(TICK_S):
            now = time.monotonic()
            self._refresh_token()
            if self.sidecar is not None and self.sidecar.poll() is not None:
                self._note_exit("sidecar", self.sidecar.returncode)
                self._start_sidecar()
            if self.app is None or self.app.poll() is not None:
                if self.app is not None:
                    self._note_exit("app", self.app.returncode)
                    restart_at = now + backoff
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    self.status.phase, self.app = "CrashLoopBackOff", None
                    self._set_ready(False)
                if now < restart_at:
                    continue
                if not self._start_app(resolved):
                    restart_at = now + backoff
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                readiness, liveness = self._probes(now)
            if now - self._app_started >= BACKOFF_RESET_S:
                backoff = BACKOFF_BASE_S
            if not self._probe(readiness, liveness, resolved, now):
                continue
            if now - beat >= HEARTBEAT_S:
                beat = now
                self._register(self.status.ready)

    def _probes(self, now: float) -> tuple[ProbeState, ProbeState | None]:
        ready_spec = self.spec.get("readinessProbe") or {
            "tcpSocket": {"port": next(iter(self.ports.app), 0)},
            "periodSeconds": 1,
            "failureThreshold": 1,
        }
        live_spec = self.spec.get("livenessProbe")
        readiness = ProbeState(ready_spec, passing=False, started=now)
        liveness = ProbeState(live_spec, passing=True, started=now) if live_spec else None
        return readiness, liveness

    def _probe(
        self,
        readiness: ProbeState | None,
        liveness: ProbeState | None,
        resolved: Resolved,
        now: float,
    ) -> bool:
        """Run the probes that are due; False when the app was killed for
        failing its liveness probe (the exit is handled on the next tick)."""
        cwd, env = self._cwd(), resolved.env
        if liveness is not None and liveness.due(now):
            ok, why = check(liveness.spec, self.ports.app, cwd, env)
            if liveness.record(ok, why, now) and not liveness.passing:
                self.status.last_error = f"Liveness probe failed: {why}"
                self._kill(self.app)
                return False
        if readiness is not None and readiness.due(now):
            ok, why = check(readiness.spec, self.ports.app, cwd, env)
            if ok and not self._sidecar_ready():
                ok, why = False, "sidecar not ready"
            readiness.record(ok, why, now)
            self._set_ready(readiness.passing)
        return True

    def _set_ready(self, ready: bool) -> None:
        if ready != self.status.ready:
            self.status.ready = ready
            if self.status.phase != "CrashLoopBackOff":
                self.status.phase = "Running"
            self._register(ready)

    # -- processes -----------------------------------------------------------------

    def _cwd(self) -> str:
        working = self.spec.get("workingDir")
        return str(Path(working).resolve()) if working else str(self.directory)

    def _start_app(self, resolved: Resolved) -> bool:
        """False when the program cannot even be started (a crash, for back-off)."""
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
            self.status.last_error = f"cannot start {resolved.argv[0]}: {e}"
            self.status.phase = "CrashLoopBackOff"
            self.status.restarts += 1
            return False
        finally:
            log.close()
        self._app_started = time.monotonic()
        self.status.phase = "Running"
        self.status.started_at = rfc3339(time.time())
        self._write_pids()
        return True

    def _start_sidecar(self) -> None:
        path = self.directory / "bootstrap.yaml"
        config = sidecar_bootstrap(
            self.identity(),
            admin_port=self.ports.admin,
            outbound_port=self.ports.outbound,
            xds=self.xds,
        )
        write_bootstrap(path, config)
        token = ["--ca-token-file", str(self.directory / TOKEN_FILE)]
        self.sidecar = spawn_proxy(path, self.directory / "sidecar.log", token)
        self._write_pids()

    def _refresh_token(self) -> None:
        error = self._token.refresh(self.client) if self._token is not None else ""
        if error:
            self.status.last_error = error

    def _sidecar_ready(self) -> bool:
        url = f"http://127.0.0.1:{self.ports.admin}/ready"
        try:
            with _DIRECT.open(url, timeout=1) as response:
                ok = response.status == 200
        except OSError:
            return False
        return ok and all(_listening(p) for p in self.ports.inbound.values())

    def _note_exit(self, which: str, code: int | None) -> None:
        self.status.restarts += 1
        if code == Adopted.UNKNOWN_EXIT:
            self.status.last_error = f"{which} exited (adopted from a previous agent: code unknown)"
            return
        if code is not None and code < 0:
            # Killed: its log's last line says nothing about why.
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            self.status.last_error = f"{which} exited with code {code} ({name})"
            return
        tail = _tail(self.directory / f"{which}.log")
        self.status.last_error = f"{which} exited with code {code}" + (f": {tail}" if tail else "")

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

    # -- registration and shutdown -------------------------------------------------

    def _register(self, healthy: bool) -> None:
        body = registration.registration(
            name=self.name,
            namespace=self.namespace,
            workload=self.workload,
            labels=dict(self.spec["labels"]),
            service_account=self.spec.get("serviceAccountName", "default"),
            ports=self.ports.inbound,
            app_ports=self.ports.app,
            metrics_port=self.ports.admin,
            healthy=healthy,
            mtls=True,  # its sidecar always holds a certificate (--ca-token-file)
        )
        error = registration.register(self.client, body)
        if error:
            self.status.last_error = f"registration: {error}"

    def _shutdown(self) -> None:
        """Leave the endpoint set but stay registered (unhealthy): the
        instance's own sidecar keeps its inbound listener, and so keeps
        answering what callers sent before they heard of the change, until
        it is drained and stopped; only then does the registration go."""
        self.status.phase, self.status.ready = "Terminating", False
        self._register(healthy=False)
        grace = float(self.spec.get("terminationGracePeriodSeconds", 30))
        if self.app is not None and self.app.poll() is None:
            time.sleep(DEREGISTER_SETTLE_S)
        terminate(self.sidecar, grace)
        terminate(self.app, grace)
        registration.deregister(self.client, self.namespace, self.name)
        (self.directory / "pids.json").unlink(missing_ok=True)


_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def write_bootstrap(path: Path, config: dict[str, Any]) -> None:
    """Write a bootstrap only its owner can read: it may carry the token."""
    write_private(path, yaml.safe_dump(config, sort_keys=False))


def spawn_proxy(
    bootstrap: Path, log_path: Path, extra_args: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """`pilotfish proxy` in a session of its own, output appended to `log_path`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pilotfish",
                "proxy",
                "--bootstrap",
                str(bootstrap),
                *extra_args,
            ],
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


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
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
