"""The node agent's commands: `node` runs it; `logs`, `scale`, `chaos kill`
and `down` act on what it runs. `logs`, `chaos` and `down` read the agent's
state directory (this host's), as kubectl logs reads the kubelet's files."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pilotfish.api.kinds import registry
from pilotfish.cli.commands import CliError
from pilotfish.client import Client

DEFAULT_NODE = os.environ.get("PILOTFISH_NODE_NAME", "local")
Sub = argparse._SubParsersAction


class NodeError(CliError):
    """A command on the node cannot do what was asked; the message says why."""


def default_state_dir(node: str = DEFAULT_NODE) -> Path:
    return Path.home() / ".pilotfish" / "node" / node


def add_commands(sub: Sub[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state-dir", type=Path, help="the agent's directory (default: per node)")
    state.add_argument("--node-name", default=DEFAULT_NODE, help="node name (default: local)")
    p = sub.add_parser("node", parents=[common, state], help="run the node agent")
    p.add_argument("--xds", default="127.0.0.1:15010", help="the control plane's ADS address")
    p.add_argument(
        "--gateway",
        action="store_true",
        help="also run an ingress gateway proxy (labels istio=ingressgateway, namespace "
        "istio-system): Gateways selecting it open their ports on --gateway-address",
    )
    p.add_argument("--gateway-address", default="127.0.0.1", help="where gateway ports bind")
    p.set_defaults(handler=run_node)
    p = sub.add_parser("logs", parents=[common, state], help="an application's log")
    p.add_argument("workload")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--sidecar", action="store_true", help="the sidecar's log instead")
    p.set_defaults(handler=logs)
    p = sub.add_parser("scale", parents=[common], help="set a Workload's replicas")
    p.add_argument("workload")
    p.add_argument("replicas", type=int)
    p.set_defaults(handler=scale)
    chaos = sub.add_parser("chaos", help="break things on purpose").add_subparsers(metavar="ACTION")
    p = chaos.add_parser("kill", parents=[common, state], help="SIGKILL instances' applications")
    p.add_argument("workload")
    p.add_argument("--count", type=int, default=1)
    p.set_defaults(handler=chaos_kill)
    p = sub.add_parser("down", parents=[state], help="stop the node agent and all it runs")
    p.set_defaults(handler=down)


def _state(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else default_state_dir(args.node_name)


def run_node(args: argparse.Namespace) -> int:
    from pilotfish.agent.gateway import GatewaySpec
    from pilotfish.agent.node import NodeAgent

    host, _, port = args.xds.rpartition(":")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    gateway = GatewaySpec(address=args.gateway_address) if args.gateway else None
    agent = NodeAgent(
        Client.from_config(args.server), args.node_name, _state(args), (host, int(port)), gateway
    )
    print(f"node {args.node_name}: running workloads, state in {_state(args)}", flush=True)
    agent.run(stop)
    return 0


def live_instances(state_dir: Path, workload: str, namespace: str) -> list[tuple[Path, Any]]:
    """(directory, pids) of the instances the agent runs for `workload` now."""
    out = []
    for pids_file in sorted((state_dir / "instances" / namespace).glob("*/pids.json")):
        try:
            pids = json.loads(pids_file.read_text())
        except (OSError, ValueError):
            continue
        if pids.get("workload") == workload:
            out.append((pids_file.parent, pids))
    return out


def logs(args: argparse.Namespace) -> int:
    found = live_instances(_state(args), args.workload, args.namespace or "default")
    if not found:
        raise NodeError(f'no instance of workload "{args.workload}" runs on this node')
    name = "sidecar.log" if args.sidecar else "app.log"
    files = {d.name: (d / name).open("rb") for d, _ in found if (d / name).exists()}
    try:
        while True:
            for instance, log in files.items():
                for line in log.readlines():
                    prefix = f"[{instance}] " if len(files) > 1 else ""
                    sys.stdout.write(prefix + line.decode("utf-8", "replace"))
            sys.stdout.flush()
            if not args.follow:
                return 0
            time.sleep(0.2)
    finally:
        for log in files.values():
            log.close()


def scale(args: argparse.Namespace) -> int:
    client = Client.from_config(args.server)
    kind = registry().resolve("Workload")
    workload = client.get(kind, args.workload, args.namespace)
    workload["spec"]["replicas"] = args.replicas
    client.update(workload, manager="pilotfish-scale")
    print(f"workload.pilotfish.dev/{args.workload} scaled to {args.replicas}")
    return 0


def chaos_kill(args: argparse.Namespace) -> int:
    """Chaos Monkey: kill applications (not their sidecars) with SIGKILL, so
    nothing gets to say goodbye; the agent has to notice and heal."""
    found = [
        (d, p)
        for d, p in live_instances(_state(args), args.workload, args.namespace or "default")
        if p.get("app") and pid_alive(int(p["app"]))
    ]
    if not found:
        raise NodeError(f'no running instance of workload "{args.workload}" on this node')
    for directory, pids in random.sample(found, min(args.count, len(found))):
        os.killpg(int(pids["app"]), signal.SIGKILL)
        print(f"killed {directory.name} (pid {pids['app']})")
    return 0


def down(args: argparse.Namespace) -> int:
    """Stop a demo running on this state directory (it stops its agent, then
    its control plane), then the agent, the control plane the demo started,
    and anything left behind."""
    from pilotfish.agent.node import stop_leftovers

    state = _state(args)
    stopped = [role for role in ("demo", "agent", "controlplane") if _stop_pid_file(state, role)]
    left = stop_leftovers(state)
    if not stopped and not left:
        print(
            f"node {args.node_name}: nothing was running "
            f"(no demo, node agent or instance in {state})"
        )
        return 0
    print(
        f"node {args.node_name}: stopped"
        + (f" ({', '.join(stopped)})" if stopped else "")
        + (f" ({left} leftover processes killed)" if left else "")
    )
    return 0


def _stop_pid_file(state: Path, role: str, timeout: float = 90.0) -> bool:
    """SIGTERM the process `ROLE.pid` names and wait for it (SIGKILL after
    `timeout`); True if it was running."""
    pid_file = state / f"{role}.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return False
    running = pid_alive(pid)
    if running:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return running


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; /proc says whether it is one.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True
