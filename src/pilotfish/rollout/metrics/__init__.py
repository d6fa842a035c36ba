"""Measuring a Canary's analysis metrics. The two built-ins come from the
mesh itself (builtin.py); anything else is a MetricTemplate, queried with
its provider (prometheus.py). A measurement never raises: no value, and
why, is a result like any other, and the analysis counts it as a failed
check, as Flagger does."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from pilotfish.api.gotypes import parse_duration_ns
from pilotfish.rollout.metrics.builtin import MeshMetrics
from pilotfish.rollout.metrics.prometheus import QueryError, instant_query
from pilotfish.rollout.metrics.templates import TemplateError, render
from pilotfish.rollout.types import MetricResult

Obj = dict[str, Any]
Lookup = Callable[[str, str, str], Obj | None]  # kind, namespace, name
DEFAULT_INTERVAL = "1m"
SUCCESS_RATE, DURATION = "request-success-rate", "request-duration"

__all__ = ["DURATION", "SUCCESS_RATE", "MeshMetrics", "measure"]


def measure(canary: Obj, metric: Obj, *, mesh: MeshMetrics, lookup: Lookup) -> MetricResult:
    name = str(metric.get("name", ""))
    bounds = metric.get("thresholdRange") or {}
    low, high = _number(bounds.get("min")), _number(bounds.get("max"))
    try:
        value = _value(canary, metric, mesh, lookup)
    except _NoValue as e:
        return MetricResult(name, None, low, high, f"no values found for {name}: {e}")
    return MetricResult(name, value, low, high)


class _NoValue(Exception):
    pass


def _value(canary: Obj, metric: Obj, mesh: MeshMetrics, lookup: Lookup) -> float:
    name = metric.get("name", "")
    interval = str(metric.get("interval") or DEFAULT_INTERVAL)
    if metric.get("templateRef"):
        return _from_template(canary, metric, interval, lookup)
    if name in (SUCCESS_RATE, DURATION):
        return _builtin(canary, name, interval, mesh)
    if metric.get("query"):
        raise _NoValue("an inline query needs a MetricTemplate with a provider (templateRef)")
    raise _NoValue(f'"{name}" is not a built-in metric and has no templateRef')


def _builtin(canary: Obj, name: str, interval: str, mesh: MeshMetrics) -> float:
    meta, spec = canary["metadata"], canary["spec"]
    namespace, target = meta.get("namespace") or "default", spec["targetRef"]["name"]
    window = _seconds(interval)
    if name == SUCCESS_RATE:
        value = mesh.success_rate(namespace, target, window)
    else:
        value = mesh.duration_p99(namespace, target, window)
    if value is None:
        raise _NoValue(f"{target}.{namespace} received no requests in the last {interval}")
    return value


def _from_template(canary: Obj, metric: Obj, interval: str, lookup: Lookup) -> float:
    ref = metric["templateRef"]
    namespace = ref.get("namespace") or canary["metadata"].get("namespace") or "default"
    template = lookup("MetricTemplate", namespace, ref.get("name", ""))
    if template is None:
        raise _NoValue(f'MetricTemplate "{namespace}/{ref.get("name", "")}" not found')
    spec = template.get("spec") or {}
    provider = spec.get("provider") or {}
    kind = provider.get("type", "")
    if kind != "prometheus":
        raise _NoValue(f'provider type "{kind}" is not supported (supported: prometheus)')
    try:
        query = render(spec.get("query", ""), model(canary, interval), _variables(metric))
        return instant_query(
            provider.get("address", ""),
            query,
            credentials=_credentials(provider, namespace, lookup),
            insecure=bool(provider.get("insecureSkipVerify")),
        )
    except (TemplateError, QueryError) as e:
        raise _NoValue(str(e)) from e


def model(canary: Obj, interval: str) -> dict[str, str]:
    """Flagger's MetricTemplateModel."""
    meta, spec = canary["metadata"], canary["spec"]
    target = spec["targetRef"]["name"]
    return {
        "name": meta["name"],
        "namespace": meta.get("namespace") or "default",
        "target": target,
        "service": (spec.get("service") or {}).get("name") or target,
        "ingress": (spec.get("ingressRef") or {}).get("name", ""),
        "route": (spec.get("routeRef") or {}).get("name", ""),
        "interval": interval,
    }


def _variables(metric: Obj) -> dict[str, str]:
    return {str(k): str(v) for k, v in (metric.get("templateVariables") or {}).items()}


def _credentials(provider: Obj, namespace: str, lookup: Lookup) -> dict[str, str]:
    ref = provider.get("secretRef") or {}
    if not ref.get("name"):
        return {}
    secret = lookup("Secret", namespace, ref["name"])
    if secret is None:
        raise _NoValue(f'Secret "{namespace}/{ref["name"]}" of the provider not found')
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return {**data, **(secret.get("stringData") or {})}


def _seconds(interval: str) -> float:
    try:
        return parse_duration_ns(interval) / 1e9
    except ValueError as e:
        raise _NoValue(f"interval: {e}") from e


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
