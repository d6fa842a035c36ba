"""Gateway TLS servers and credentialName Secrets, translated: the listener's
filter chains (by SNI, with Envoy's DownstreamTlsContext naming SDS
secrets), httpsRedirect as require_tls, and the Secrets SDS serves to whom."""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from tests.tls_certs import tls_secret
from translate_sim import INGRESS

from pilotfish.model import Proxy, build_snapshot
from pilotfish.translate import translate_listeners, translate_routes
from pilotfish.translate.secrets import translate_secrets

Obj = dict[str, Any]
SIDECAR_DEFAULT = Proxy(node_id="sidecar~127.0.0.1~a.default~default.svc", namespace="default")
SIDECAR_SYSTEM = Proxy(
    node_id="sidecar~127.0.0.1~b.istio-system~istio-system.svc", namespace="istio-system"
)


def server(port: int, proto: str, hosts: list[str], tls: Obj | None = None) -> Obj:
    out: Obj = {"port": {"number": port, "name": f"p{port}-{hosts[0]}", "protocol": proto}}
    out["hosts"] = hosts
    if tls is not None:
        out["tls"] = tls
    return out


def gateway(*servers: Obj) -> Obj:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "default"},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": list(servers)},
    }


def listener_of(objects: list[Obj], port: int) -> Any:
    (found,) = [
        x
        for x in translate_listeners(build_snapshot(objects), INGRESS)
        if x.name.endswith(f"_{port}")
    ]
    return found


def context(chain: Any) -> tls_pb2.DownstreamTlsContext:
    out = tls_pb2.DownstreamTlsContext()
    assert chain.transport_socket.typed_config.Unpack(out)
    return out


def test_https_servers_on_one_port_are_tls_chains_chosen_by_sni() -> None:
    listener = listener_of(
        [
            gateway(
                server(443, "HTTPS", ["a.example.com"], {"mode": "SIMPLE", "credentialName": "a"}),
                server(
                    443, "HTTPS", ["ns/b.example.com"], {"mode": "MUTUAL", "credentialName": "b"}
                ),
            )
        ],
        443,
    )
    names = [list(c.filter_chain_match.server_names) for c in listener.filter_chains]
    assert names == [["a.example.com"], ["b.example.com"]]
    assert all(c.filter_chain_match.transport_protocol == "tls" for c in listener.filter_chains)
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    simple, mutual = (context(c) for c in listener.filter_chains)
    common = simple.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["kubernetes://a"]
    assert not common.combined_validation_context.validation_context_sds_secret_config.name
    assert not simple.require_client_certificate.value
    assert common.tls_params.tls_minimum_protocol_version == common_pb2.TlsParameters.TLSv1_2
    validation = mutual.common_tls_context.combined_validation_context
    assert validation.validation_context_sds_secret_config.name == "kubernetes://b-cacert"
    assert mutual.require_client_certificate.value


def test_versions_ciphers_files_and_a_wildcard_host() -> None:
    tls = {
        "mode": "MUTUAL",
        "serverCertificate": "/etc/certs/server.pem",
        "privateKey": "/etc/certs/key.pem",
        "caCertificates": "/etc/certs/ca.pem",
        "minProtocolVersion": "TLSV1_3",
        "maxProtocolVersion": "TLSV1_3",
        "cipherSuites": ["ECDHE-RSA-AES128-GCM-SHA256"],
    }
    listener = listener_of([gateway(server(8443, "HTTPS", ["*"], tls))], 8443)
    (chain,) = listener.filter_chains
    assert not chain.filter_chain_match.server_names  # `*`: any name, or none
    common = context(chain).common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == [
        "file-cert:/etc/certs/server.pem~/etc/certs/key.pem"
    ]
    root = common.combined_validation_context.validation_context_sds_secret_config.name
    assert root == "file-root:/etc/certs/ca.pem"
    params = common.tls_params
    assert params.tls_minimum_protocol_version == common_pb2.TlsParameters.TLSv1_3
    assert params.tls_maximum_protocol_version == common_pb2.TlsParameters.TLSv1_3
    assert list(params.cipher_suites) == ["ECDHE-RSA-AES128-GCM-SHA256"]


def test_a_plain_server_beside_tls_ones_keeps_its_plaintext_chain() -> None:
    listener = listener_of(
        [
            gateway(
                server(9000, "HTTP", ["plain.example.com"]),
                server(9000, "HTTPS", ["s.example.com"], {"mode": "SIMPLE", "credentialName": "s"}),
            )
        ],
        9000,
    )
    chains = listener.filter_chains
    assert [c.HasField("transport_socket") for c in chains] == [True, False]


def test_passthrough_is_not_served() -> None:
    snapshot = build_snapshot(
        [gateway(server(443, "HTTPS", ["p.example.com"], {"mode": "PASSTHROUGH"}))]
    )
    assert translate_listeners(snapshot, INGRESS) == []


def test_https_redirect_requires_tls_on_the_servers_hosts() -> None:
    objects = [
        gateway(
            server(80, "HTTP", ["*.example.com"], {"httpsRedirect": True}),
            server(80, "HTTP", ["plain.other.org"]),
        ),
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "hosts": ["a.example.com", "plain.other.org"],
                "gateways": ["edge"],
                "http": [{"route": [{"destination": {"host": "web"}}]}],
            },
        },
    ]
    (table,) = translate_routes(build_snapshot(objects), INGRESS, ["http.80"])
    required = {v.domains[0]: v.require_tls for v in table.virtual_hosts}
    assert required == {
        "*.example.com": rc.VirtualHost.ALL,  # even with no VirtualService bound
        "a.example.com": rc.VirtualHost.ALL,
        "plain.other.org": rc.VirtualHost.NONE,
    }


def test_secrets_are_served_only_to_proxies_of_their_namespace() -> None:
    snapshot = build_snapshot(
        [
            tls_secret("cred", tls_crt=b"CERT", tls_key=b"KEY", ca_crt=b"CA"),
            tls_secret("cred", "default", tls_crt=b"OTHER", tls_key=b"K2"),
        ]
    )
    names = ["kubernetes://cred", "kubernetes://cred-cacert"]
    served = {s.name: s for s in translate_secrets(snapshot, INGRESS, names)}
    assert served["kubernetes://cred"].tls_certificate.certificate_chain.inline_bytes == b"CERT"
    assert served["kubernetes://cred"].tls_certificate.private_key.inline_bytes == b"KEY"
    assert served["kubernetes://cred-cacert"].validation_context.trusted_ca.inline_bytes == b"CA"
    (mine,) = translate_secrets(snapshot, SIDECAR_DEFAULT, names)  # its own namespace's; no CA
    assert mine.tls_certificate.certificate_chain.inline_bytes == b"OTHER"
    assert translate_secrets(snapshot, SIDECAR_DEFAULT, ["kubernetes://istio-system/cred"]) == []
    explicit = translate_secrets(snapshot, SIDECAR_SYSTEM, ["kubernetes://istio-system/cred"])
    assert [s.name for s in explicit] == ["kubernetes://istio-system/cred"]
    assert translate_secrets(snapshot, INGRESS, ["default", "kubernetes://missing"]) == []


def test_a_cacert_secret_of_its_own_wins_over_the_ca_crt_key() -> None:
    snapshot = build_snapshot(
        [
            tls_secret("cred", tls_crt=b"C", tls_key=b"K", ca_crt=b"IN-SECRET"),
            tls_secret("cred-cacert", ca_crt=b"COMPANION"),
        ]
    )
    (found,) = translate_secrets(snapshot, INGRESS, ["kubernetes://cred-cacert"])
    assert found.validation_context.trusted_ca.inline_bytes == b"COMPANION"


def test_istio_generic_secret_keys() -> None:
    generic = tls_secret("g", cert=b"C", key=b"K", cacert=b"CA")
    snapshot = build_snapshot([generic])
    served = translate_secrets(snapshot, INGRESS, ["kubernetes://g", "kubernetes://g-cacert"])
    assert [s.name for s in served] == ["kubernetes://g", "kubernetes://g-cacert"]


def test_routes_of_a_mutual_servers_hosts_want_a_verified_client_certificate() -> None:
    """The port's servers share one route table: a client of the SIMPLE
    chain must not reach the MUTUAL server's host by naming it in Host."""
    objects = [
        gateway(
            server(443, "HTTPS", ["open.example.com"], {"mode": "SIMPLE", "credentialName": "a"}),
            server(443, "HTTPS", ["*.secure.org"], {"mode": "MUTUAL", "credentialName": "b"}),
        ),
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "hosts": ["open.example.com", "api.secure.org"],
                "gateways": ["edge"],
                "http": [{"route": [{"destination": {"host": "web"}}]}],
            },
        },
    ]
    (table,) = translate_routes(build_snapshot(objects), INGRESS, ["http.443"])
    wanted = {
        v.domains[0]: [r.match.tls_context.validated.value for r in v.routes]
        for v in table.virtual_hosts
    }
    assert wanted == {"api.secure.org": [True], "open.example.com": [False]}
