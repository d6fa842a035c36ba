"""`pilotfish rollout`: follow and steer a Canary's release.

    status NAME [--watch]   phase, traffic (or iterations) with a bar, failed
                            checks, the last analysis against its thresholds,
                            the Promoted condition's message, the latest events
    promote NAME            skip the rest of the analysis and promote
    abort NAME              roll back now
    pause NAME / resume     Flagger's own switch, spec.suspend

promote and abort leave a request on the Canary, an annotation
(rollout.pilotfish.dev/promote or /abort) holding the time, which the
controller acts on at its next step and then removes. All four are
server-side applies by the field manager `pilotfish-rollout`; since an apply
drops the fields its manager stops sending, each one sends again what that
manager set before and is still there (a pause survives a promote).

`status_text` is pure: objects and a time in, text out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

from pilotfish.api.gotypes import rfc3339
from pilotfish.api.kinds import Kind, registry
from pilotfish.cli import output
from pilotfish.cli.commands import event_age, events_of
from pilotfish.client import Client
from pilotfish.objects import Obj
from pilotfish.rollout.canary import ANALYSIS_INTERVAL_S, Canary, analysis_of, read_canary
from pilotfish.rollout.phases import ANALYSING
from pilotfish.rollout.scheduler import REQUEST_ANNOTATION
from pilotfish.rollout.status import CanaryStatus
from pilotfish.rollout.types import MetricResult

Sub = argparse._SubParsersAction
FIELD_MANAGER = "pilotfish-rollout"
REQUESTS = ("promote", "abort")
DONE = ("Succeeded", "Failed")
BAR_WIDTH = 30
RECENT_EVENTS = 5
WATCH_EVERY_S = 1.0
_CLEAR = "\x1b[H\x1b[2J"


def add_commands(sub: Sub[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    rollout = sub.add_parser("rollout", help="follow and steer Canary releases")
    verbs = rollout.add_subparsers(metavar="ACTION")
    p = verbs.add_parser("status", parents=[common], help="a release's progress")
    p.add_argument("name", help="the Canary's name")
    p.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="redraw every second until the release Succeeded (exit 0) or Failed (exit 1); "
        "a release already over is given two analysis intervals to start again",
    )
    p.set_defaults(handler=status)
    for verb, handler, text in (
        ("promote", promote, "skip the rest of the analysis and promote the canary"),
        ("abort", abort, "roll the canary back now"),
        ("pause", pause, "suspend the analysis where it is (spec.suspend)"),
        ("resume", resume, "resume a suspended analysis"),
    ):
        p = verbs.add_parser(verb, parents=[common], help=text)
        p.add_argument("name", help="the Canary's name")
        p.set_defaults(handler=handler)


def _canary_kind() -> Kind:
    return registry().resolve("Canary")


def _get(args: argparse.Namespace) -> tuple[Client, Obj]:
    client = Client.from_config(args.server)
    return client, client.get(_canary_kind(), args.name, args.namespace or "default")


# -- status -------------------------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    client, canary = _get(args)
    if not args.watch:
        print(status_text(canary, events_of(client, canary), datetime.now(UTC)))
        return 0
    try:
        return _watch(client, args, sys.stdout)
    except KeyboardInterrupt:
        return 0


def _watch(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """Redraw in place on a terminal; elsewhere, print a frame when what it
    shows changed. A release seen over at once may be one about to start
    again (just applied), so it is given two intervals to do so."""
    tty, shown, started, ran = out.isatty(), "", time.monotonic(), False
    while True:
        canary = client.get(_canary_kind(), args.name, args.namespace or "default")
        events = events_of(client, canary)
        phase = (canary.get("status") or {}).get("phase")
        ran = ran or phase not in DONE
        if phase in DONE and (ran or time.monotonic() - started > _patience(canary)):
            out.write(("\n" if shown and not tty else "") + _frame(canary, events, tty) + "\n")
            return 0 if phase == "Succeeded" else 1
        frame = _frame(canary, events, tty)
        if tty or _state(canary, events) != shown:
            out.write(("\n" if shown and not tty else "") + frame + "\n")
            out.flush()
            shown = _state(canary, events)
        time.sleep(WATCH_EVERY_S)


def _frame(canary: Obj, events: list[Obj], tty: bool) -> str:
    text = status_text(canary, events, datetime.now(UTC))
    return _CLEAR + text if tty else text


def _patience(canary: Obj) -> float:
    """How long a watch begun on a finished release waits for a new one: the
    controller notices a new revision within one interval."""
    try:
        interval = read_canary(canary).interval_s
    except (ValueError, KeyError, TypeError):
        interval = ANALYSIS_INTERVAL_S
    return 2 * interval + 2


def _state(canary: Obj, events: list[Obj]) -> str:
    """What a frame shows, without the ages that change every second."""
    shown = [canary.get("status"), (canary.get("spec") or {}).get("suspend"), _requests(canary)]
    shown += [(e.get("metadata", {}).get("name"), e.get("count")) for e in events]
    return json.dumps(shown, sort_keys=True, default=str)


def status_text(canary: Obj, events: list[Obj], now: datetime | None = None) -> str:
    """One Canary's release, as `kubectl argo rollouts get` lays one out."""
    meta, spec = canary.get("metadata") or {}, canary.get("spec") or {}
    st = CanaryStatus.of(canary.get("status"))
    target = spec.get("targetRef") or {}
    lines = [
        _field("Name", str(meta.get("name", ""))),
        _field("Namespace", str(meta.get("namespace") or "default")),
        _field("Target", f"{target.get('kind', '?')}/{target.get('name', '?')}"),
        _field("Phase", _phase(st, spec)),
        *_condition_lines(st),
        *_progress_lines(canary),
        *_request_lines(canary, now),
        *_analysis_lines(st, spec, now),
        *_event_lines(events, now),
    ]
    return "\n".join(lines)


def _field(name: str, value: str) -> str:
    return f"{name + ':':<16}{value}"


def _phase(st: CanaryStatus, spec: Obj) -> str:
    phase = st.phase or "Initializing"
    return f"{phase} (paused: spec.suspend is true)" if spec.get("suspend") else phase


def _condition_lines(st: CanaryStatus) -> list[str]:
    promoted = next((c for c in st.conditions if c.type == "Promoted"), None)
    if promoted is None:
        return []
    return [_field("Message", promoted.message or promoted.reason)]


def _progress_lines(canary: Obj) -> list[str]:
    st = CanaryStatus.of(canary.get("status"))
    try:
        parsed = read_canary(canary)
    except (ValueError, KeyError, TypeError) as e:
        return [_field("Spec", f"cannot be read: {e}")]
    failed = f"{st.failed_checks}/{parsed.threshold}"
    return [
        _field("Strategy", f"{_strategy(parsed)}, every {_interval(parsed)}"),
        _progress(parsed, st),
        _field("Failed checks", failed),
    ]


def _strategy(canary: Canary) -> str:
    if canary.iterations <= 0:
        return "canary"
    return (
        "A/B testing" if canary.match else "blue/green" + (" (mirrored)" if canary.mirror else "")
    )


def _interval(canary: Canary) -> str:
    given = canary.analysis.get("interval")
    return str(given) if given else f"{canary.interval_s:g}s"


def _progress(canary: Canary, st: CanaryStatus) -> str:
    if canary.iterations > 0:
        done = st.iterations
        bar = progress_bar(done, canary.iterations)
        return _field("Iterations", f"{bar} {done}/{canary.iterations}")
    weight = st.canary_weight
    bar = progress_bar(weight, canary.max_weight)
    return _field("Traffic", f"{bar} {weight}% to the canary (max {canary.max_weight}%)")


def progress_bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """`[#########---------------------]`: `done` out of `total`, in `width` cells."""
    share = 0.0 if total <= 0 else min(1.0, max(0.0, done / total))
    filled = round(share * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _request_lines(canary: Obj, now: datetime | None) -> list[str]:
    return [
        _field("Requested", f"{what}, {output.age(at, now)} ago (not yet acted on)")
        for what, at in _requests(canary).items()
    ]


def _requests(canary: Obj) -> dict[str, str]:
    annotations = (canary.get("metadata") or {}).get("annotations") or {}
    keys = {r: REQUEST_ANNOTATION + r for r in REQUESTS}
    return {r: str(annotations[k]) for r, k in keys.items() if k in annotations}


def _analysis_lines(st: CanaryStatus, spec: Obj, now: datetime | None) -> list[str]:
    record = st.last_analysis
    if record is None or not record.get("metrics"):
        return [_field("Last analysis", "none yet")]
    when = str(record.get("time") or "")
    lines = [_field("Last analysis", f"{output.age(when or None, now)} ago ({when})")]
    ranges = _threshold_ranges(spec)
    rows = []
    for metric in record["metrics"]:
        result = _metric_result(metric, ranges)
        verdict = "ok" if result.ok else "FAIL"
        row = [verdict, result.name, _number(result.value), f"({_range(result)})"]
        rows.append([*row, result.message if result.message and not result.ok else ""])
    return lines + ["  " + line for line in output.align(rows).splitlines()]


def _threshold_ranges(spec: Obj) -> dict[str, Obj]:
    metrics = analysis_of(spec).get("metrics") or []
    return {str(m.get("name")): m.get("thresholdRange") or {} for m in metrics if m.get("name")}


def _metric_result(metric: Obj, ranges: dict[str, Obj]) -> MetricResult:
    """A lastAnalysis entry; a bound it does not carry comes from the spec."""
    name = str(metric.get("name") or "")
    spec_range = ranges.get(name, {})
    low = metric["min"] if "min" in metric else spec_range.get("min")
    high = metric["max"] if "max" in metric else spec_range.get("max")
    return MetricResult(
        name=name,
        value=_float(metric.get("value")),
        min=_float(low),
        max=_float(high),
        message=" ".join(str(metric.get("message") or "").split()),
    )


def _range(result: MetricResult) -> str:
    bounds = [
        f"{word} {_number(value)}"
        for word, value in (("min", result.min), ("max", result.max))
        if value is not None
    ]
    return " ".join(bounds) or "no threshold"


def _number(value: float | None) -> str:
    return "no data" if value is None else f"{value:.6g}"


def _float(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(str(value))
    except ValueError:
        return None


def _event_lines(events: list[Obj], now: datetime | None) -> list[str]:
    if not events:
        return [_field("Events", "none")]
    recent = events[-RECENT_EVENTS:]
    rows = [
        [event_age(e, now), str(e.get("type") or ""), " ".join(str(e.get("message") or "").split())]
        for e in recent
    ]
    title = f"Events (the last {len(recent)} of {len(events)}):"
    return [title] + ["  " + line for line in output.align(rows).splitlines()]


# -- steering -------------------------------------------------------------------------------


def promote(args: argparse.Namespace) -> int:
    return _request(args, "promote", "promotion requested")


def abort(args: argparse.Namespace) -> int:
    return _request(args, "abort", "abort requested")


def pause(args: argparse.Namespace) -> int:
    return _suspend(args, True, "paused")


def resume(args: argparse.Namespace) -> int:
    return _suspend(args, False, "resumed")


def _request(args: argparse.Namespace, what: str, said: str) -> int:
    client, live = _get(args)
    config = owned_config(live)
    annotations = config["metadata"].setdefault("annotations", {})
    annotations[REQUEST_ANNOTATION + what] = rfc3339(time.time())
    client.apply(config, manager=FIELD_MANAGER, force=True)
    phase = CanaryStatus.of(live.get("status")).phase or "Initializing"
    when = "at its next step" if phase in ANALYSING else f"when an analysis runs (now {phase})"
    print(f"{output.resource_name(_canary_kind(), args.name)} {said}: the controller acts {when}")
    return 0


def _suspend(args: argparse.Namespace, suspend: bool, said: str) -> int:
    client, live = _get(args)
    config = owned_config(live)
    config["spec"] = {"suspend": suspend}
    client.apply(config, manager=FIELD_MANAGER, force=True)
    print(f"{output.resource_name(_canary_kind(), args.name)} {said}")
    return 0


def owned_config(live: Obj) -> Obj:
    """The partial Canary that `pilotfish-rollout` applied before, with the
    values it has now: what that manager must send again to keep it."""
    meta, spec = live.get("metadata") or {}, live.get("spec") or {}
    config: Obj = {
        "apiVersion": live.get("apiVersion") or "flagger.app/v1beta1",
        "kind": "Canary",
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace") or "default"},
    }
    fields = _managed_fields(meta)
    owned = (fields.get("f:metadata") or {}).get("f:annotations") or {}
    annotations = meta.get("annotations") or {}
    kept = {k[2:]: annotations[k[2:]] for k in owned if k.startswith("f:") and k[2:] in annotations}
    if kept:
        config["metadata"]["annotations"] = kept
    if "f:suspend" in (fields.get("f:spec") or {}) and "suspend" in spec:
        config["spec"] = {"suspend": spec["suspend"]}
    return config


def _managed_fields(meta: Obj) -> Obj:
    for entry in meta.get("managedFields") or []:
        if entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply":
            fields = entry.get("fieldsV1")
            return fields if isinstance(fields, dict) else {}
    return {}
