"""Analyzers of Gateways (Istio's analyzers/gateway)."""

from __future__ import annotations

from pilotfish.analysis.config import (
    NETWORKING,
    Config,
    hosts_match,
    items,
    labels_match,
    labels_text,
    mapping,
    name_of,
    spec,
    workloads,
)
from pilotfish.analysis.messages import Message, new
from pilotfish.objects import Obj

Listener = tuple[Obj, int, str]  # gateway, port number, host


def conflicting_gateways(config: Config) -> list[Message]:
    """IST0145: two Gateways on the same workloads and port claim the same host,
    so which one serves it is undefined. Same workloads: equal selectors, or
    selectors one workload matches both of."""
    gateways = config.of(NETWORKING, "Gateway")
    listeners = _listeners(gateways)
    labels = [mapping(spec(w).get("labels")) for w in workloads(config)]
    out = []
    for gateway in gateways:
        mine = [entry for entry in listeners if entry[0] is gateway]
        for _, port, host in mine:
            others = sorted(
                {
                    name_of(other)
                    for other, p, h in listeners
                    if other is not gateway
                    and p == port
                    and hosts_match(h, host)
                    and _same_workloads(gateway, other, labels)
                }
            )
            if others:
                hosts = [h for _, p, h in mine if p == port]
                selector = labels_text(_selector(gateway))
                out.append(
                    new(
                        "ConflictingGateways", gateway, ",".join(others), selector, str(port), hosts
                    )
                )
                break
    return out


def _selector(gateway: Obj) -> Obj:
    return mapping(spec(gateway).get("selector"))


def _same_workloads(a: Obj, b: Obj, labels: list[Obj]) -> bool:
    mine, theirs = _selector(a), _selector(b)
    if mine == theirs:
        return True
    return any(labels_match(mine, have) and labels_match(theirs, have) for have in labels)


def _listeners(gateways: list[Obj]) -> list[Listener]:
    found = []
    for gateway in gateways:
        for server in items(spec(gateway).get("servers")):
            port = mapping(mapping(server).get("port")).get("number")
            if not isinstance(port, int):
                continue
            for host in items(mapping(server).get("hosts")):
                found.append((gateway, port, str(host).rpartition("/")[2]))
    return found
