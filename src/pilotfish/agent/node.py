"""`pilotfish node`: the agent's shell. It watches Workloads (and the
ConfigMaps and Secrets they read), converges each one's instances on its
spec with plan.py, and writes what it sees into the Workload's status.

Assignment: an agent runs the Workloads whose spec.nodeName is its own name
or empty. With several agents, a later scheduler fills in nodeName; nothing
here assumes there is one agent.

On start the agent adopts what a previous agent on the same state
directory left running (one that crashed or was killed: a stopped agent
stops its instances): an instance whose Workload still exists and whose app
and sidecar both still run is supervised from here on, with its ports and
template from its instance.json, and keeps serving throughout. Anything
else left there is stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from pilotfish.agent import adopted
from pilotfish.agent import plan as planning
from pilotfish.agent.bootstrap import Placement, XdsServer
from pilotfish.agent.gateway import GatewayProxy, GatewaySpec
from pilotfish.agent.instance import RECORD, Instance, Ports
from pilotfish.agent.ports import PortAllocator
from pilotfish.agent.proxyless import (
    BOOTSTRAP,
    CALL_CREDS_ENV,
    GRPC_AGENT,
    INJECT_TEMPLATES,
    is_proxyless,
)
from pilotfish.agent.spec import SpecError, config_data, resolve
from pilotfish.api.errors import ApiError, Forbidden, NotFound
from pilotfish.api.kinds import Kind, registry
from pilotfish.api.workloads import ConfigData, referenced
from pilotfish.api.workloads import template_hash as hash_of
from pilotfish.config import private_dir
from pilotfish.objects import Obj

Key = tuple[str, str]  # (namespace, workload name)
RESYNC_S = 2.0
MANAGER = "pilotfish-node"


class NodeClient(Protocol):
    def get(self, kind: Kind, name: str, namespace: str | None) -> Obj: ...
    def list(self, kind: Kind, namespace: str | None, label_selector: str | None = None) -> Obj: ...
    def update_status(self, obj: Obj, *, manager: str = ...) -> Obj: ...
    def register_instance(self, registration: Obj) -> Obj: ...
    def deregister_instance(self, namespace: str, name: str) -> None: ...
    def create_token(
        self, namespace: str, service_account: str, expiration_seconds: int
    ) -> Obj: ...


class NodeAgent:
    def __init__(
        self,
        client: NodeClient,
        node_name: str,
        state_dir: Path,
        xds: XdsServer,
        gateway: GatewaySpec | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.client = client
        self.placement = placement or Placement()
        self.node_name = node_name
        self.state_dir = state_dir
        self.xds = xds
        self.ports = PortAllocator()
        self.instances: dict[Key, dict[str, Instance]] = {}
        self.errors: dict[Key, str] = {}
        self._stopping: dict[Key, int] = {}
        self._written: dict[Key, Obj] = {}
        self._templates: dict[Key, str] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="stop")
        self._dirty = threading.Event()
        self.gateway = (
            GatewayProxy(gateway, node_name, state_dir, self.ports.allocate(), xds, client)
            if gateway
            else None
        )

    def __repr__(self) -> str:
        return f"NodeAgent({self.node_name!r}, {sum(map(len, self.instances.values()))} instances)"

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set; then every instance is stopped before returning."""
        private_dir(self.state_dir)
        stop_leftovers(self.state_dir, keep=self._take_over())
        (self.state_dir / "agent.pid").write_text(str(os.getpid()))
        if self.gateway is not None:
            self.gateway.start()
        for kind in ("Workload", "ConfigMap", "Secret"):
            threading.Thread(target=self._watch, args=(kind, stop), daemon=True).start()
        try:
            while not stop.is_set():
                self._dirty.wait(RESYNC_S / 4)
                self._dirty.clear()
                self.sync()
                stop.wait(0.25)
        finally:
            self.shutdown()
            (self.state_dir / "agent.pid").unlink(missing_ok=True)

    def sync(self) -> None:
        """One pass: converge every Workload of this node, then write statuses."""
        try:
            workloads = self._my_workloads()
            configs = self._configs(workloads)
        except ApiError as e:
            print(f"node {self.node_name}: {e.message}", flush=True)
            return
        seen = set()
        for workload in workloads:
            key = (workload["metadata"]["namespace"], workload["metadata"]["name"])
            seen.add(key)
            self._converge(key, workload, configs.get(key[0], {}))
            self._write_status(key, workload)
        for key in [k for k in self.instances if k not in seen]:
            self._converge(key, None, {})

    def shutdown(self) -> None:
        with self._lock:
            everything = [i for group in self.instances.values() for i in group.values()]
            self.instances.clear()
        for instance in everything:
            instance.request_stop()
        list(self._pool.map(self._stop_instance, everything))
        self._pool.shutdown(wait=True)
        if self.gateway is not None:
            self.gateway.stop()

    # -- adopting a previous agent's instances ---------------------------------------

    def _take_over(self) -> set[Path]:
        """Adopt the instances a previous agent left running; their directories."""
        try:
            workloads = {
                (w["metadata"]["namespace"], w["metadata"]["name"]): w for w in self._my_workloads()
            }
            configs = self._configs(list(workloads.values()))
        except ApiError:
            return set()  # the control plane is not there: start afresh
        root = self.state_dir / "instances"
        kept = set()
        for record in sorted(root.glob(f"*/*/{RECORD}")) if root.exists() else []:
            instance = self._adopt(record, workloads, configs)
            if instance is not None:
                kept.add(instance.directory)
        return kept

    def _adopt(
        self, path: Path, workloads: dict[Key, Obj], configs: dict[str, ConfigData]
    ) -> Instance | None:
        try:
            record = json.loads(path.read_text())
            pids = json.loads((path.parent / "pids.json").read_text())
            key: Key = (record["namespace"], record["workload"])
            ports = Ports(**record["ports"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        markers = _markers(path.parent)
        app = adopted.adopt(pids.get("app"), markers["app"])
        sidecar = adopted.adopt(pids.get("sidecar"), markers["sidecar"])
        if key not in workloads or app is None or sidecar is None:
            return None
        age = max(0.0, time.time() - float(record.get("createdAt", time.time())))
        instance = Instance(
            name=record["name"],
            namespace=key[0],
            workload=key[1],
            template=record["template"],
            spec=record["spec"],
            directory=path.parent,
            ports=ports,
            xds=self.xds,
            client=self.client,
            placement=self.placement,
            proxyless=bool(record.get("proxyless")),
            created=time.monotonic() - age,
        )
        try:
            resolved = resolve(
                instance.spec, instance_env(instance, os.environ), configs.get(key[0], {})
            )
        except SpecError:
            return None
        self.ports.reserve(*ports.all())
        self.instances.setdefault(key, {})[instance.name] = instance
        instance.adopt(resolved, app, sidecar)
        return instance

    # -- converging ----------------------------------------------------------------

    def _converge(self, key: Key, workload: Obj | None, configs: ConfigData) -> None:
        current = self.instances.setdefault(key, {})
        if workload is None:
            self._stop_all(key, list(current))
            self.instances.pop(key, None)
            return
        spec = workload["spec"]
        proxyless = is_proxyless(workload)
        # The injection is part of what an instance runs: changing it rolls the instances.
        template = hash_of({**spec, INJECT_TEMPLATES: GRPC_AGENT} if proxyless else spec, configs)
        self._templates[key] = template
        views = [
            planning.View(i.name, i.template, i.status.ready, i.created) for i in current.values()
        ]
        decided = planning.plan(
            int(spec.get("replicas", 1)),
            template,
            views,
            planning.Strategy.from_spec(spec),
            self._stopping.get(key, 0),
        )
        self._stop_all(key, decided.stop)
        for _ in range(decided.start):
            if not self._start(key, spec, template, configs, proxyless):
                break

    def _start(
        self, key: Key, spec: Obj, template: str, configs: ConfigData, proxyless: bool
    ) -> bool:
        namespace, workload = key
        name = f"{workload}-{template[:5]}-{secrets.token_hex(3)}"
        ports = Ports.allocate([p["name"] for p in spec.get("ports") or []], self.ports)
        instance = Instance(
            name=name,
            namespace=namespace,
            workload=workload,
            template=template,
            spec=spec,
            directory=self.state_dir / "instances" / namespace / name,
            ports=ports,
            xds=self.xds,
            client=self.client,
            placement=self.placement,
            proxyless=proxyless,
        )
        try:
            resolved = resolve(spec, instance_env(instance, os.environ), configs)
        except SpecError as e:
            self.errors[key] = str(e)
            self.ports.release(*ports.all())
            return False
        self.errors.pop(key, None)
        self.instances[key][name] = instance
        instance.start(resolved)
        return True

    def _stop_all(self, key: Key, names: list[str]) -> None:
        group = self.instances.get(key, {})
        for name in names:
            instance = group.pop(name, None)
            if instance is None:
                continue
            instance.request_stop()
            with self._lock:
                self._stopping[key] = self._stopping.get(key, 0) + 1
            self._pool.submit(self._stop_then_count, key, instance)

    def _stop_instance(self, instance: Instance) -> None:
        instance.stop(float(instance.spec.get("terminationGracePeriodSeconds", 30)))
        self.ports.release(*instance.ports.all())

    def _stop_then_count(self, key: Key, instance: Instance) -> None:
        try:
            self._stop_instance(instance)
        finally:
            self._stopped(key)

    def _stopped(self, key: Key) -> None:
        with self._lock:
            self._stopping[key] -= 1
        self._dirty.set()

    # -- reading the control plane ---------------------------------------------------

    def _my_workloads(self) -> list[Obj]:
        items = self.client.list(registry().resolve("Workload"), None).get("items") or []
        return [
            w for w in items if (w.get("spec") or {}).get("nodeName") in (None, "", self.node_name)
        ]

    def _configs(self, workloads: list[Obj]) -> dict[str, ConfigData]:
        """Each namespace's ConfigMaps and Secrets that these Workloads
        reference, got one by one: a joined node may read no others. A missing
        one is left out (resolve() says so, unless it is optional)."""
        objects: dict[str, list[Obj]] = {w["metadata"]["namespace"]: [] for w in workloads}
        wanted = {
            (w["metadata"]["namespace"], kind, name)
            for w in workloads
            for kind, name in referenced(w.get("spec") or {})
        }
        for namespace, kind, name in sorted(wanted):
            try:
                found = self.client.get(registry().resolve(kind), name, namespace)
            except NotFound:
                continue
            objects[namespace].append({**found, "kind": kind})
        return {namespace: config_data(found) for namespace, found in objects.items()}

    def _watch(self, kind: str, stop: threading.Event) -> None:
        """Any change wakes the loop; the loop re-reads (a watch that breaks
        costs a resync, not a missed change)."""
        watch = getattr(self.client, "watch", None)
        while watch is not None and not stop.is_set():
            try:
                for _ in watch(registry().resolve(kind), None):
                    self._dirty.set()
                    if stop.is_set():
                        return
            except Forbidden:
                # A joined node may not watch Secrets (or ConfigMaps): the
                # periodic resync gets those its Workloads reference.
                return
            except (ApiError, OSError, ValueError):
                pass
            stop.wait(1.0)

    # -- status ----------------------------------------------------------------------

    def _write_status(self, key: Key, workload: Obj) -> None:
        instances = list(self.instances.get(key, {}).values())
        template = self._templates.get(key, "")
        status = workload_status(
            workload, instances, self.node_name, template, self.errors.get(key)
        )
        if self._written.get(key) == status:
            return
        with contextlib.suppress(ApiError):
            self.client.update_status({**workload, "status": status}, manager=MANAGER)
            self._written[key] = status


def workload_status(
    workload: Obj, instances: list[Instance], node: str, template: str, error: str | None
) -> Obj:
    """Deployment-like counts, plus each instance with its restarts and last
    error, so a crash loop shows in `pilotfish get workloads`."""
    spec = workload["spec"]
    items = [
        {
            "name": i.name,
            "node": node,
            "phase": i.status.phase,
            "ready": i.status.ready,
            "restarts": i.status.restarts,
            "lastError": i.status.last_error,
            "address": i.placement.address,
            "ports": dict(i.ports.inbound),
            **({"startedAt": i.status.started_at} if i.status.started_at else {}),
        }
        for i in sorted(instances, key=lambda i: i.name)
    ]
    updated = [i for i in instances if i.template == template]
    conditions = []
    if error:
        conditions.append({"type": "ReplicaFailure", "status": "True", "message": error})
    ready = sum(i.status.ready for i in instances)
    conditions.append(
        {"type": "Available", "status": str(ready >= int(spec.get("replicas", 1))).capitalize()}
    )
    return {
        "observedGeneration": workload["metadata"].get("generation", 1),
        "replicas": len(instances),
        "readyReplicas": ready,
        "updatedReplicas": len(updated),
        "availableReplicas": ready,
        "restarts": sum(i.status.restarts for i in instances),
        "lastError": next((i["lastError"] for i in items if i["lastError"]), error or ""),
        "instances": items,
        "conditions": conditions,
    }


def instance_env(instance: Instance, base: Any) -> dict[str, str]:
    """What every app gets besides its spec's env: its ports, its sidecar as
    its HTTP proxy (a proxyless one: GRPC_XDS_BOOTSTRAP), who it is; the
    agent's own Python first on PATH (so `python3` in a command is the one
    pilotfish runs on), and never the agent's token or proxy settings."""
    env = {
        k: v
        for k, v in base.items()
        if k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "all_proxy")
        and not k.startswith("PILOTFISH_")
    }
    python_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([python_dir, env.get("PATH", os.defpath)])
    if instance.proxyless:  # it reads xDS itself: no sidecar to send HTTP through
        env["GRPC_XDS_BOOTSTRAP"] = str(instance.grpc_dir / BOOTSTRAP)
        env[CALL_CREDS_ENV] = "true"  # its token, to xDS off the control plane's host
    else:
        proxy = f"http://127.0.0.1:{instance.ports.outbound}"
        env.update(HTTP_PROXY=proxy, http_proxy=proxy, NO_PROXY="localhost,127.0.0.1")
        env["no_proxy"] = env["NO_PROXY"]
    for i, (name, port) in enumerate(instance.ports.app.items()):
        if i == 0:
            env["PORT"] = str(port)
        env[f"PILOTFISH_PORT_{name.upper().replace('-', '_')}"] = str(port)
    env.update(
        POD_NAME=instance.name,
        HOSTNAME=instance.name,
        POD_NAMESPACE=instance.namespace,
        INSTANCE_IP=instance.placement.address,
        SERVICE_ACCOUNT=instance.spec.get("serviceAccountName", "default"),
    )
    return env


def _markers(directory: Path) -> dict[str, str]:
    """What shows that a recorded pid is still the process started for the
    instance in `directory` (sidecar first, then app)."""
    # The sidecar's --bootstrap, or a proxyless grpc-agent's --dir, lies in the directory.
    return {"sidecar": f"{directory}{os.sep}", "app": f"POD_NAME={directory.name}"}


def stop_leftovers(state_dir: Path, keep: set[Path] | None = None) -> int:
    """Stop the processes a previous agent on this directory left behind,
    but those of the instance directories in `keep` (adopted); the other
    directories go too. The number of processes signalled."""
    count = 0
    keep = keep or set()
    root = state_dir / "instances"
    for pids_file in root.glob("*/*/pids.json") if root.exists() else []:
        if pids_file.parent in keep:
            continue
        with contextlib.suppress(OSError, ValueError):
            pids = json.loads(pids_file.read_text())
            for role, marker in _markers(pids_file.parent).items():
                # A recorded pid may be a stranger's by now (after a reboot): only
                # the process that still carries the instance's marker is killed.
                if adopted.adopt(pids.get(role), marker) is not None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(int(pids[role]), signal.SIGKILL)
                        count += 1
    for directory in root.glob("*/*") if root.exists() else []:
        if directory not in keep:
            shutil.rmtree(directory, ignore_errors=True)
    time.sleep(0.1 if count else 0)
    return count
