"""`pilotfish tap WORKLOAD`: live requests through a workload's sidecars, as
`linkerd viz tap` prints them, relayed by the control plane from the
sidecars' tap streams (controlplane/tap.py). Ctrl-C or `--count` ends it.

`tap_line` is pure: one event in, one line out.
"""

from __future__ import annotations

import argparse
import json
import sys

from pilotfish.client import Client
from pilotfish.objects import Obj
from pilotfish.proxy.tap import DEFAULT_MAX_RPS

Sub = argparse._SubParsersAction


def add_commands(sub: Sub[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "tap", parents=[common], help="stream live requests through a workload's sidecars"
    )
    p.add_argument("workload", help="the Workload whose sidecars to tap")
    p.add_argument("--path", default="", help="only requests whose path starts with this")
    p.add_argument("--method", default="", help="only requests with this HTTP method")
    p.add_argument(
        "--max-rps",
        type=float,
        default=DEFAULT_MAX_RPS,
        help=f"at most this many requests a second from each sidecar (default {DEFAULT_MAX_RPS:g})",
    )
    p.add_argument("--count", type=int, default=0, help="stop after this many requests")
    p.add_argument("-o", "--output", choices=["wide", "json"], default="wide")
    p.set_defaults(handler=tap)


def tap(args: argparse.Namespace) -> int:
    query = {"maxRps": f"{args.max_rps:g}"}
    for key, value in (("path", args.path), ("method", args.method)):
        if value:
            query[key] = value
    seen = 0
    namespace = args.namespace or "default"
    for event in Client.from_config(args.server).tap(namespace, args.workload, query):
        if "error" in event:
            print(f"error: the sidecar {event.get('node')} refused the tap: {event['error']}",
                  file=sys.stderr, flush=True)  # fmt: skip
            continue
        if "dropped" in event and "proxy" not in event:
            print(f"# {event['dropped']} requests dropped: the tap could not keep up", flush=True)
            continue
        seen += 1
        line = json.dumps(event) if args.output == "json" else tap_line(seen, event)
        print(line, flush=True)
        if args.count and seen >= args.count:
            break
    return 0


def tap_line(number: int, event: Obj) -> str:
    """linkerd tap's words: `req id=N proxy=in src=... dst=... tls=... :method=...`."""
    source, destination = event.get("source") or {}, event.get("destination") or {}
    tls = event.get("tls")
    fields = [
        f"req id={number}",
        f"proxy={event.get('proxy')}",
        f"src={source.get('address') or '-'}",
        f"dst={destination.get('address') or '-'}",
        f"tls={'-' if tls is None else str(tls).lower()}",
        f":method={event.get('method')}",
        f":authority={event.get('authority')}",
        f":path={event.get('path')}",
        f":status={event.get('status')}",
        f"latency={event.get('latencyMs')}ms",
        f"flags={event.get('flags')}",
    ]
    for side, who in (("src", source), ("dst", destination)):
        if who.get("workload"):
            fields.append(f"{side}_res=workload/{who['workload']}.{who.get('namespace')}")
        if who.get("identity"):
            fields.append(f"{side}_identity={who['identity']}")
    return " ".join(fields)
