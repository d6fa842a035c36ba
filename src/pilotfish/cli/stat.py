"""`pilotfish stat KIND [NAME]`: success rate, request rate, latency and TCP
connections per workload, service or Canary leaf, as `linkerd viz stat`
prints them, from the metrics the control plane keeps (GET /dashboard/api/stat).

`stat_table` is pure: rows in, text out.
"""

from __future__ import annotations

import argparse
import json

from pilotfish.cli import output
from pilotfish.client import Client
from pilotfish.dashboard.stat import KINDS
from pilotfish.objects import Obj

Sub = argparse._SubParsersAction
COLUMNS = ("MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN")
CANARY_COLUMNS = ("LEAF", "WEIGHT", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99")


def add_commands(sub: Sub[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "stat", parents=[common], help="success rate, request rate and latency, as linkerd's"
    )
    p.add_argument("kind", choices=KINDS)
    p.add_argument("name", nargs="?", help="one resource (default: all)")
    p.add_argument("--from", dest="source", metavar="WORKLOAD", help="only calls from WORKLOAD")
    p.add_argument(
        "--to", metavar="NAME", help="what KIND sent to the workload or service NAME instead"
    )
    p.add_argument(
        "-t", "--time-window", default="1m", help="the window, a duration up to 1h (default 1m)"
    )
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(handler=stat)


def stat(args: argparse.Namespace) -> int:
    query = {"kind": args.kind, "window": args.time_window}
    if not args.all_namespaces:
        query["namespace"] = args.namespace or "default"
    for key, value in (("name", args.name), ("from", args.source), ("to", args.to)):
        if value:
            query[key] = value
    answer = Client.from_config(args.server).stat(query)
    rows = answer.get("rows") or []
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"No traffic found in namespace {query.get('namespace', 'any')}.")
    else:
        print(stat_table(rows, args.kind == "canaries", args.all_namespaces))
    return 0


def stat_table(rows: list[Obj], canaries: bool, namespaces: bool) -> str:
    head = ["NAMESPACE"] if namespaces else []
    head += ["NAME", *(CANARY_COLUMNS if canaries else COLUMNS)]
    lines = [head]
    for row in rows:
        cells = [row["namespace"]] if namespaces else []
        cells.append(row["name"])
        if canaries:
            cells += [row["leaf"], str(row["weight"])]
        else:
            cells.append(row.get("meshed") or "-")
        cells += [
            _percent(row.get("success")),
            _rps(row.get("rps")),
            *(_ms(row.get(f"latency_ms_p{q}")) for q in (50, 95, 99)),
        ]
        if not canaries:
            cells.append(str(row.get("tcp_open_connections", 0)))
        lines.append(cells)
    return output.align(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _rps(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}rps"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms"
