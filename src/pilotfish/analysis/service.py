"""Service port names (Istio's analyzers/service PortNameAnalyzer): pilotfish,
as Istio, takes a port's protocol from appProtocol or the name's prefix."""

from __future__ import annotations

from pilotfish.analysis.config import Config, items, mapping, meta, namespace_of, spec
from pilotfish.analysis.messages import Message, new
from pilotfish.model.services import infer_protocol
from pilotfish.model.types import Protocol
from pilotfish.objects import Obj

# Istio leaves Kubernetes' own namespaces alone (inject.IgnoredNamespaces).
SYSTEM_NAMESPACES = frozenset(
    {"kube-system", "kube-public", "kube-node-lease", "local-path-storage"}
)
MANAGED = "gateway.istio.io/managed"


def port_names(config: Config) -> list[Message]:
    """IST0118 for a port whose protocol its name does not say; IST0150 for an
    ExternalName Service port that would be plain TCP."""
    out = []
    for service in config.of("", "Service"):
        if namespace_of(service) in SYSTEM_NAMESPACES or _control_plane(service):
            continue
        external = spec(service).get("type") == "ExternalName"
        for port in (mapping(p) for p in items(spec(service).get("ports"))):
            protocol = infer_protocol(
                str(port.get("name") or ""),
                str(port.get("appProtocol") or ""),
                str(port.get("protocol") or "TCP"),
            )
            if external and protocol in (Protocol.TCP, Protocol.UNSUPPORTED):
                out.append(new("ExternalNameServiceTypeInvalidPortName", service))
            elif not external and protocol is Protocol.UNSUPPORTED:
                target = str(port.get("targetPort") or port.get("port"))
                out.append(
                    new(
                        "PortNameIsNotUnderNamingConvention",
                        service,
                        str(port.get("name") or ""),
                        port.get("port"),
                        target,
                    )
                )
    return out


def _control_plane(service: Obj) -> bool:
    """Istio's own Services (labels `istio` or `release: istio`) and the
    gateways it manages name their ports their own way."""
    labels = mapping(meta(service).get("labels"))
    return "istio" in labels or labels.get("release") == "istio" or MANAGED in labels
