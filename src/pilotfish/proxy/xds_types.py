"""The xDS type URLs pilotfish speaks, and the protobuf modules behind them.

Importing this module registers every message type that may arrive inside an
`Any` (listeners' network filters, HTTP filters, per-route configs), so that
JSON/YAML bootstraps and discovery responses can be decoded.
"""

from __future__ import annotations

import importlib

from envoy.config.bootstrap.v3 import bootstrap_pb2  # noqa: F401  (registers types)
from envoy.config.cluster.v3 import cluster_pb2  # noqa: F401
from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: F401
from envoy.config.listener.v3 import listener_pb2  # noqa: F401
from envoy.config.route.v3 import route_pb2  # noqa: F401
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401
from envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: F401
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2  # noqa: F401
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.sni_cluster.v3 import sni_cluster_pb2  # noqa: F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401

PREFIX = "type.googleapis.com/"
LISTENER = PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
HCM = PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

# Order in which a fresh proxy must receive them (Envoy's xDS "make before break").
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
SHORT_NAMES = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS"}

_EXT_AUTHZ = "envoy.extensions.filters.http.ext_authz.v3"
_JWT_AUTHN = "envoy.extensions.filters.http.jwt_authn.v3"
_HTTP_RBAC = "envoy.extensions.filters.http.rbac.v3"
_NETWORK_RBAC = "envoy.extensions.filters.network.rbac.v3"
EXT_AUTHZ_CONFIG = f"{_EXT_AUTHZ}.ExtAuthz"
JWT_AUTHN_CONFIG = f"{_JWT_AUTHN}.JwtAuthentication"
HTTP_RBAC_CONFIG = f"{_HTTP_RBAC}.RBAC"
NETWORK_RBAC_CONFIG = f"{_NETWORK_RBAC}.RBAC"
# The configs of filters that only some sidecars are sent (authorization,
# JWT): their modules, imported -- and so registered for `Any` -- when a
# config names the type, not by every sidecar at start (with the filters'
# own code, ~0.5 MiB that most sidecars never use).
ON_DEMAND = {
    EXT_AUTHZ_CONFIG: f"{_EXT_AUTHZ}.ext_authz_pb2",
    f"{_EXT_AUTHZ}.ExtAuthzPerRoute": f"{_EXT_AUTHZ}.ext_authz_pb2",
    JWT_AUTHN_CONFIG: f"{_JWT_AUTHN}.config_pb2",
    f"{_JWT_AUTHN}.PerRouteConfig": f"{_JWT_AUTHN}.config_pb2",
    HTTP_RBAC_CONFIG: f"{_HTTP_RBAC}.rbac_pb2",
    f"{_HTTP_RBAC}.RBACPerRoute": f"{_HTTP_RBAC}.rbac_pb2",
    NETWORK_RBAC_CONFIG: f"{_NETWORK_RBAC}.rbac_pb2",
}


def register(type_name: str) -> None:
    """Registers an on-demand type (a full name, or a type URL) for `Any`;
    other types are registered already, or unknown."""
    module = ON_DEMAND.get(type_name.rpartition("/")[2])
    if module is not None:
        importlib.import_module(module)


def register_named(data: object) -> None:
    """Registers each on-demand type that a JSON or YAML config (parsed, not
    yet decoded) names in an "@type", so that json_format can decode it."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "@type" and isinstance(value, str):
                register(value)
            else:
                register_named(value)
    elif isinstance(data, list):
        for item in data:
            register_named(item)
