"""Analyzers of Telemetry (Istio's analyzers/telemetry)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pilotfish.analysis.config import (
    TELEMETRY,
    Config,
    items,
    mapping,
    name_of,
    namespace_of,
    spec,
)
from pilotfish.analysis.messages import Message, new
from pilotfish.translate.telemetry import upsert_error

# Tracing is not here: an entry without providers falls back on the mesh's
# default, the control plane's own receiver (translate/telemetry.py).
# Nor metrics: an entry without providers reports to the mesh's default,
# prometheus unless the mesh config names others, as in Istio.
_SECTIONS = ("accessLogging",)


def providers(config: Config) -> list[Message]:
    """IST0157: an access-logging or metrics entry with no providers (pilotfish
    has no default provider for these to fall back on) that disables nothing
    is ignored."""
    out = []
    for telemetry in config.of(TELEMETRY, "Telemetry"):
        if any(
            _empty(entry) for section in _SECTIONS for entry in items(spec(telemetry).get(section))
        ):
            out.append(
                new(
                    "InvalidTelemetryProvider",
                    telemetry,
                    name_of(telemetry),
                    namespace_of(telemetry),
                )
            )
    return out


def _empty(entry: object) -> bool:
    entry = mapping(entry)
    return (
        not items(entry.get("providers"))
        and not entry.get("disabled")
        and "disableSpanReporting" not in entry
    )


def metric_overrides(config: Config) -> list[Message]:
    """PF0001 for a metrics override the sidecars do not apply: an UPSERT
    whose value is not an expression pilotfish evaluates (that label is left
    out), and an override of TCP or custom metrics."""
    out = []
    for telemetry in config.of(TELEMETRY, "Telemetry"):
        for i, entry in enumerate(items(spec(telemetry).get("metrics"))):
            for j, override in enumerate(items(mapping(entry).get("overrides"))):
                where = f"Telemetry spec.metrics[{i}].overrides[{j}]"
                out += [
                    new("NotEnforced", telemetry, f"{where}.{field}", reason)
                    for field, reason in _unapplied(mapping(override))
                ]
    return out


def _unapplied(override: Mapping[str, Any]) -> list[tuple[str, str]]:
    match = mapping(override.get("match"))
    metric = str(match.get("metric") or "")
    if match.get("customMetric") or metric.startswith("TCP_"):
        return [("match", "only the HTTP metrics' overrides are applied")]
    found = []
    for tag, tag_override in sorted(mapping(override.get("tagOverrides")).items()):
        tag_override = mapping(tag_override)
        if str(tag_override.get("operation") or "UPSERT") == "UPSERT":
            error = upsert_error(tag_override.get("value"))
            if error is not None:
                found.append((f"tagOverrides.{tag}.value", f"{error}; the label is not added"))
    return found
