"""`pilotfish get instances`: each running instance of each Workload, as
`kubectl get pods -o wide` shows pods, with what a user needs to reach it:
its node, address, the application's ports, the sidecar's inbound ports
and its admin port. The node agent writes the first part in the Workload's
status; the registry holds the ports the sidecar registered.

Also how `proxy-config` finds a proxy from a Workload or instance name."""

from __future__ import annotations

import argparse
import sys

from pilotfish.api.kinds import registry
from pilotfish.cli import output
from pilotfish.cli.commands import CliError
from pilotfish.client import Client
from pilotfish.objects import Obj

NAMES = ("instances", "instance", "inst")
HEADER = ["NAME", "WORKLOAD", "READY", "STATUS", "RESTARTS", "NODE", "ADDRESS"]
HEADER += ["APP PORTS", "SIDECAR PORTS", "ADMIN PORT"]
_WORKLOAD_PREFIXES = ("workload/", "workloads/", "wl/", "deployment/", "deploy/")


def get_instances(args: argparse.Namespace) -> int:
    if args.watch:
        raise CliError("--watch is not supported for instances")
    client = Client.from_config(args.server)
    namespace = None if args.all_namespaces else (args.namespace or "default")
    rows = instance_rows(client, namespace, args.selector)
    if args.name:
        rows = [r for r in rows if r["name"] in args.name]
    if args.output in ("json", "yaml"):
        listed = {"apiVersion": "v1", "kind": "List", "items": rows}
        print(output.to_json(listed) if args.output == "json" else output.to_yaml(listed), end="")
        return 0
    if args.output == "name":
        print("\n".join(f"instance/{r['name']}" for r in rows))
        return 0
    if args.output not in (None, "wide"):
        raise CliError(
            f'instances print as a table, -o wide, name, json or yaml: not "{args.output}"'
        )
    if not rows:
        where = "" if namespace is None else f" in {namespace} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
        return 0
    print(instances_table(rows, all_namespaces=namespace is None))
    return 0


def instance_rows(client: Client, namespace: str | None, selector: str | None = None) -> list[Obj]:
    """Each instance the Workloads' status lists, joined with its registration."""
    workloads = client.list(registry().resolve("Workload"), namespace, selector).get("items") or []
    registered = {(i["namespace"], i["name"]): i for i in client.instances()}
    rows = []
    for w in workloads:
        ns = w["metadata"].get("namespace", "default")
        for item in (w.get("status") or {}).get("instances") or []:
            entry = registered.get((ns, item["name"]), {})
            rows.append(
                {
                    "name": item["name"],
                    "namespace": ns,
                    "workload": w["metadata"]["name"],
                    "ready": bool(item.get("ready")),
                    "phase": item.get("phase", ""),
                    "restarts": int(item.get("restarts") or 0),
                    "node": item.get("node", ""),
                    "address": entry.get("address") or item.get("address", ""),
                    "appPorts": entry.get("appPorts") or {},
                    "sidecarPorts": entry.get("ports") or item.get("ports") or {},
                    "adminPort": entry.get("metricsPort"),
                }
            )
    return sorted(rows, key=lambda r: (r["namespace"], r["name"]))


def instances_table(rows: list[Obj], *, all_namespaces: bool) -> str:
    table = [(["NAMESPACE"] if all_namespaces else []) + HEADER]
    for r in rows:
        table.append(
            ([r["namespace"]] if all_namespaces else [])
            + [
                r["name"],
                r["workload"],
                "1/1" if r["ready"] else "0/1",
                r["phase"] or "<unknown>",
                str(r["restarts"]),
                r["node"] or "<none>",
                r["address"] or "<none>",
                _ports(r["appPorts"]),
                _ports(r["sidecarPorts"]),
                str(r["adminPort"]) if r["adminPort"] else "<none>",
            ]
        )
    return output.align(table)


def _ports(ports: Obj) -> str:
    return ",".join(f"{name}={port}" for name, port in sorted(ports.items())) or "<none>"


def proxy_id(client: Client, text: str, namespace: str) -> str:
    """What proxy-config asks the server for: an instance name or a Workload
    name (`productpage-v1`, `workload/productpage-v1`: its first instance, as
    istioctl takes a deployment) as NAME.NAMESPACE; a node id or NAME.NAMESPACE
    as given."""
    for prefix in _WORKLOAD_PREFIXES:
        if text.startswith(prefix):
            return _first_instance(client, text[len(prefix) :], namespace, required=True)
    if "~" in text or "." in text:
        return text
    instances = [i for i in client.instances() if i.get("namespace") == namespace]
    if any(i.get("name") == text for i in instances):
        return f"{text}.{namespace}"
    return _first_instance(client, text, namespace, required=False) or text


def _first_instance(client: Client, workload: str, namespace: str, *, required: bool) -> str:
    names = sorted(
        str(i["name"])
        for i in client.instances()
        if i.get("namespace") == namespace and i.get("workload") == workload
    )
    if not names and required:
        raise CliError(f'no instance of workload "{workload}" is registered in {namespace}')
    return f"{names[0]}.{namespace}" if names else ""
