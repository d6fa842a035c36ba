"""Who a proxy is, read from the Node of its first DiscoveryRequest.

Node ids follow Istio's `TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.cluster.local`;
metadata uses Istio's keys (NAMESPACE, LABELS, WORKLOAD_NAME, NAME,
INSTANCE_IPS); its locality is the Node's `locality`. A gRPC client is
proxyless when its node id's type is `proxyless`, its metadata says
`GENERATOR: grpc` (Istio's proxyless bootstrap), or its user agent is
gRPC's own: it then gets api_listeners named after its targets instead of
a sidecar's socket listeners.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from envoy.config.core.v3.base_pb2 import Node
from google.protobuf.json_format import MessageToDict

from pilotfish.model import Proxy, ProxyType
from pilotfish.model.types import UPSTREAMS_METADATA

_TYPES = {"sidecar": ProxyType.SIDECAR, "router": ProxyType.ROUTER, "proxyless": ProxyType.GRPC}


def proxy_from_node(node: Node, peer_ip: str = "127.0.0.1") -> Proxy:
    metadata: dict[str, Any] = MessageToDict(node.metadata) if node.HasField("metadata") else {}
    parts = node.id.split("~")
    istio_style = len(parts) == 4
    return Proxy(
        node_id=node.id,
        namespace=_namespace(metadata, parts if istio_style else None),
        type=_proxy_type(node, metadata, parts[0] if istio_style else ""),
        labels=_strings(metadata.get("LABELS")),
        workload=str(metadata.get("WORKLOAD_NAME") or ""),
        ip=_ip(metadata, parts[1] if istio_style else "", peer_ip),
        metadata=MappingProxyType(
            {k: str(v) for k, v in metadata.items() if isinstance(v, str | int | float | bool)}
            | _upstreams(metadata)
        ),
        locality=_locality(node),
    )


def _upstreams(metadata: Mapping[str, Any]) -> dict[str, str]:
    """UPSTREAMS, a list in the bootstrap (a Workload's spec.upstreams), kept
    as JSON: the Proxy's metadata holds strings only."""
    found = metadata.get(UPSTREAMS_METADATA)
    if not isinstance(found, list):
        return {}
    return {UPSTREAMS_METADATA: json.dumps(found, sort_keys=True)}


def _locality(node: Node) -> str:
    """region/zone/subzone as Istio writes it; trailing empty parts dropped."""
    loc = node.locality
    return "/".join((loc.region, loc.zone, loc.sub_zone)).rstrip("/")


def _proxy_type(node: Node, metadata: Mapping[str, Any], id_type: str) -> ProxyType:
    if str(metadata.get("GENERATOR", "")).lower() == "grpc":
        return ProxyType.GRPC
    if node.user_agent_name.lower().startswith("grpc"):
        return ProxyType.GRPC
    return _TYPES.get(id_type, ProxyType.SIDECAR)


def _namespace(metadata: Mapping[str, Any], parts: list[str] | None) -> str:
    if metadata.get("NAMESPACE"):
        return str(metadata["NAMESPACE"])
    if parts is not None and "." in parts[2]:
        return parts[2].partition(".")[2]
    return "default"


def _ip(metadata: Mapping[str, Any], from_id: str, peer_ip: str) -> str:
    listed = str(metadata.get("INSTANCE_IPS") or "").split(",")[0].strip()
    return listed or from_id or peer_ip


def _strings(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict):
        return MappingProxyType({})
    return MappingProxyType({str(k): str(v) for k, v in value.items()})
