"""The node agent's commands: `node` runs it; `logs`, `scale`, `chaos kill`
and `down` act on what it runs. `logs`, `chaos` and `down` read the agent's
state directory (this host's), as kubectl logs reads the kubelet's files."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import re
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pilotfish.api.kinds import registry
from pilotfish.cli.commands import CliError
from pilotfish.client import Client
from pilotfish.config import ClientConfig, load_client_config

if TYPE_CHECKING:  # the agent's modules load only when it runs
    from pilotfish.agent.join import NodeCredentials

DEFAULT_NODE = os.environ.get("PILOTFISH_NODE_NAME", "local")
DEFAULT_XDS = "127.0.0.1:15010"
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
    p.add_argument(
        "--xds",
        help="the control plane's ADS address: HOST:PORT, or several, comma-separated "
        f"(one per control-plane replica; sidecars fail over between them; default "
        f"{DEFAULT_XDS}, or with --join port 15012 of each --join host)",
    )
    p.add_argument(
        "--xds-root-cert",
        metavar="FILE",
        help="the mesh root (the control plane's DATA_DIR/ca/root-cert.pem): sidecars "
        "reach xDS and the CA over TLS, verifying the control plane against it "
        "(needed when --xds names port 15012)",
    )
    p.add_argument(
        "--gateway",
        action="store_true",
        help="also run an ingress gateway proxy (labels istio=ingressgateway, namespace "
        "istio-system): Gateways selecting it open their ports on --gateway-address",
    )
    p.add_argument("--gateway-address", default="127.0.0.1", help="where gateway ports bind")
    p.add_argument(
        "--address",
        default="127.0.0.1",
        help="this host's address: instances are registered with it and their sidecars' "
        "inbound ports bind there, so that other hosts reach them",
    )
    p.add_argument(
        "--locality",
        default="",
        metavar="REGION/ZONE/SUBZONE",
        help="this node's locality; an instance's labels topology.kubernetes.io/region, "
        "topology.kubernetes.io/zone, topology.istio.io/subzone (or istio-locality) win",
    )
    p.add_argument(
        "--join",
        metavar="URL[,URL...]",
        help="join the control plane(s) at these HTTPS URLs with a bootstrap token instead of "
        "the admin token: the agent gets a certificate of its own (system:node:NAME) and "
        "uses it from then on (with --token and --ca-cert-hash, as kubeadm join)",
    )
    p.add_argument(
        "--token",
        default="",
        metavar="ID.SECRET",
        help="a bootstrap token (pilotfish token create --bootstrap); needed for the first join",
    )
    p.add_argument(
        "--ca-cert-hash",
        metavar="sha256:HEX",
        help="the control plane CA's public key hash (printed at its start): the CA is "
        "trusted only if it matches",
    )
    p.set_defaults(handler=run_node)
    p = sub.add_parser("logs", parents=[common, state], help="an application's log")
    p.add_argument("workload", help="a Workload (all its instances) or one instance")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--sidecar", action="store_true", help="the sidecar's log instead")
    p.add_argument(
        "--tail", type=int, default=-1, help="the last N lines of each log (default -1: all)"
    )
    p.add_argument(
        "--since",
        type=_since,
        help="only lines newer than this (5s, 2m, 1h), by the time a line starts with",
    )
    p.set_defaults(handler=logs)
    p = sub.add_parser("scale", parents=[common], help="set a Workload's replicas")
    p.add_argument("workload", help="NAME or workload/NAME")
    p.add_argument("count", nargs="?", type=int, metavar="REPLICAS", help="as --replicas")
    p.add_argument("--replicas", type=int, help="the new number of replicas")
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
    from pilotfish.agent.bootstrap import XDS_TLS_PORT, Placement, XdsServer, checked_root_cert
    from pilotfish.agent.gateway import GatewaySpec
    from pilotfish.agent.node import NodeAgent
    from pilotfish.model.locality import check_locality

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    config, client = _control_plane(args)
    # The sidecars present the agent's own token to the ADS server (needed off loopback).
    # A joined node's pinned CA is the mesh root: its sidecars verify xDS with it too.
    root_file = args.xds_root_cert or (config.certificate_authority if args.join else None)
    try:
        root = checked_root_cert(root_file)
    except ValueError as e:
        raise NodeError(str(e)) from e
    try:
        addresses = args.xds or (_xds_of(args.join, XDS_TLS_PORT) if args.join else DEFAULT_XDS)
        xds = XdsServer.parse(addresses, config.token or "", config.server.split(",")[0], root)
    except ValueError as e:
        raise NodeError(f"--xds: {e}") from e
    if not root and XDS_TLS_PORT in xds.ports:
        raise NodeError(
            f"--xds: port {XDS_TLS_PORT} is xDS over TLS: give the mesh root to verify it "
            "with (--xds-root-cert FILE)"
        )
    try:
        ipaddress.ip_address(args.address)
    except ValueError as e:
        raise NodeError(f"--address: {e}") from e
    try:
        placement = Placement(args.address, check_locality(args.locality))
    except ValueError as e:
        raise NodeError(f"--locality: {e}") from e
    gateway = (
        GatewaySpec(address=args.gateway_address, locality=placement.locality)
        if args.gateway
        else None
    )
    agent = NodeAgent(client, args.node_name, _state(args), xds, gateway, placement)
    print(f"node {args.node_name}: running workloads, state in {_state(args)}", flush=True)
    agent.run(stop)
    return 0


def _xds_of(servers: str, port: int) -> str:
    """xDS over TLS on each control plane's host, as istiod serves 15012 beside its API."""
    hosts = [urlsplit(url.strip()).hostname or "" for url in servers.split(",") if url.strip()]
    return ",".join(f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in hosts)


def _control_plane(args: argparse.Namespace) -> tuple[ClientConfig, Client]:
    """The servers and the client the agent calls them with: the admin
    token's, or with --join the node's own certificate (renewed in the
    background) and no token at all."""
    if not args.join:
        config = load_client_config(args.server)
        return config, Client(config.server, config.token, ca_file=config.certificate_authority)
    from pilotfish.agent.join import JoinError, join
    from pilotfish.ca.pin import check_pin

    if not args.ca_cert_hash:
        raise NodeError("--join needs --ca-cert-hash sha256:HEX to verify the control plane")
    try:
        pin = check_pin(args.ca_cert_hash)
        credentials = join(_state(args), args.join, args.token, pin, args.node_name)
    except (ValueError, JoinError) as e:
        raise NodeError(f"--join: {e}") from e
    client = credentials.client(args.join)
    threading.Thread(
        target=_renew_forever, args=(client, args.node_name, credentials), daemon=True
    ).start()
    print(f"node {args.node_name}: joined as system:node:{args.node_name}", flush=True)
    return ClientConfig(args.join, None, str(credentials.ca_file)), client


def _renew_forever(client: Client, node: str, credentials: NodeCredentials) -> None:
    """Renew the node's certificate when due (70-90% of its life), with itself."""
    from pilotfish.agent.join import JoinError, renew_at, request_certificate

    due: dict[int, datetime] = {}  # by serial: the jittered time is drawn once per certificate
    while True:
        cert = credentials.certificate()
        when = due.setdefault(cert.serial_number, renew_at(cert)) if cert is not None else None
        delay = (when - datetime.now(UTC)).total_seconds() if when is not None else 0.0
        if delay > 0:
            time.sleep(min(delay, 3600.0))
            continue
        try:
            request_certificate(client, node, credentials)
            client.reload_tls()
        except JoinError as e:
            print(f"node {node}: renewing its certificate: {e}", flush=True)
            time.sleep(60.0)


def live_instances(state_dir: Path, workload: str, namespace: str) -> list[tuple[Path, Any]]:
    """(directory, pids) of the instances the agent runs for `workload` now."""
    return [
        (d, p) for d, p in _all_instances(state_dir, namespace) if p.get("workload") == workload
    ]


def logs(args: argparse.Namespace) -> int:
    namespace = args.namespace or "default"
    found = live_instances(_state(args), args.workload, namespace)
    found = found or [
        (d, p) for d, p in _all_instances(_state(args), namespace) if d.name == args.workload
    ]
    if not found:
        raise NodeError(f'no instance of workload "{args.workload}" runs on this node')
    name = "sidecar.log" if args.sidecar else "app.log"
    files = {d.name: (d / name).open("rb") for d, _ in found if (d / name).exists()}
    since = time.time() - args.since if args.since is not None else None
    try:
        first = True
        while True:
            for instance, log in files.items():
                lines = [line.decode("utf-8", "replace") for line in log.readlines()]
                if first:
                    lines = recent_lines(lines, args.tail, since, _mtime(log.name))
                prefix = f"[{instance}] " if len(files) > 1 else ""
                sys.stdout.write("".join(prefix + line for line in lines))
            sys.stdout.flush()
            if not args.follow:
                return 0
            first = False
            time.sleep(0.2)
    finally:
        for log in files.values():
            log.close()


def recent_lines(lines: list[str], tail: int, since: float | None, written: float) -> list[str]:
    """kubectl logs' --since then --tail. A line's time is the timestamp it
    starts with (ISO 8601, or Python logging's `2026-01-02 03:04:05,678`,
    local time), else that of the last stamped line before it; lines before
    any stamp count as written when the file last was."""
    if since is not None:
        kept, when = [], None
        for line in lines:
            when = line_time(line) or when
            if (when if when is not None else written) >= since:
                kept.append(line)
        lines = kept
    return lines if tail < 0 else lines[len(lines) - tail :] if tail else []


_STAMP = re.compile(
    r"^\[?(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)"
)


def line_time(line: str) -> float | None:
    match = _STAMP.match(line)
    if match is None:
        return None
    text = match.group(1).replace(",", ".").replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _mtime(path: str | bytes | int) -> float:
    try:
        return os.stat(path).st_mtime
    except (OSError, TypeError):
        return 0.0


def _since(text: str) -> float:
    from pilotfish.api.gotypes import parse_duration_ns

    try:
        return parse_duration_ns(text) / 1e9
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _all_instances(state_dir: Path, namespace: str) -> list[tuple[Path, Any]]:
    out = []
    for pids_file in sorted((state_dir / "instances" / namespace).glob("*/pids.json")):
        try:
            out.append((pids_file.parent, json.loads(pids_file.read_text())))
        except (OSError, ValueError):
            continue
    return out


def scale(args: argparse.Namespace) -> int:
    """kubectl scale: `scale NAME --replicas N` (or the older `scale NAME N`)."""
    if (args.count is None) == (args.replicas is None):
        raise CliError("give the number of replicas once: --replicas N (or as REPLICAS)")
    replicas = args.replicas if args.replicas is not None else args.count
    if replicas < 0:
        raise CliError(
            "The --replicas=COUNT flag is required, and COUNT must be greater than or equal to 0"
        )
    type_name, _, name = args.workload.rpartition("/")
    kind = registry().resolve("Workload")
    if type_name and registry().resolve(type_name) != kind:
        raise CliError(f'only Workloads scale here, not "{type_name}"')
    client = Client.from_config(args.server)
    workload = client.get(kind, name, args.namespace)
    workload["spec"]["replicas"] = replicas
    client.update(workload, manager="pilotfish-scale")
    print(f"workload.pilotfish.dev/{name} scaled")
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
