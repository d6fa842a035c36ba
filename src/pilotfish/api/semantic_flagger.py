"""Rules of Flagger's Canary that its schema cannot state, checked when the
Canary is applied, so a release that could never run is refused with the
reason instead of stalling later (Flagger itself finds these at run time)."""

from __future__ import annotations

from typing import Any

from pilotfish.api.checks import duration
from pilotfish.api.semantic import Errors, Rules
from pilotfish.objects import Obj

BUILTIN_METRICS = ("request-success-rate", "request-duration")


def canary(obj: Obj, errors: Errors) -> None:
    spec = obj.get("spec") or {}
    _target(spec.get("targetRef") or {}, errors)
    analysis = spec.get("analysis")
    if isinstance(analysis, dict):
        _strategy("spec.analysis", analysis, bool(spec.get("skipAnalysis")), errors)
        _durations("spec.analysis", analysis, errors)
        for i, metric in enumerate(analysis.get("metrics") or []):
            _metric(f"spec.analysis.metrics[{i}]", metric, errors)


# What a targetRef may name: Flagger's spelling, which pilotfish maps to its
# Workload of that name, or the Workload itself.
TARGETS = {"Deployment": "apps/v1", "Workload": "pilotfish.dev/v1alpha1"}


def _target(target: Obj, errors: Errors) -> None:
    kind = target.get("kind")
    if kind not in TARGETS:
        errors.invalid(
            "spec.targetRef.kind",
            kind,
            "pilotfish releases Workloads: use kind Deployment (apps/v1), which names a "
            "Workload, or kind Workload (pilotfish.dev/v1alpha1)",
        )
    elif target.get("apiVersion") != TARGETS[kind]:
        errors.invalid(
            "spec.targetRef.apiVersion",
            target.get("apiVersion"),
            f"a {kind} target is {TARGETS[kind]}",
        )


def _strategy(path: str, analysis: Obj, skip: bool, errors: Errors) -> None:
    iterations = int(analysis.get("iterations") or 0)
    steps = analysis.get("stepWeights") or []
    if analysis.get("match") and not iterations:
        errors.add(f"{path}.match", "Required value: A/B testing (match) needs iterations")
    if analysis.get("mirror") and analysis.get("match"):
        errors.add(
            f"{path}.mirror",
            "Invalid value: true: mirroring is for blue/green and canary releases, not A/B "
            "testing (match)",
        )
    if iterations or skip:
        return
    if any(not 0 < w <= 100 for w in steps) or steps != sorted(set(steps)):
        errors.invalid(f"{path}.stepWeights", steps, "must rise from 1 to at most 100")
    for name in ("stepWeight", "maxWeight"):
        value = analysis.get(name)
        if value is not None and not 0 < value <= 100:
            errors.invalid(f"{path}.{name}", value, "must be between 1 and 100")


def _durations(path: str, analysis: Obj, errors: Errors) -> None:
    _duration(f"{path}.interval", analysis.get("interval"), errors)
    for i, metric in enumerate(analysis.get("metrics") or []):
        _duration(f"{path}.metrics[{i}].interval", metric.get("interval"), errors)
    for i, hook in enumerate(analysis.get("webhooks") or []):
        _duration(f"{path}.webhooks[{i}].timeout", hook.get("timeout"), errors)


def _duration(path: str, value: Any, errors: Errors) -> None:
    if isinstance(value, str) and value:
        errors.invalid(path, value, *duration(value))


def _metric(path: str, metric: Obj, errors: Errors) -> None:
    if metric.get("templateRef") or metric.get("name") in BUILTIN_METRICS:
        return
    errors.invalid(
        f"{path}.name",
        metric.get("name"),
        f"is not a built-in metric ({', '.join(BUILTIN_METRICS)}): set templateRef "
        "to a MetricTemplate",
    )


RULES: dict[tuple[str, str], Rules] = {("flagger.app", "Canary"): canary}
