"""The mesh at one moment: services, endpoints and config indexes, immutable.

    from pilotfish.model import Instance, Proxy, build_snapshot
    snapshot = build_snapshot(stored_objects, registered_instances)

Translation (`pilotfish.translate`) reads a Snapshot and a Proxy and nothing
else; the registry and the store produce the inputs.
"""

from pilotfish.model.config import DestinationRule, Gateway, Sidecar, Subset, VirtualService
from pilotfish.model.hosts import DOMAIN_SUFFIX, ROOT_NAMESPACE, resolve_host, service_fqdn
from pilotfish.model.snapshot import ProxyView, Snapshot, build_snapshot
from pilotfish.model.types import (
    Endpoint,
    Instance,
    Protocol,
    Proxy,
    ProxyType,
    Service,
    ServicePort,
)

__all__ = [
    "DOMAIN_SUFFIX",
    "ROOT_NAMESPACE",
    "DestinationRule",
    "Endpoint",
    "Gateway",
    "Instance",
    "Protocol",
    "Proxy",
    "ProxyType",
    "ProxyView",
    "Service",
    "ServicePort",
    "Sidecar",
    "Snapshot",
    "Subset",
    "VirtualService",
    "build_snapshot",
    "resolve_host",
    "service_fqdn",
]
