"""`pilotfish proxy-status`, `proxy-config` and `register`: the mesh as the
control plane's xDS server and registry see it, shaped like istioctl's output."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from pilotfish.api.errors import ApiError
from pilotfish.cli import output
from pilotfish.cli.flags import pairs
from pilotfish.client import Client
from pilotfish.objects import Obj

STATUS_TYPES = ("CDS", "LDS", "EDS", "RDS")


# -- proxy-status ---------------------------------------------------------------------


def proxy_status(args: argparse.Namespace) -> int:
    items = Client.from_config(args.server).proxy_status()
    if args.proxy:
        items = [i for i in items if args.proxy in (i["proxy"], _pod(i["proxy"]))]
    if args.output == "json":
        print(output.to_json({"kind": "ProxyStatusList", "items": items}))
        return 0
    print(status_table(items) if items else "No proxies are connected.")
    for line in nack_lines(items):
        print(line, file=sys.stderr)
    return 0


def status_table(items: list[Obj]) -> str:
    rows = [["NAME", "TYPE", "NAMESPACE", *STATUS_TYPES]]
    for item in items:
        types = item.get("types") or {}
        rows.append(
            [
                item["proxy"],
                item.get("type", ""),
                item.get("namespace", ""),
                *[_state(types.get(t)) for t in STATUS_TYPES],
            ]
        )
    return output.align(rows)


def _state(status: Obj | None) -> str:
    if status is None:
        return "NOT SENT"
    state = str(status.get("state", ""))
    if state == "STALE":
        return "STALE (Never Acknowledged)" if not status.get("ackedVersion") else "STALE"
    return state


def nack_lines(items: list[Obj]) -> list[str]:
    """One line per NACK still standing: the proxy, the type and the reason."""
    out = []
    for item in items:
        for short, status in sorted((item.get("types") or {}).items()):
            nack = status.get("nack")
            if nack and status.get("state") == "NACK":
                out.append(f"NACK {item['proxy']} {short}: {nack.get('message', '')}")
    return out


def _pod(node_id: str) -> str:
    parts = node_id.split("~")
    return parts[2] if len(parts) == 4 else node_id


# -- proxy-config ---------------------------------------------------------------------


def proxy_config(args: argparse.Namespace) -> int:
    from pilotfish.cli.instances import proxy_id

    client = Client.from_config(args.server)
    proxy = proxy_id(client, args.proxy, args.namespace or "default")
    if args.type == "secret":  # the sidecar's own, not what the control plane sent
        from pilotfish.cli.identity import proxy_config_secret

        return proxy_config_secret(client, proxy, args.output)
    dump = client.proxy_config(proxy, args.type)
    resources: list[Obj] = dump.get("resources") or []
    if args.output == "json":
        print(output.to_json(resources))
    elif args.output == "yaml":
        print(output.to_yaml(resources), end="")
    else:
        print(config_table(args.type, resources))
    return 0


def config_table(kind: str, resources: list[Obj]) -> str:
    header, rows = _TABLES[kind]
    body = [row for resource in resources for row in rows(resource)]
    return output.align([header, *body])


def _listener_rows(listener: Obj) -> list[list[str]]:
    """One row per filter chain, as istioctl shows them: what its last
    (terminal) filter does, not every network filter before it."""
    if "apiListener" in listener:
        manager = listener["apiListener"].get("apiListener") or {}
        route = (manager.get("rds") or {}).get("routeConfigName", "")
        return [[listener["name"], "-", "-", "API", f"Route: {route}"]]
    address = (listener.get("address") or {}).get("socketAddress") or {}
    where = [listener["name"], str(address.get("address", "")), str(address.get("portValue", ""))]
    return [where + _chain_destination(chain) for chain in listener.get("filterChains") or [{}]]


def _chain_destination(chain: Obj) -> list[str]:
    """[TYPE, DESTINATION] of a filter chain, from its terminal filter."""
    config = ((chain.get("filters") or [{}])[-1]).get("typedConfig") or {}
    if "httpFilters" in config:
        route = (config.get("rds") or {}).get("routeConfigName") or (
            (config.get("routeConfig") or {}).get("name", "")
        )
        return ["HTTP", f"Route: {route}" if route else ""]
    weighted = (config.get("weightedClusters") or {}).get("clusters") or []
    if weighted:
        shares = ", ".join(f"{c.get('name', '')} ({c.get('weight', 0)})" for c in weighted)
        return ["TCP", f"WeightedClusters: {shares}"]
    cluster = config.get("cluster")
    return ["TCP", f"Cluster: {cluster}" if cluster else ""]


def _route_rows(config: Obj) -> list[list[str]]:
    rows = []
    for vhost in config.get("virtualHosts") or []:
        domains = vhost.get("domains") or []
        shown = ", ".join(domains[:2]) + (f" + {len(domains) - 2} more" if len(domains) > 2 else "")
        for route in vhost.get("routes") or []:
            rows.append(
                [
                    config.get("name", ""),
                    vhost.get("name", ""),
                    shown,
                    _match(route),
                    _action(route),
                ]
            )
    return rows


def _match(route: Obj) -> str:
    match = route.get("match") or {}
    for key in ("prefix", "path", "pathSeparatedPrefix"):
        if key in match:
            return str(match[key]) + (" +headers" if match.get("headers") else "")
    if "safeRegex" in match:
        return str(match["safeRegex"].get("regex", ""))
    return "*"


def _action(route: Obj) -> str:
    action = route.get("route") or {}
    if "cluster" in action:
        return str(action["cluster"])
    if "weightedClusters" in action:
        parts = action["weightedClusters"].get("clusters") or []
        return ", ".join(f"{c['name']} {c.get('weight', 0)}" for c in parts)
    if "redirect" in route:
        return "redirect"
    if "directResponse" in route:
        return f"direct {route['directResponse'].get('status', '')}"
    return ""


def _cluster_rows(cluster: Obj) -> list[list[str]]:
    parts = str(cluster.get("name", "")).split("|")
    direction, port, subset, host = parts if len(parts) == 4 else ("", "", "", cluster.get("name"))
    kind = str(cluster.get("type", "EDS" if "edsClusterConfig" in cluster else "STATIC"))
    return [[str(host), port, subset or "-", direction or "-", kind]]


def _endpoint_rows(assignment: Obj) -> list[list[str]]:
    rows = []
    for group in assignment.get("endpoints") or []:
        for lb in group.get("lbEndpoints") or []:
            address = ((lb.get("endpoint") or {}).get("address") or {}).get("socketAddress") or {}
            rows.append(
                [
                    f"{address.get('address', '')}:{address.get('portValue', '')}",
                    str(lb.get("healthStatus", "UNKNOWN")),
                    str(assignment.get("clusterName", "")),
                ]
            )
    return rows


_TABLES = {
    "listeners": (["NAME", "ADDRESS", "PORT", "TYPE", "DESTINATION"], _listener_rows),
    "routes": (["NAME", "VHOST", "DOMAINS", "MATCH", "DESTINATION"], _route_rows),
    "clusters": (["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE"], _cluster_rows),
    "endpoints": (["ENDPOINT", "STATUS", "CLUSTER"], _endpoint_rows),
}
CONFIG_TYPES = (*_TABLES, "secret")


# -- register ---------------------------------------------------------------------------


def register(args: argparse.Namespace) -> int:
    """Register once, or with --heartbeat keep renewing until stopped, then
    deregister (a killed process just stops renewing: its lease runs out)."""
    client = Client.from_config(args.server)
    body = registration(args)
    answer = client.register_instance(body)
    print(
        f"instance/{answer['name']} registered ({answer['address']}, ttl {answer['ttlSeconds']}s)"
    )
    if not args.heartbeat:
        return 0
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)
    while not stop.wait(max(0.2, body["ttlSeconds"] / 3)):
        try:
            client.register_instance(body)
        except ApiError as e:  # keep trying: the control plane may be restarting
            print(f"warning: heartbeat failed: {e.message}", file=sys.stderr)
    client.deregister_instance(body["namespace"], body["name"])
    return 0


def registration(args: argparse.Namespace) -> Obj:
    return {
        "name": args.name,
        "namespace": args.namespace or "default",
        "workload": args.workload or args.name,
        "address": args.address,
        "ports": pairs(args.port, "--port", int),
        "labels": pairs(args.label, "--label", str),
        "serviceAccount": args.service_account,
        "healthy": not args.unhealthy,
        "locality": args.locality,
        "ttlSeconds": args.ttl,
    }
