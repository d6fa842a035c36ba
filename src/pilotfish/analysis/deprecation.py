"""Deprecated fields (Istio's analyzers/deprecation)."""

from __future__ import annotations

from pilotfish.analysis.config import NETWORKING, Config, items, mapping, spec
from pilotfish.analysis.messages import Message, new


def _replaced(old: str, new_field: str) -> str:
    return f"{old} is deprecated; use {new_field}"


def fields(config: Config) -> list[Message]:
    """IST0002 for fields Istio keeps only for compatibility."""
    out = []
    for vs in config.of(NETWORKING, "VirtualService"):
        for rule in items(spec(vs).get("http")):
            rule = mapping(rule)
            if "percent" in mapping(mapping(rule.get("fault")).get("delay")):
                out.append(
                    new(
                        "Deprecated",
                        vs,
                        _replaced(
                            "HTTPRoute.fault.delay.percent", "HTTPRoute.fault.delay.percentage"
                        ),
                    )
                )
            if "mirrorPercent" in rule:
                out.append(
                    new(
                        "Deprecated",
                        vs,
                        _replaced("HTTPRoute.mirrorPercent", "HTTPRoute.mirrorPercentage"),
                    )
                )
            if "allowOrigin" in mapping(rule.get("corsPolicy")):
                out.append(
                    new(
                        "Deprecated",
                        vs,
                        _replaced("CorsPolicy.allowOrigin", "CorsPolicy.allowOrigins"),
                    )
                )
    for sidecar in config.of(NETWORKING, "Sidecar"):
        if "egressProxy" in mapping(spec(sidecar).get("outboundTrafficPolicy")):
            out.append(
                new(
                    "Deprecated", sidecar, "Sidecar.outboundTrafficPolicy.egressProxy is deprecated"
                )
            )
    return out
