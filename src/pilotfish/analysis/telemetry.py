"""Analyzers of Telemetry (Istio's analyzers/telemetry)."""

from __future__ import annotations

from pilotfish.analysis.config import (
    TELEMETRY,
    Config,
    Obj,
    items,
    mapping,
    name_of,
    namespace_of,
    spec,
)
from pilotfish.analysis.messages import Message, new

_SECTIONS = ("accessLogging", "metrics", "tracing")


def providers(config: Config) -> list[Message]:
    """IST0157: an entry with no providers (pilotfish has no mesh-wide default
    provider to fall back on) that does not disable anything is ignored."""
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


def default_selectors(config: Config) -> list[Message]:
    """IST0160: two namespace-wide Telemetries in one namespace; which applies is undefined."""
    by_namespace: dict[str, list[Obj]] = {}
    for telemetry in config.of(TELEMETRY, "Telemetry"):
        if not _targeted(telemetry):
            by_namespace.setdefault(namespace_of(telemetry), []).append(telemetry)
    out = []
    for namespace, found in sorted(by_namespace.items()):
        if len(found) > 1:
            names = [name_of(t) for t in found]
            out += [
                new("MultipleTelemetriesWithoutWorkloadSelectors", t, names, namespace)
                for t in found
            ]
    return out


def _targeted(obj: Obj) -> bool:
    body = spec(obj)
    return bool(
        mapping(body.get("selector")).get("matchLabels")
        or body.get("targetRef")
        or body.get("targetRefs")
    )
