"""The proxy's side of credentialName Secrets: the SDS names it subscribes
to, how it checks an SDS update (NACK naming the Secret, the last good one
kept), how a listener's TLS chain is chosen by SNI, and require_tls."""

from __future__ import annotations

import contextlib
import json
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.config.core.v3.base_pb2 import Node
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse
from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyProto
from tests.tls_certs import pem_pair

from pilotfish.model import Proxy, ProxyType, build_snapshot
from pilotfish.proxy import xds_types
from pilotfish.proxy.ads import AdsProtocol
from pilotfish.proxy.config import ProxyConfig
from pilotfish.proxy.routing import compile_route_config
from pilotfish.proxy.routing.actions import Redirect
from pilotfish.proxy.routing.request import Request
from pilotfish.proxy.sds_secrets import SecretSet
from pilotfish.proxy.tls import (
    DownstreamTls,
    ServerChains,
    TlsConfigError,
    TlsContexts,
    compile_downstream,
)
from pilotfish.translate import translate_listeners
from pilotfish.translate.gateway_tls import downstream_context

INGRESS = Proxy(
    node_id="router~127.0.0.1~gw-0.istio-system~istio-system.svc.cluster.local",
    namespace="istio-system",
    type=ProxyType.ROUTER,
    labels={"istio": "ingressgateway"},
)


def https_gateway() -> dict[str, object]:
    tls = {"mode": "MUTUAL", "credentialName": "cred"}
    port = {"number": 8443, "name": "https", "protocol": "HTTPS"}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "default"},
        "spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [{"port": port, "hosts": ["gw.example.com"], "tls": tls}],
        },
    }


def tls_secret(name: str, chain: bytes, key: bytes) -> AnyProto:
    secret = Secret(name=name)
    secret.tls_certificate.certificate_chain.inline_bytes = chain
    secret.tls_certificate.private_key.inline_bytes = key
    packed = AnyProto()
    packed.Pack(secret)
    return packed


def packed_listeners() -> list[AnyProto]:
    out = []
    for listener in translate_listeners(build_snapshot([https_gateway()]), INGRESS):
        packed = AnyProto()
        packed.Pack(listener)
        out.append(packed)
    return out


def test_a_listener_naming_kubernetes_secrets_subscribes_to_them() -> None:
    config = ProxyConfig()
    wanted = config.apply(xds_types.LISTENER, packed_listeners())
    assert wanted[xds_types.SECRET] == frozenset({"kubernetes://cred", "kubernetes://cred-cacert"})
    # Once subscribed, a listener update without TLS unsubscribes (an empty list).
    assert config.apply(xds_types.LISTENER, [])[xds_types.SECRET] == frozenset()


def test_no_tls_no_sds_subscription() -> None:
    assert xds_types.SECRET not in ProxyConfig().apply(xds_types.LISTENER, [])


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            lambda: (pem_pair()[0], pem_pair()[1]),
            "private_key does not match the certificate",
        ),
        (lambda: (b"-----BEGIN CERTIFICATE-----\nnot base64\n", pem_pair()[1]), "not a PEM"),
        (lambda: (pem_pair()[0], b"garbage"), "not an unencrypted PEM private key"),
        (lambda: pem_pair(days=1, ago=2), "expired on"),
        (lambda: pem_pair(days=3, ago=-1), "is not valid before"),
    ],
    ids=["mismatched key", "bad pem", "bad key", "expired", "not yet valid"],
)
def test_a_bad_secret_is_nacked_naming_it_and_the_last_good_one_stays(
    make: object, reason: str
) -> None:
    config = ProxyConfig()
    ads = AdsProtocol(Node(id="router~1~gw.istio-system~x"), config.apply)
    good = tls_secret("kubernetes://cred", *pem_pair())
    ack = ads.on_response(
        DiscoveryResponse(type_url=xds_types.SECRET, version_info="1", resources=[good])
    )
    assert not ack[0].HasField("error_detail")
    bad = tls_secret("kubernetes://cred", *make())  # type: ignore[operator]
    (nack,) = ads.on_response(
        DiscoveryResponse(type_url=xds_types.SECRET, version_info="2", resources=[good, bad])
    )
    assert nack.error_detail.message.startswith("Secret kubernetes://cred: ")
    assert reason in nack.error_detail.message
    assert nack.version_info == "1"  # still the last accepted
    assert config.snapshot.secrets["kubernetes://cred"] == _unpacked(good)
    assert config.snapshot.secrets_version == 1


def test_served_secrets_join_the_tls_contexts_and_config_dump_redacts_keys() -> None:
    config = ProxyConfig()
    chain, key = pem_pair()
    config.apply(xds_types.SECRET, [tls_secret("kubernetes://cred", chain, key)])
    secrets = SecretSet(None, config.served_secrets)
    assert secrets.version == 1
    assert set(secrets.secrets()) == {"kubernetes://cred"}
    dump = json.dumps(secrets.config_dumps())
    assert "kubernetes://cred" in dump
    assert key.decode().splitlines()[1] not in dump
    assert "W3JlZGFjdGVkXQ==" in dump  # base64 of Envoy's "[redacted]"
    assert xds_types.SECRET not in config.snapshot.raw  # never dumped whole
    assert SecretSet(None, ProxyConfig().served_secrets).config_dumps() == []


def test_sni_chooses_exact_then_longest_wildcard_then_default() -> None:
    def tls(name: str) -> object:
        return name  # select() only hands back what it holds

    chains = ServerChains(
        (("*.example.com", tls("wild")), ("*.a.example.com", tls("longer")), ("x.com", tls("x"))),
        tls("default"),  # type: ignore[arg-type]
    )
    assert chains.select("x.com") == "x"
    assert chains.select("X.COM") == "x"
    assert chains.select("b.a.example.com") == "longer"
    assert chains.select("b.example.com") == "wild"
    assert chains.select("other.org") == "default"
    assert chains.select(None) == "default"
    assert ServerChains((("x.com", "x"),), None).select("y.com") is None  # type: ignore[arg-type]


def test_downstream_contexts_pilotfish_cannot_serve_are_refused() -> None:
    server = {"tls": {"mode": "SIMPLE", "credentialName": "c", "cipherSuites": ["NOPE-CIPHER"]}}
    with pytest.raises(TlsConfigError, match="unknown cipher suite 'NOPE-CIPHER'"):
        compile_downstream(downstream_context(server), "chain")
    server = {"tls": {"mode": "SIMPLE", "credentialName": "c", "minProtocolVersion": "TLSV1_3"}}
    server["tls"]["maxProtocolVersion"] = "TLSV1_2"
    with pytest.raises(TlsConfigError, match="tls_minimum_protocol_version is above"):
        compile_downstream(downstream_context(server), "chain")
    required = tls_pb2.DownstreamTlsContext()
    required.CopyFrom(downstream_context({"tls": {"mode": "SIMPLE", "credentialName": "c"}}))
    required.require_client_certificate.value = True
    with pytest.raises(TlsConfigError, match="require_client_certificate needs"):
        compile_downstream(required, "chain")


def test_require_tls_redirects_plaintext_requests_to_https() -> None:
    config = json_format.ParseDict(
        {
            "name": "http.80",
            "virtual_hosts": [
                {
                    "name": "a",
                    "domains": ["a.example.com"],
                    "require_tls": "ALL",
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                },
                {
                    "name": "b",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                },
            ],
        },
        route_pb2.RouteConfiguration(),
    )
    table = compile_route_config(config)
    request = Request(path=b"/x?y=1", authority=b"a.example.com")
    route = table.route(request)
    assert route is not None and isinstance(route.action, Redirect)
    assert route.action.status == 301
    assert route.action.location(request) == b"https://a.example.com/x?y=1"
    tls_request = Request(path=b"/x", authority=b"a.example.com", scheme=b"https")
    assert not isinstance(table.route(tls_request).action, Redirect)  # type: ignore[union-attr]
    other = table.route(Request(authority=b"b.example.com"))
    assert other is not None and not isinstance(other.action, Redirect)


def _unpacked(packed: AnyProto) -> Secret:
    out = Secret()
    packed.Unpack(out)
    return out


def test_tls_context_match_wants_a_verified_client_certificate() -> None:
    config = json_format.ParseDict(
        {
            "name": "http.443",
            "virtual_hosts": [
                {
                    "name": "m",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {
                                "prefix": "/",
                                "tls_context": {"presented": True, "validated": True},
                            },
                            "route": {"cluster": "c"},
                        }
                    ],
                }
            ],
        },
        route_pb2.RouteConfiguration(),
    )
    table = compile_route_config(config)
    assert table.route(Request(authority=b"m.example.com")) is None  # 404, NR
    assert table.route(Request(authority=b"m.example.com", client_certificate_verified=True))


def test_one_servers_missing_secret_fails_only_its_own_handshakes() -> None:
    """Two SNI chains on a port; only the second one's Secret has arrived:
    its clients still get a handshake, with its certificate."""
    config = ProxyConfig()
    chain, key = pem_pair()
    config.apply(xds_types.SECRET, [tls_secret("kubernetes://there", chain, key)])
    contexts = TlsContexts(SecretSet(None, config.served_secrets))

    def compiled(credential: str) -> DownstreamTls:
        server = {"tls": {"mode": "SIMPLE", "credentialName": credential}}
        return compile_downstream(downstream_context(server), credential)

    chains = ServerChains(
        (("a.example.com", compiled("missing")), ("b.example.com", compiled("there"))), None
    )
    server = contexts.server_by_sni(chains)
    assert server is not None
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cadata=chain.decode())
    client.check_hostname = False
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="b.example.com")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side, out, peer_in in ((c, c_out, s_in), (s, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
            peer_in.write(out.read())
    assert c.getpeercert(binary_form=True) == x509.load_pem_x509_certificate(chain).public_bytes(
        serialization.Encoding.DER
    )
