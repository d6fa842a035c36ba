"""Security for proxyless gRPC, as grpcio's own xDS support reads it (gRFC
A29 TLS, A36 xDS-enabled servers, A41 RBAC), the way istiod's grpcgen builds it.

- Certificates come from the bootstrap's `certificate_providers` (instance
  `default`, the `file_watcher` plugin over the files the workload's agent
  writes): contexts name that instance, never SDS, files or TLS parameters,
  which grpc NACKs.
- Clients: a cluster carries an UpstreamTlsContext (the workload certificate,
  the mesh root, the destination's SPIFFE identities as SAN matchers) when
  the decision sidecars take (mtls.outbound_tls) says ISTIO_MUTUAL, that is
  when a DestinationRule asks for it, as with istiod's proxyless clients.
- Servers: an xDS-enabled grpcio server asks for the Listener named by its
  bootstrap's `server_listener_resource_name_template` with its listening
  `IP:PORT`. It gets one filter chain: mTLS (a client certificate required)
  when PeerAuthentication says STRICT for the port, else plaintext.
  PERMISSIVE is plaintext, as istiod builds it: gRPC's filter chain match
  cannot tell TLS from plaintext (A36), so it cannot serve both on a port.
  The chain's HttpConnectionManager runs the AuthorizationPolicy RBAC
  filters (DENY, then ALLOW; CUSTOM rules deny, since gRPC has no ext_authz
  for them) and the router, over a route of `non_forwarding_action`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf.wrappers_pb2 import BoolValue

from pilotfish.model import Proxy, Service, Snapshot
from pilotfish.objects import Obj
from pilotfish.translate import mtls, names
from pilotfish.translate.authz import (
    BAD_CUSTOM_SUFFIX,
    HTTP_RBAC,
    action_of,
    authz_settings,
    is_dry_run,
    policies_for,
    translate_policy_rules,
)
from pilotfish.translate.protos import pack, socket_address

PROVIDER_INSTANCE = "default"  # the bootstrap's certificate provider, as Istio's agent names it
# Listener names of xDS-enabled servers: Istio's agent's template, and gRPC's
# own default when a bootstrap has none.
SERVER_LISTENER_PREFIXES = (
    "xds.istio.io/grpc/lds/inbound/",
    "grpc/server?xds.resource.listening_address=",
)
SERVER_LISTENER_TEMPLATE = SERVER_LISTENER_PREFIXES[0] + "%s"


# -- TLS contexts ----------------------------------------------------------------------


def _instance(certificate: str) -> common_pb2.CertificateProviderPluginInstance:
    return common_pb2.CertificateProviderPluginInstance(
        instance_name=PROVIDER_INSTANCE, certificate_name=certificate
    )


def grpc_common_tls(sans: Iterable[str] = ()) -> tls_pb2.CommonTlsContext:
    """The workload certificate and the mesh root from the bootstrap's
    provider; `sans`: the identities the peer must present (clients only:
    grpc NACKs SAN matchers on servers)."""
    return tls_pb2.CommonTlsContext(
        tls_certificate_provider_instance=_instance(mtls.CERTIFICATE),
        validation_context=common_pb2.CertificateValidationContext(
            ca_certificate_provider_instance=_instance(mtls.ROOTCA),
            match_subject_alt_names=[string_pb2.StringMatcher(exact=san) for san in sans],
        ),
    )


def apply_grpc_tls(
    out: Cluster, snapshot: Snapshot, service: Service, port: int, subset: str, tls: Obj
) -> None:
    """A proxyless client's cluster: mesh mTLS when the DestinationRule says
    ISTIO_MUTUAL. Auto mTLS stays plaintext, as istiod leaves it: gRPC cannot
    choose per endpoint, and TLS naming a certificate provider is NACKed by
    a client whose bootstrap has none. SIMPLE and MUTUAL name files gRPC
    cannot load: as istiod, no TLS."""
    decision = mtls.outbound_tls(snapshot, service, port, subset, tls)
    if decision.mode is not mtls.Outbound.MUTUAL:
        return
    context = tls_pb2.UpstreamTlsContext(common_tls_context=grpc_common_tls(decision.sans))
    out.transport_socket.CopyFrom(mtls.transport_socket(context))


# -- xDS-enabled servers -----------------------------------------------------------------


def server_address(name: str) -> tuple[str, int] | None:
    """(IP, port) of a server listener name, or None if the name is not one."""
    for prefix in SERVER_LISTENER_PREFIXES:
        if name.startswith(prefix):
            host, _, port = name[len(prefix) :].rpartition(":")
            if host and port.isdigit() and 0 < int(port) < 65536:
                return host.strip("[]"), int(port)
    return None


def translate_server_listeners(
    snapshot: Snapshot, proxy: Proxy, names: Iterable[str]
) -> list[Listener]:
    """A Listener for each server listener name asked for. The proxy's own
    namespace and labels (its bootstrap's node metadata) pick its
    PeerAuthentication and AuthorizationPolicies, so a server is secured
    before, and whether or not, it registers as an endpoint."""
    out = []
    filters: list[hcm_pb2.HttpFilter] | None = None
    for name in sorted(set(names)):
        address = server_address(name)
        if address is None:
            continue
        if filters is None:
            filters = grpc_server_filters(snapshot, proxy)
        host, port = address
        mode = mtls.inbound_mode(snapshot, proxy.namespace, proxy.labels, port)
        out.append(
            Listener(
                name=name,
                address=socket_address(host, port),
                traffic_direction=base_pb2.INBOUND,
                filter_chains=[_server_chain(port, mode is mtls.Mode.STRICT, filters)],
            )
        )
    return out


def _server_chain(
    port: int, strict: bool, filters: list[hcm_pb2.HttpFilter]
) -> listener_components_pb2.FilterChain:
    route = rc.Route(
        match=rc.RouteMatch(prefix="/"), non_forwarding_action=rc.NonForwardingAction()
    )
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=f"inbound_{port}",
        route_config=route_pb2.RouteConfiguration(
            name=f"inbound|http|{port}",
            virtual_hosts=[
                rc.VirtualHost(name=f"inbound|http|{port}", domains=["*"], routes=[route])
            ],
        ),
        http_filters=filters,
    )
    chain = listener_components_pb2.FilterChain(
        name="inbound-mtls" if strict else "inbound-plaintext",
        filters=[listener_components_pb2.Filter(name=names.HCM_FILTER, typed_config=pack(manager))],
    )
    if strict:
        context = tls_pb2.DownstreamTlsContext(
            common_tls_context=grpc_common_tls(), require_client_certificate=BoolValue(value=True)
        )
        chain.transport_socket.CopyFrom(mtls.transport_socket(context))
    return chain


def grpc_server_filters(snapshot: Snapshot, proxy: Proxy) -> list[hcm_pb2.HttpFilter]:
    """gRFC A41: RBAC filters (unique names: grpc NACKs repeats) then the router."""
    chain = []
    for action, rules in _enforced_rules(snapshot, proxy):
        config = http_rbac_pb2.RBAC(rules=rules)
        name = f"{HTTP_RBAC}-{action.lower()}"
        chain.append(hcm_pb2.HttpFilter(name=name, typed_config=pack(config)))
    chain.append(
        hcm_pb2.HttpFilter(name=names.ROUTER_FILTER, typed_config=pack(router_pb2.Router()))
    )
    return chain


def _enforced_rules(snapshot: Snapshot, proxy: Proxy) -> list[tuple[str, rbac_pb2.RBAC]]:
    """DENY and ALLOW rule sets of the policies selecting the server. gRPC
    reads no shadow rules and has no AUDIT, so dry-run and AUDIT policies
    are left out; CUSTOM rules join DENY, so an authorizer gRPC cannot call
    never lets a request through."""
    policies = policies_for(snapshot.authorization_policies, proxy.namespace, proxy.labels)
    enforced = [p for p in policies if not is_dry_run(p)]
    settings = authz_settings(snapshot)
    out = []
    deny = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY)
    for policy in enforced:
        action = action_of(policy)
        if action in ("DENY", "CUSTOM"):
            suffix = BAD_CUSTOM_SUFFIX if action == "CUSTOM" else ""
            _merge(deny, translate_policy_rules(policy, deny.action, settings, False), suffix)
    if deny.policies:
        out.append(("DENY", deny))
    allowing = [p for p in enforced if action_of(p) == "ALLOW"]
    if allowing:
        allow = rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW)
        for policy in allowing:
            _merge(allow, translate_policy_rules(policy, allow.action, settings, False), "")
        out.append(("ALLOW", allow))
    return out


def _merge(into: rbac_pb2.RBAC, policies: dict[str, Any], suffix: str) -> None:
    for name, generated in policies.items():
        into.policies[name + suffix].CopyFrom(generated)
