"""Analyzers of Gateways (Istio's analyzers/gateway)."""

from __future__ import annotations

from pilotfish.analysis.config import (
    NETWORKING,
    Config,
    Obj,
    hosts_match,
    items,
    labels_text,
    mapping,
    name_of,
    spec,
)
from pilotfish.analysis.messages import Message, new

Listener = tuple[Obj, str, int, str]  # gateway, selector, port number, host


def conflicting_gateways(config: Config) -> list[Message]:
    """IST0145: two Gateways on the same workloads and port claim the same host,
    so which one serves it is undefined."""
    listeners = list(_listeners(config.of(NETWORKING, "Gateway")))
    out = []
    for gateway in config.of(NETWORKING, "Gateway"):
        mine = [entry for entry in listeners if entry[0] is gateway]
        for _, selector, port, host in mine:
            others = sorted(
                {
                    name_of(other)
                    for other, s, p, h in listeners
                    if other is not gateway and s == selector and p == port and hosts_match(h, host)
                }
            )
            if others:
                hosts = [h for g, s, p, h in mine if p == port]
                out.append(
                    new(
                        "ConflictingGateways", gateway, ",".join(others), selector, str(port), hosts
                    )
                )
                break
    return out


def _listeners(gateways: list[Obj]) -> list[Listener]:
    found = []
    for gateway in gateways:
        selector = labels_text(mapping(spec(gateway).get("selector")))
        for server in items(spec(gateway).get("servers")):
            port = mapping(mapping(server).get("port")).get("number")
            if not isinstance(port, int):
                continue
            for host in items(mapping(server).get("hosts")):
                found.append((gateway, selector, port, str(host).rpartition("/")[2]))
    return found
