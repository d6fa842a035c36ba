"""Measuring a Canary's analysis metrics (`spec.analysis.metrics[]`). The two
built-ins come from the mesh itself (builtin.py); anything else is a
MetricTemplate, queried with its provider (prometheus.py). A measurement
never raises: no value, and why, is a result like any other, and the
analysis counts it as a failed check, as Flagger does."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Mapping
from typing import Any

from pilotfish.api.gotypes import parse_duration_ns
from pilotfish.objects import Obj
from pilotfish.rollout.metrics.builtin import MeshMetrics
from pilotfish.rollout.metrics.prometheus import (
    NoValues,
    Provider,
    QueryError,
    check_credentials,
    instant_query,
)
from pilotfish.rollout.metrics.templates import TemplateError, model, render
from pilotfish.rollout.types import MetricResult

Lookup = Callable[[str, str, str], Obj | None]  # (kind, namespace, name) -> stored object
DEFAULT_INTERVAL = "1m"  # Flagger's MetricInterval
SUCCESS_RATE, DURATION = "request-success-rate", "request-duration"
PROVIDERS = ("prometheus",)

__all__ = ["DURATION", "SUCCESS_RATE", "Lookup", "MeshMetrics", "measure", "parse_interval"]


class _NoValue(Exception):
    """Why a metric has no value this time, in words that follow its name."""


def measure(canary: Obj, metric: Obj, *, mesh: MeshMetrics, lookup: Lookup) -> MetricResult:
    """One analysis metric of `canary`, measured now, against its thresholdRange."""
    name = str(metric.get("name") or "")
    bounds = metric.get("thresholdRange") or {}
    low, high = _bound(bounds.get("min")), _bound(bounds.get("max"))
    try:
        value = _value(canary, metric, mesh, lookup)
    except _NoValue as e:
        return MetricResult(name, None, low, high, f"no values found for {name}: {e}")
    except QueryError as e:
        return MetricResult(name, None, low, high, f"metric query failed for {name}: {e}")
    return MetricResult(name, value, low, high)


def parse_interval(text: str) -> float:
    """Seconds in a metric's Go duration ("30s", "1m", "1m30s"); ValueError
    when it is not one or not positive."""
    seconds = parse_duration_ns(text) / 1e9
    if seconds <= 0:
        raise ValueError(f'interval "{text}" must be positive')
    return seconds


def _value(canary: Obj, metric: Obj, mesh: MeshMetrics, lookup: Lookup) -> float:
    """A templateRef wins over a built-in name: the template says how to measure."""
    name = str(metric.get("name") or "")
    interval = str(metric.get("interval") or DEFAULT_INTERVAL)
    if metric.get("templateRef"):
        return _from_template(canary, metric, interval, lookup)
    if name in (SUCCESS_RATE, DURATION):
        return _builtin(canary, name, interval, mesh)
    if metric.get("query"):
        raise QueryError("an inline query needs a MetricTemplate with a provider (templateRef)")
    raise QueryError(f'"{name}" is not a built-in metric and has no templateRef')


def _builtin(canary: Obj, name: str, interval: str, mesh: MeshMetrics) -> float:
    about = model(canary, interval)
    namespace, target = about["namespace"], about["target"]
    window = _seconds(interval)
    if name == SUCCESS_RATE:
        value = mesh.success_rate(namespace, target, window)
    else:
        value = mesh.duration_p99(namespace, target, window)
    if value is None:
        raise _NoValue(f"{target}.{namespace} received no requests in the last {interval}")
    # Flagger reads the duration as a time.Duration of whole milliseconds.
    return value if name == SUCCESS_RATE else float(math.floor(value))


def _from_template(canary: Obj, metric: Obj, interval: str, lookup: Lookup) -> float:
    ref = metric["templateRef"] if isinstance(metric["templateRef"], dict) else {}
    template_name = str(ref.get("name") or "")
    namespace = str(ref.get("namespace") or model(canary, interval)["namespace"])
    template = lookup("MetricTemplate", namespace, template_name)
    if template is None:
        raise QueryError(f'MetricTemplate "{namespace}/{template_name}" not found')
    spec = template.get("spec") or {}
    provider = spec.get("provider") or {}
    kind = str(provider.get("type") or "")
    if kind not in PROVIDERS:
        supported = ", ".join(PROVIDERS)
        raise QueryError(f'provider type "{kind}" is not supported (supported: {supported})')
    try:
        query = render(str(spec.get("query") or ""), model(canary, interval), _variables(metric))
    except TemplateError as e:
        raise QueryError(f'MetricTemplate "{namespace}/{template_name}": {e}') from e
    try:
        return instant_query(_provider(provider, namespace, lookup), query)
    except NoValues as e:
        raise _NoValue(str(e)) from e


def _provider(spec: Obj, namespace: str, lookup: Lookup) -> Provider:
    credentials = _secret(spec, namespace, lookup)
    if spec.get("secretRef"):
        check_credentials(credentials)
    headers = {
        str(k): [str(x) for x in v] if isinstance(v, list) else [str(v)]
        for k, v in (spec.get("headers") or {}).items()
    }
    insecure = bool(spec.get("insecureSkipVerify"))
    return Provider(str(spec.get("address") or ""), credentials, headers, insecure)


def _secret(spec: Obj, namespace: str, lookup: Lookup) -> dict[str, str]:
    """The provider Secret's keys, decoded (the store keeps `stringData` as written)."""
    name = str((spec.get("secretRef") or {}).get("name") or "")
    if not name:
        return {}
    secret = lookup("Secret", namespace, name)
    if secret is None:
        raise QueryError(f'the provider\'s Secret "{namespace}/{name}" not found')
    try:
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    except (binascii.Error, UnicodeDecodeError, TypeError) as e:
        raise QueryError(f'the provider\'s Secret "{namespace}/{name}" is not base64 text') from e
    return {**data, **{k: str(v) for k, v in (secret.get("stringData") or {}).items()}}


def _variables(metric: Obj) -> Mapping[str, str]:
    return {str(k): str(v) for k, v in (metric.get("templateVariables") or {}).items()}


def _seconds(interval: str) -> float:
    try:
        return parse_interval(interval)
    except ValueError as e:
        raise QueryError(f"interval: {e}") from e


def _bound(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
