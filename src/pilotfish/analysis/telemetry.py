"""Analyzers of Telemetry (Istio's analyzers/telemetry)."""

from __future__ import annotations

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

# Tracing is not here: an entry without providers falls back on the mesh's
# default, the control plane's own receiver (translate/telemetry.py).
_SECTIONS = ("accessLogging", "metrics")


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
