"""Analyzers of DestinationRules (Istio's analyzers/destinationrule)."""

from __future__ import annotations

from pilotfish.analysis.config import (
    NETWORKING,
    Config,
    Obj,
    items,
    mapping,
    name_of,
    namespace_of,
    spec,
)
from pilotfish.analysis.messages import Message, new

_VERIFIED_MODES = ("SIMPLE", "MUTUAL")


def ca_certificates(config: Config) -> list[Message]:
    """IST0128/IST0129: TLS to a destination without caCertificates does not
    verify the server; a credentialName on a gateway's rule (one with a
    workloadSelector) carries its own CA."""
    out = []
    for rule in config.of(NETWORKING, "DestinationRule"):
        policy = mapping(spec(rule).get("trafficPolicy"))
        host = str(spec(rule).get("host") or "")
        mode = _unverified(rule, mapping(policy.get("tls")))
        if mode:
            out.append(
                new(
                    "NoServerCertificateVerificationDestinationLevel",
                    rule,
                    name_of(rule),
                    namespace_of(rule),
                    mode,
                    host,
                )
            )
        for settings in items(policy.get("portLevelSettings")):
            mode = _unverified(rule, mapping(mapping(settings).get("tls")))
            if mode:
                port = str(mapping(mapping(settings).get("port")).get("number", ""))
                out.append(
                    new(
                        "NoServerCertificateVerificationPortLevel",
                        rule,
                        name_of(rule),
                        namespace_of(rule),
                        mode,
                        host,
                        port,
                    )
                )
    return out


def _unverified(rule: Obj, tls: Obj) -> str:
    mode = str(tls.get("mode") or "")
    if mode not in _VERIFIED_MODES or tls.get("caCertificates") or tls.get("insecureSkipVerify"):
        return ""
    if tls.get("credentialName") and spec(rule).get("workloadSelector"):
        return ""
    return mode
