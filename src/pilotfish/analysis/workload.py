"""Workloads and the Services that select them (Istio's analyzers/deployment
MultiServiceAnalyzer; pilotfish's Workload is its Deployment)."""

from __future__ import annotations

from pilotfish.analysis.config import (
    NETWORKING,
    Config,
    full_name,
    items,
    labels_match,
    mapping,
    name_of,
    namespace_of,
    spec,
    to_fqdn,
)
from pilotfish.analysis.messages import Message, new
from pilotfish.model.endpoints import target_port
from pilotfish.model.services import service_from_v1
from pilotfish.model.types import ServicePort
from pilotfish.objects import Obj


def service_association(config: Config) -> list[Message]:
    """IST0116: Services selecting one Workload use one port number with
    different protocols; IST0137: they map one targetPort to different ports.
    Either way the sidecar cannot tell which Service a request was for."""
    out = []
    for workload in config.of("pilotfish.dev", "Workload"):
        services = _selecting(config, workload)
        out += _protocols(workload, services) + _target_ports(workload, services)
    return out


def _selecting(config: Config, workload: Obj) -> list[Obj]:
    labels = mapping(spec(workload).get("labels"))
    return [
        s
        for s in config.of("", "Service")
        if namespace_of(s) == namespace_of(workload)
        and mapping(spec(s).get("selector"))
        and labels_match(mapping(spec(s).get("selector")), labels)
    ]


def _ports(service: Obj) -> list[Obj]:
    """The Service's ports of a usable shape (analysis also reads objects
    validation refuses)."""
    found = [mapping(p) for p in items(spec(service).get("ports"))]
    return [p for p in found if isinstance(p.get("port"), int)]


def _protocols(workload: Obj, services: list[Obj]) -> list[Message]:
    by_port: dict[int, dict[str, list[str]]] = {}
    for service in services:
        for port in _ports(service):
            protocol = str(port.get("protocol") or "TCP")
            by_port.setdefault(port.get("port", 0), {}).setdefault(protocol, []).append(
                full_name(service)
            )
    return [
        new(
            "DeploymentAssociatedToMultipleServices",
            workload,
            name_of(workload),
            number,
            sorted(n for names in protocols.values() for n in names),
        )
        for number, protocols in sorted(by_port.items())
        if len(protocols) > 1
    ]


def _target_ports(workload: Obj, services: list[Obj]) -> list[Message]:
    by_target: dict[str, dict[int, str]] = {}
    for service in services:
        for port in _ports(service):
            target = str(port.get("targetPort") or "") or str(port.get("port"))
            by_target.setdefault(target, {})[port.get("port", 0)] = full_name(service)
    return [
        new(
            "DeploymentConflictingPorts",
            workload,
            name_of(workload),
            sorted(ports.values()),
            target,
            sorted(ports),
        )
        for target, ports in sorted(by_target.items())
        if len(ports) > 1
    ]


def ports_without_service(config: Config) -> list[Message]:
    """PF0002: a Workload port no port of a Service selecting the Workload
    targets; no host routes to it, so nothing in the mesh can call it."""
    out = []
    for workload in config.of("pilotfish.dev", "Workload"):
        declared = {
            str(p.get("name")): p["port"]
            for p in (mapping(p) for p in items(spec(workload).get("ports")))
            if isinstance(p.get("port"), int)
        }
        reached = {
            target_port(port, declared)
            for service in _selecting(config, workload)
            for port in _service_ports(service)
        }
        out += [
            new("WorkloadPortWithoutService", workload, name, number)
            for name, number in declared.items()
            if number not in reached
        ]
    return out


def _service_ports(service: Obj) -> tuple[ServicePort, ...]:
    """The Service's usable ports as the model reads them."""
    clean = {"metadata": {"name": name_of(service)}, "spec": {"ports": _ports(service)}}
    return service_from_v1(clean).ports


def upstreams_without_service(config: Config) -> list[Message]:
    """PF0007: a declared upstream whose service or port is not in the mesh
    yet; only a warning, since services come and go (translate/upstreams.py
    gives it a listener as soon as there is one)."""
    out = []
    for workload in config.of("pilotfish.dev", "Workload"):
        namespace = namespace_of(workload)
        for i, upstream in enumerate(mapping(u) for u in items(spec(workload).get("upstreams"))):
            name, port = upstream.get("service"), upstream.get("port")
            if not isinstance(name, str) or not isinstance(port, int):
                continue  # the schema says what is wrong with it
            if port in _upstream_ports(config, name, namespace):
                continue
            where = f"{upstream.get('localAddress') or '127.0.0.1'}:{upstream.get('localPort')}"
            out.append(new("UpstreamServiceNotFound", workload, i, name, port, where))
    return out


def _upstream_ports(config: Config, name: str, namespace: str) -> set[int]:
    """The ports of the Services or ServiceEntry hosts `name` may mean, as
    translate/upstreams.py reads it: NAME, NAME.NAMESPACE, or a host."""
    hosts = {to_fqdn(namespace, name)}
    if name.count(".") == 1:
        hosts.add(to_fqdn(name.split(".")[1], name.split(".")[0]))
    found = {p.port for host in hosts for s in config.services_at(host) for p in _service_ports(s)}
    for entry in config.of(NETWORKING, "ServiceEntry"):
        if name in items(spec(entry).get("hosts")):
            found.update(
                int(mapping(p).get("number") or 0) for p in items(spec(entry).get("ports"))
            )
    return found
