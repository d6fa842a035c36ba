"""Which HTTP a cluster speaks to its endpoints, as Istio decides it
(setUpstreamProtocol, applyH2Upgrade, useClientProtocol): the
HttpProtocolOptions' `explicit_http_config.http2_protocol_options` for a port
whose protocol is HTTP/2 (`http2`, `grpc`, `grpc-web`), or one a
DestinationRule's `h2UpgradePolicy: UPGRADE` (or the mesh config's) upgrades;
`use_downstream_protocol_config` for `useClientProtocol: true`, and for a
sidecar's port whose protocol is sniffed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo

from pilotfish.model import Protocol
from pilotfish.objects import Obj

UPGRADE, DO_NOT_UPGRADE = "UPGRADE", "DO_NOT_UPGRADE"


def set_port_protocol(options: hpo.HttpProtocolOptions, protocol: Protocol, sidecar: bool) -> None:
    """Istio's setUpstreamProtocol: HTTP/2 for an HTTP/2 port; a sidecar's
    sniffed port speaks upstream what its client spoke (a gateway's does not:
    clients that negotiate h2 with it say nothing of the backend)."""
    if protocol.is_http2:
        set_http2(options)
    elif sidecar and protocol is Protocol.UNSUPPORTED:
        use_client_protocol(options)


def should_h2_upgrade(mesh: Mapping[str, Any], protocol: Protocol, pool: Obj) -> bool:
    """Istio's shouldH2Upgrade: the connection pool's policy wins (UPGRADE
    says the port is HTTP even when it is sniffed); else the mesh's, for HTTP
    ports only, so that a sniffed port never gets HTTP/2 its app may not speak."""
    policy = str((pool.get("http") or {}).get("h2UpgradePolicy") or "")
    if policy in (UPGRADE, DO_NOT_UPGRADE):
        return policy == UPGRADE
    return bool(protocol.is_http and mesh.get("h2UpgradePolicy") == UPGRADE)


def set_http2(options: hpo.HttpProtocolOptions) -> None:
    """HTTP/2 to every endpoint (replacing useClientProtocol, as in Istio);
    options already HTTP/2 keep their settings (maxConcurrentStreams)."""
    if not is_http2(options):
        options.explicit_http_config.http2_protocol_options.SetInParent()


def use_client_protocol(options: hpo.HttpProtocolOptions) -> None:
    config = options.use_downstream_protocol_config
    config.http_protocol_options.SetInParent()
    config.http2_protocol_options.SetInParent()


def is_http2(options: hpo.HttpProtocolOptions) -> bool:
    return bool(options.explicit_http_config.HasField("http2_protocol_options"))
