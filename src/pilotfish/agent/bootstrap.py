"""The sidecar's Envoy-style bootstrap for one instance: who it is (an
Istio-style node id and metadata, which the control plane matches to the
registered instance), its admin port, its outbound port (metadata
OUTBOUND_PORT, read by the listener translation), and ADS at the control
plane through the static cluster `xds-grpc`, as Istio's bootstrap has it,
over TLS verified against the mesh root when the agent has it (the
cluster's transport socket, as istio-agent's), with the control plane's
token as the stream's `authorization` metadata
(Envoy's `grpc_services[].initial_metadata`) when the agent has one: off
loopback the ADS server refuses streams without it. The file therefore holds
a credential (instance.write_bootstrap writes it 0600)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pilotfish.model.locality import locality_from_labels, split_locality
from pilotfish.model.types import UPSTREAMS_METADATA, Labels

XDS_CLUSTER = "xds-grpc"
XDS_TLS_PORT = 15012  # istiod's
TLS_CONTEXT = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass(frozen=True)
class XdsServer:
    """Where the proxies' ADS server is, and the bearer token they present;
    `replicas`: the other control-plane replicas' (host, port), to fail over to;
    `api`: the control plane's REST API URL, whose `/v1/traces` receives the
    sidecars' spans unless Telemetry names another provider (node metadata
    PILOTFISH_API, read by translate/telemetry.py)."""

    host: str
    port: int
    token: str = field(default="", repr=False)
    replicas: tuple[tuple[str, int], ...] = ()
    api: str = ""
    root_cert: str = ""  # the mesh root's file: xDS over TLS (15012), verified against it

    @classmethod
    def parse(
        cls, addresses: str, token: str = "", api: str = "", root_cert: str = ""
    ) -> XdsServer:
        """HOST:PORT[,HOST:PORT...], as `pilotfish node --xds` takes it; with
        `root_cert` (the mesh root's file) over TLS."""
        parsed = []
        for address in addresses.split(","):
            host, _, port = address.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"not HOST:PORT: {address.strip()!r}")
            parsed.append((host.strip("[]"), int(port)))
        (first_host, first_port), *replicas = parsed
        return cls(first_host, first_port, token, tuple(replicas), api, root_cert)

    @property
    def ports(self) -> list[int]:
        return [self.port, *(port for _, port in self.replicas)]


def checked_root_cert(path: str | None) -> str:
    """`--xds-root-cert`'s file as an absolute path (sidecars start in their
    own directories), checked once here rather than by every sidecar; ""
    for none; ValueError naming what is wrong."""
    if not path:
        return ""
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--xds-root-cert {path}: {getattr(e, 'strerror', None) or e}") from e
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"--xds-root-cert {path}: not a PEM certificate")
    return str(Path(path).resolve())


@dataclass(frozen=True)
class Placement:
    """Where a node agent's instances are: the address peers on other hosts
    reach them at (their sidecars' inbound listeners bind there), and the
    node's locality, region/zone/subzone."""

    address: str = "127.0.0.1"
    locality: str = ""

    def locality_for(self, labels: Labels) -> str:
        """An instance's own topology labels win over the node's, as Istio
        reads a pod's `istio-locality` label over its node's."""
        return locality_from_labels(labels) or self.locality


@dataclass(frozen=True)
class SidecarIdentity:
    instance: str
    namespace: str
    workload: str
    labels: dict[str, str]
    service_account: str
    app_containers: str
    address: str = "127.0.0.1"
    locality: str = ""


def node_id(who: SidecarIdentity, kind: str = "sidecar") -> str:
    """Istio's `TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.cluster.local`; the
    control plane reads the type (sidecar, router) from it."""
    return f"{kind}~{who.address}~{who.instance}.{who.namespace}~{who.namespace}.svc.cluster.local"


def sidecar_bootstrap(
    who: SidecarIdentity,
    *,
    admin_port: int,
    outbound_port: int,
    xds: XdsServer,
    upstreams: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """`upstreams`: the Workload's spec.upstreams, which the control plane
    turns into this sidecar's local listeners (translate/upstreams.py)."""
    placement: dict[str, Any] = {
        "OUTBOUND_ADDRESS": "127.0.0.1",
        "OUTBOUND_PORT": str(outbound_port),
    }
    if upstreams:
        placement[UPSTREAMS_METADATA] = [dict(u) for u in upstreams]
    return _bootstrap(who, "sidecar", placement, admin_port, xds)


def gateway_bootstrap(who: SidecarIdentity, *, admin_port: int, xds: XdsServer) -> dict[str, Any]:
    """The same proxy in router mode, as Istio's ingress gateway: no inbound
    or outbound listeners of its own, only the ports of the Gateways whose
    selector matches its labels, bound on `who.address` (BIND_ADDRESS)."""
    return _bootstrap(who, "router", {"BIND_ADDRESS": who.address}, admin_port, xds)


CLUSTER_ID = "Kubernetes"


def _bootstrap(
    who: SidecarIdentity,
    kind: str,
    placement: dict[str, Any],
    admin_port: int,
    xds: XdsServer,
) -> dict[str, Any]:
    return {
        "node": {
            **_locality(who.locality),
            "id": node_id(who, kind),
            "cluster": f"{who.workload}.{who.namespace}",
            "metadata": {
                "NAME": who.instance,
                "NAMESPACE": who.namespace,
                "WORKLOAD_NAME": who.workload,
                "LABELS": dict(who.labels),
                "SERVICE_ACCOUNT": who.service_account,
                "APP_CONTAINERS": who.app_containers,
                "INSTANCE_IPS": who.address,
                # Istio's default cluster ID, so *_cluster metric labels read as Istio's do.
                "CLUSTER_ID": CLUSTER_ID,
                **({"PILOTFISH_API": xds.api} if xds.api else {}),
                **placement,
            },
        },
        "admin": {"address": _address("127.0.0.1", admin_port)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [_ads_service(xds.token)],
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [_xds_cluster(xds)]},
    }


def _locality(locality: str) -> dict[str, Any]:
    """Envoy's `node.locality`, which the control plane reads as the caller's."""
    if not locality:
        return {}
    region, zone, sub_zone = split_locality(locality)
    return {"locality": {"region": region, "zone": zone, "sub_zone": sub_zone}}


def _ads_service(token: str) -> dict[str, Any]:
    service: dict[str, Any] = {"envoy_grpc": {"cluster_name": XDS_CLUSTER}}
    if token:
        service["initial_metadata"] = [{"key": "authorization", "value": f"Bearer {token}"}]
    return service


def _xds_cluster(xds: XdsServer) -> dict[str, Any]:
    """One endpoint per control-plane replica, as Envoy's bootstrap lists them."""
    servers = [(xds.host, xds.port), *xds.replicas]
    endpoints = [{"endpoint": {"address": _address(host, port)}} for host, port in servers]
    return {
        **_xds_tls(xds.root_cert),
        "name": XDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": endpoints}],
        },
    }


def _xds_tls(root_cert: str) -> dict[str, Any]:
    """istio-agent's transport socket on xds-grpc: TLS, the control plane's
    certificate verified against the mesh root's file."""
    if not root_cert:
        return {}
    validation = {"trusted_ca": {"filename": root_cert}}
    return {
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": f"type.googleapis.com/{TLS_CONTEXT}",
                "common_tls_context": {
                    "validation_context": validation,
                    "alpn_protocols": ["h2"],
                },
            },
        }
    }


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}
