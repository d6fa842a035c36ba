"""Services from v1 Services and ServiceEntries, with their ports' protocols
inferred as Istio infers them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pilotfish.model.config import export_to, meta
from pilotfish.model.hosts import resolve_host, service_fqdn
from pilotfish.model.types import Protocol, Service, ServicePort
from pilotfish.objects import Obj

EXPORT_TO_ANNOTATION = "networking.istio.io/exportTo"
_BY_NAME = {p.value.lower(): p for p in Protocol if p is not Protocol.UNSUPPORTED}
# appProtocol values Kubernetes defines beyond Istio's own names.
_APP_PROTOCOLS = {
    "kubernetes.io/h2c": Protocol.HTTP2,
    "kubernetes.io/ws": Protocol.HTTP,
    "kubernetes.io/wss": Protocol.HTTPS,
}


def parse_protocol(name: str) -> Protocol:
    """Istio's protocol.Parse: case-insensitive, unknown names are UNSUPPORTED."""
    return _BY_NAME.get(name.lower(), Protocol.UNSUPPORTED)


def infer_protocol(port_name: str, app_protocol: str = "", l4: str = "TCP") -> Protocol:
    """A v1 Service port's protocol: UDP as declared, then appProtocol, then the
    port name's prefix before the first `-` (`http-web` is HTTP, `grpc-web` is
    gRPC-Web)."""
    if l4.upper() == "UDP":
        return Protocol.UDP
    if app_protocol:
        return _APP_PROTOCOLS.get(app_protocol, parse_protocol(app_protocol))
    lowered = port_name.lower()
    if lowered.startswith("grpc-web"):
        return Protocol.GRPC_WEB
    return parse_protocol(lowered.partition("-")[0])


def service_from_v1(obj: Obj) -> Service:
    name, namespace, _ = meta(obj)
    spec = obj.get("spec") or {}
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    exports = [e.strip() for e in str(annotations.get(EXPORT_TO_ANNOTATION, "")).split(",")]
    cluster_ip = str(spec.get("clusterIP") or "")
    return Service(
        hostname=service_fqdn(name, namespace),
        namespace=namespace,
        ports=tuple(_v1_port(p) for p in spec.get("ports") or []),
        source=f"Service/{name}",
        export_to=export_to([e for e in exports if e], namespace),
        addresses=(cluster_ip,) if cluster_ip and cluster_ip != "None" else (),
    )


def _v1_port(port: Obj) -> ServicePort:
    target: Any = port.get("targetPort")
    return ServicePort(
        name=str(port.get("name", "")),
        port=int(port["port"]),
        protocol=infer_protocol(
            str(port.get("name", "")),
            str(port.get("appProtocol") or ""),
            str(port.get("protocol") or "TCP"),
        ),
        target_port=target if isinstance(target, int | str) and target != "" else None,
    )


def services_from_entry(obj: Obj) -> Iterator[Service]:
    """One Service per host of a ServiceEntry, as Istio splits them."""
    name, namespace, _ = meta(obj)
    spec = obj.get("spec") or {}
    ports = tuple(_entry_port(p) for p in spec.get("ports") or [])
    for host in spec.get("hosts") or []:
        yield Service(
            hostname=resolve_host(str(host), namespace),
            namespace=namespace,
            ports=ports,
            source=f"ServiceEntry/{name}",
            export_to=export_to(spec.get("exportTo"), namespace),
            mesh_external=spec.get("location", "MESH_EXTERNAL") != "MESH_INTERNAL",
            resolution=str(spec.get("resolution") or "NONE"),
            addresses=tuple(str(a) for a in spec.get("addresses") or []),
        )


def _entry_port(port: Obj) -> ServicePort:
    name = str(port.get("name", ""))
    declared = str(port.get("protocol") or "")
    return ServicePort(
        name=name,
        port=int(port["number"]),
        protocol=parse_protocol(declared) if declared else infer_protocol(name),
        target_port=port.get("targetPort"),
    )
