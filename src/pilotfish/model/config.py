"""Istio config objects, read once from the dicts users write.

Host names are resolved here, relative to each object's namespace, so that
translation never has to remember where a short name came from. Route bodies
stay the plain dicts of the YAML (Istio's field names), copied, with their
destination hosts resolved.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pilotfish.model.hosts import (
    MESH_GATEWAY,
    resolve_gateway_name,
    resolve_host,
    split_namespaced_host,
)
from pilotfish.model.types import Labels
from pilotfish.objects import Obj


def meta(obj: Obj) -> tuple[str, str, str]:
    """(name, namespace, creationTimestamp) of a stored object."""
    metadata = obj.get("metadata") or {}
    return (
        str(metadata.get("name", "")),
        str(metadata.get("namespace") or "default"),
        str(metadata.get("creationTimestamp") or ""),
    )


def export_to(entries: Iterable[str] | None, namespace: str) -> frozenset[str]:
    """exportTo with `.` made concrete; absent means public, as in Istio's default."""
    listed = list(entries or [])
    if not listed:
        return frozenset({"*"})
    return frozenset(namespace if e == "." else e for e in listed)


def exported(to: frozenset[str], namespace: str) -> bool:
    return "*" in to or namespace in to


@dataclass(frozen=True)
class VirtualService:
    name: str
    namespace: str
    hosts: tuple[str, ...]  # resolved; empty for a delegate
    gateways: tuple[str, ...]  # resolved `ns/name`, or `mesh`
    http: tuple[Obj, ...]
    export_to: frozenset[str]
    created: str = ""
    tcp: tuple[Obj, ...] = ()  # Istio's TCPRoute list, destinations resolved
    tls: tuple[Obj, ...] = ()  # Istio's TLSRoute list (by SNI), destinations resolved

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __repr__(self) -> str:
        return f"<VirtualService {self.key} {list(self.hosts)}>"


@dataclass(frozen=True)
class Subset:
    name: str
    labels: Labels
    traffic_policy: Obj | None


@dataclass(frozen=True)
class DestinationRule:
    name: str
    namespace: str
    host: str
    traffic_policy: Obj | None
    subsets: tuple[Subset, ...]
    export_to: frozenset[str]
    created: str = ""

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.subsets if s.name == name), None)


@dataclass(frozen=True)
class Gateway:
    name: str
    namespace: str
    selector: Labels
    servers: tuple[Obj, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Sidecar:
    name: str
    namespace: str
    selector: Labels | None  # None: every workload of the namespace
    # (namespace, host pattern); the namespace may be `*`, `~`, or `.` for the
    # proxy's own: a root-namespace Sidecar's `./*` means each proxy's namespace.
    egress: tuple[tuple[str, str], ...]
    outbound_mode: str = ""  # outboundTrafficPolicy.mode; "": the mesh config's


@dataclass(frozen=True)
class PeerAuthentication:
    """security.istio.io PeerAuthentication: the mTLS mode a workload's
    inbound ports accept (STRICT, PERMISSIVE, DISABLE; UNSET inherits)."""

    name: str
    namespace: str
    selector: Labels | None  # None: the whole namespace (the mesh, in the root namespace)
    mode: str
    port_modes: tuple[tuple[int, str], ...]  # portLevelMtls, by the workload's port


def read_peer_authentication(obj: Obj) -> PeerAuthentication:
    name, namespace, _ = meta(obj)
    spec = obj.get("spec") or {}
    selector = (spec.get("selector") or {}).get("matchLabels")
    port_modes = tuple(
        (int(port), str((value or {}).get("mode") or "UNSET"))
        for port, value in sorted(
            (spec.get("portLevelMtls") or {}).items(), key=lambda kv: int(kv[0])
        )
    )
    mode = str((spec.get("mtls") or {}).get("mode") or "UNSET")
    return PeerAuthentication(
        name, namespace, dict(selector) if selector else None, mode, port_modes
    )


def read_virtual_service(obj: Obj) -> VirtualService:
    name, namespace, created = meta(obj)
    spec = obj.get("spec") or {}
    gateways = tuple(resolve_gateway_name(g, namespace) for g in spec.get("gateways") or [])
    return VirtualService(
        name=name,
        namespace=namespace,
        hosts=tuple(resolve_host(h, namespace) for h in spec.get("hosts") or []),
        gateways=gateways or (MESH_GATEWAY,),
        http=tuple(_resolve_http_route(r, namespace) for r in spec.get("http") or []),
        export_to=export_to(spec.get("exportTo"), namespace),
        created=created,
        # a TCPRoute's `route` is shaped as an HTTP route's: destinations resolve the same way
        tcp=tuple(_resolve_http_route(r, namespace) for r in spec.get("tcp") or []),
        tls=tuple(_resolve_http_route(r, namespace) for r in spec.get("tls") or []),
    )


def _resolve_http_route(route: Obj, namespace: str) -> Obj:
    out = copy.deepcopy(route)
    for dest in out.get("route") or []:
        _resolve_destination(dest.get("destination"), namespace)
    _resolve_destination(out.get("mirror"), namespace)
    for mirror in out.get("mirrors") or []:
        _resolve_destination(mirror.get("destination"), namespace)
    for match in out.get("match") or []:
        if match.get("gateways"):
            match["gateways"] = [resolve_gateway_name(g, namespace) for g in match["gateways"]]
    delegate = out.get("delegate")
    if isinstance(delegate, dict) and not delegate.get("namespace"):
        delegate["namespace"] = namespace
    return out


def _resolve_destination(dest: Any, namespace: str) -> None:
    if isinstance(dest, dict) and dest.get("host"):
        dest["host"] = resolve_host(str(dest["host"]), namespace)


def read_destination_rule(obj: Obj) -> DestinationRule:
    name, namespace, created = meta(obj)
    spec = obj.get("spec") or {}
    return DestinationRule(
        name=name,
        namespace=namespace,
        host=resolve_host(str(spec.get("host", "")), namespace),
        traffic_policy=spec.get("trafficPolicy") or None,
        subsets=tuple(
            Subset(str(s.get("name", "")), dict(s.get("labels") or {}), s.get("trafficPolicy"))
            for s in spec.get("subsets") or []
        ),
        export_to=export_to(spec.get("exportTo"), namespace),
        created=created,
    )


def read_gateway(obj: Obj) -> Gateway:
    name, namespace, _ = meta(obj)
    spec = obj.get("spec") or {}
    return Gateway(
        name=name,
        namespace=namespace,
        selector=dict(spec.get("selector") or {}),
        servers=tuple(spec.get("servers") or []),
    )


def read_sidecar(obj: Obj) -> Sidecar:
    name, namespace, _ = meta(obj)
    spec = obj.get("spec") or {}
    selector = (spec.get("workloadSelector") or {}).get("labels")
    egress = tuple(
        split_namespaced_host(h, ".")
        for listener in spec.get("egress") or []
        for h in listener.get("hosts") or []
    )
    mode = str((spec.get("outboundTrafficPolicy") or {}).get("mode") or "")
    return Sidecar(name, namespace, dict(selector) if selector else None, egress, mode)


def labels_match(selector: Labels, labels: Labels) -> bool:
    """Every selector label present with the same value; an empty selector
    selects everything, as in Kubernetes."""
    return all(labels.get(k) == v for k, v in selector.items())
