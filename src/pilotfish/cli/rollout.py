"""`pilotfish rollout`: follow and steer a Canary's release.

    status NAME [--watch]   phase, traffic or iterations with a bar, failed
                            checks, the last analysis against its thresholds,
                            the latest events
    promote NAME            skip the rest of the analysis and promote
    abort NAME              roll back now
    pause NAME / resume     Flagger's spec.suspend

promote and abort are requests the controller acts on at its next step and
then clears (annotations rollout.pilotfish.dev/promote and /abort).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

from pilotfish.api.kinds import registry
from pilotfish.cli import output
from pilotfish.cli.commands import CliError, events_of
from pilotfish.client import Client
from pilotfish.rollout.canary import Canary, Strategy, read_canary

Obj = dict[str, Any]
MANAGER = "pilotfish-rollout"
REQUEST = "rollout.pilotfish.dev/"
DONE = ("Succeeded", "Failed")
BAR_WIDTH = 30
RECENT_EVENTS = 5
Sub = argparse._SubParsersAction


def add_commands(sub: Sub[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    actions = sub.add_parser("rollout", help="follow and steer Canary releases")
    verbs = actions.add_subparsers(metavar="ACTION")
    p = verbs.add_parser("status", parents=[common], help="a release's progress")
    p.add_argument("name")
    p.add_argument("-w", "--watch", action="store_true", help="redraw until it ends")
    p.set_defaults(handler=status)
    for verb, text in (
        ("promote", "skip the rest of the analysis and promote the canary"),
        ("abort", "roll the canary back now"),
        ("pause", "suspend the analysis where it is (spec.suspend)"),
        ("resume", "resume a suspended analysis"),
    ):
        p = verbs.add_parser(verb, parents=[common], help=text)
        p.add_argument("name")
        p.set_defaults(handler=steer, verb=verb)


def _client(args: argparse.Namespace) -> Client:
    return Client.from_config(args.server)


def _canary(client: Client, args: argparse.Namespace) -> Obj:
    return client.get(registry().resolve("Canary"), args.name, args.namespace or "default")


# -- status ------------------------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    client = _client(args)
    if not args.watch:
        obj = _canary(client, args)
        print(status_text(obj, events_of(client, obj)))
        return 0
    tty, shown, started = sys.stdout.isatty(), "", time.monotonic()
    ran = False
    while True:
        obj = _canary(client, args)
        text = status_text(obj, events_of(client, obj))
        if text != shown:
            print(("\x1b[H\x1b[2J" if tty else "\n") + text, flush=True)
            shown = text
        phase = (obj.get("status") or {}).get("phase")
        ran = ran or phase not in DONE
        if phase in DONE and (ran or time.monotonic() - started > _patience(obj)):
            return 0 if phase == "Succeeded" else 1
        time.sleep(1.0)


def _patience(obj: Obj) -> float:
    """How long a watch begun on a finished release waits for a new one to
    start (a release just applied is noticed within one interval)."""
    return 2 * read_canary(obj).interval_s + 2


def status_text(obj: Obj, events: list[Obj], now: datetime | None = None) -> str:
    try:
        canary = read_canary(obj)
    except (ValueError, KeyError) as e:
        raise CliError(f"canary {obj['metadata']['name']}: {e}") from e
    st = obj.get("status") or {}
    phase = st.get("phase") or "Initializing"
    condition: Obj = next(iter(st.get("conditions") or []), {})
    lines = [
        f"Canary:         {canary.name}.{canary.namespace} "
        f"(target {canary.target}, primary {canary.primary})",
        f"Phase:          {phase}" + (f" - {condition['message']}" if condition else ""),
        f"Strategy:       {canary.strategy.value}, every {_seconds(canary.interval_s)}"
        + (", suspended" if canary.suspended else ""),
        _progress(canary, st),
        f"Failed checks:  {int(st.get('failedChecks') or 0)}/{canary.threshold}",
    ]
    lines += _analysis(st.get("lastAnalysis"), now)
    lines += _recent(events, now)
    return "\n".join(lines)


def _progress(canary: Canary, st: Obj) -> str:
    if canary.strategy is Strategy.CANARY:
        weight = int(st.get("canaryWeight") or 0)
        bar = _bar(weight, 100)
        return f"Traffic:        {bar} {weight}% to the canary (max {canary.max_weight}%)"
    done = int(st.get("iterations") or 0)
    return f"Iterations:     {_bar(done, canary.iterations)} {done}/{canary.iterations}"


def _bar(done: int, total: int) -> str:
    filled = 0 if total <= 0 else round(BAR_WIDTH * min(done, total) / total)
    return "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]"


def _analysis(record: Obj | None, now: datetime | None) -> list[str]:
    if not record or not record.get("metrics"):
        return ["Last analysis:  none yet"]
    lines = [f"Last analysis:  {output.age(record.get('time'), now)} ago"]
    for m in record["metrics"]:
        value = m.get("value")
        bounds = " ".join(
            f"{word} {m[key]:g}"
            for key, word in (("min", "min"), ("max", "max"))
            if m.get(key) is not None
        )
        if value is None:
            lines.append(f"  FAIL  {m['name']:<24} no value: {m.get('message') or 'no data'}")
            continue
        ok = (m.get("min") is None or value >= m["min"]) and (
            m.get("max") is None or value <= m["max"]
        )
        lines.append(f"  {'ok  ' if ok else 'FAIL'}  {m['name']:<24} {value:>10.2f}   ({bounds})")
    return lines


def _recent(events: list[Obj], now: datetime | None) -> list[str]:
    if not events:
        return ["Events:         none"]
    lines = ["Events:"]
    for e in events[-RECENT_EVENTS:]:
        mark = "!" if e.get("type") == "Warning" else " "
        lines.append(
            f"  {mark} {output.age(e.get('lastTimestamp'), now):>4}  {e.get('message', '')}"
        )
    return lines


def _seconds(value: float) -> str:
    return f"{value:g}s"


# -- steering ----------------------------------------------------------------------------------


def steer(args: argparse.Namespace) -> int:
    client = _client(args)
    obj = _canary(client, args)
    meta = obj["metadata"]
    partial: Obj = {
        "apiVersion": obj["apiVersion"],
        "kind": "Canary",
        "metadata": {"name": meta["name"], "namespace": meta.get("namespace", "default")},
    }
    if args.verb in ("pause", "resume"):
        partial["spec"] = {"suspend": args.verb == "pause"}
        said = "paused" if args.verb == "pause" else "resumed"
    else:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        partial["metadata"]["annotations"] = {REQUEST + args.verb: now}
        said = f"{args.verb} requested (the controller acts at its next step)"
    field_owner = "suspend" if args.verb in ("pause", "resume") else args.verb
    client.apply(partial, manager=f"{MANAGER}-{field_owner}", force=True)
    print(f"canary.flagger.app/{meta['name']} {said}")
    return 0
