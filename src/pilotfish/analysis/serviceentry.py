"""Analyzers of ServiceEntries (Istio's analyzers/serviceentry)."""

from __future__ import annotations

from pilotfish.analysis.config import NETWORKING, Config, items, mapping, spec
from pilotfish.analysis.messages import Message, new


def addresses_required(config: Config) -> list[Message]:
    """IST0134: a TCP port (or one of no protocol) is told apart by its address
    only, so a ServiceEntry without addresses cannot be routed on it."""
    out = []
    for entry in config.of(NETWORKING, "ServiceEntry"):
        if items(spec(entry).get("addresses")):
            continue
        protocols = [
            str(mapping(p).get("protocol") or "").upper() for p in items(spec(entry).get("ports"))
        ]
        if any(p in ("", "TCP") for p in protocols):
            out.append(new("ServiceEntryAddressesRequired", entry))
    return out
