"""A port that declares no protocol, in translation: Istio's protocol
detection listener (http_inspector, an HTTP and a TCP chain per transport,
the mesh config's protocolDetectionTimeout), compiled by the proxy."""

from __future__ import annotations

from typing import Any

import pytest
from translate_sim import instance, service

from pilotfish.model import Proxy, build_snapshot
from pilotfish.proxy.listeners import is_sniffed
from pilotfish.proxy.sniff import compile_sniffed
from pilotfish.proxy.tcp.listener import is_tcp_listener
from pilotfish.translate import translate_listeners

Obj = dict[str, Any]
APP = Proxy(node_id="sidecar~127.0.0.1~app-v1-0.default~x", namespace="default")
HTTP_INSPECTOR = "envoy.filters.listener.http_inspector"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"


def app_service(port: Obj) -> Obj:
    return service("app", spec_ports=None) | {
        "spec": {
            "selector": {"app": "app"},
            "ports": [{"port": 7000, "targetPort": "http", **port}],
        }
    }


def mesh_config(text: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": text},
    }


def peer_authentication(mode: str) -> Obj:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "default"},
        "spec": {"mtls": {"mode": mode}},
    }


def inbound(port: Obj, *extra: Obj) -> Any:
    inst = instance("app", "v1", 17000)
    snap = build_snapshot([app_service(port), *extra], [inst])
    (listener,) = [x for x in translate_listeners(snap, APP) if x.name.startswith("inbound")]
    return listener


def chain_shapes(listener: Any) -> list[tuple[str, str, tuple[str, ...]]]:
    """(network filter, transport, application protocols) per chain."""
    return [
        (
            c.filters[-1].name,
            c.filter_chain_match.transport_protocol,
            tuple(c.filter_chain_match.application_protocols),
        )
        for c in listener.filter_chains
    ]


HCM, TCP = "envoy.filters.network.http_connection_manager", "envoy.filters.network.tcp_proxy"
MTLS_HTTP = ("istio-http/1.0", "istio-http/1.1", "istio-h2")
PLAIN_HTTP = ("http/1.0", "http/1.1", "h2c")


@pytest.mark.parametrize("port", [{"name": ""}, {"name": "web"}, {"name": "unknown-x"}])
def test_a_port_of_no_declared_protocol_is_sniffed(port: Obj) -> None:
    listener = inbound(port)
    assert [f.name for f in listener.listener_filters] == [TLS_INSPECTOR, HTTP_INSPECTOR]
    # PERMISSIVE: HTTP and TCP over mutual TLS, HTTP and TCP in plaintext, as Istio's
    assert chain_shapes(listener) == [
        (HCM, "tls", MTLS_HTTP),
        (TCP, "tls", ("istio-peer-exchange", "istio")),
        (HCM, "raw_buffer", PLAIN_HTTP),
        (TCP, "raw_buffer", ()),
    ]
    # Istio's default protocolDetectionTimeout is 0s: wait for the client's first bytes
    assert listener.HasField("listener_filters_timeout")
    assert listener.listener_filters_timeout.ToNanoseconds() == 0
    assert listener.continue_on_listener_filters_timeout
    assert is_sniffed(listener) and not is_tcp_listener(listener)
    compiled = compile_sniffed(listener)
    assert compiled.http.routes is not None and compiled.sniffing is not None
    assert compiled.sniffing.tcp.tcp.clusters == (("inbound|17000||", 1),)
    assert compiled.sniffing.timeout == 0 and compiled.sniffing.continue_on_timeout
    assert compiled.tls is not None and compiled.plaintext


@pytest.mark.parametrize(
    "port", [{"name": "http"}, {"name": "tcp"}, {"name": "web", "appProtocol": "http"}]
)
def test_a_declared_protocol_is_not_sniffed(port: Obj) -> None:
    assert not is_sniffed(inbound(port))


def test_the_mesh_config_sets_the_detection_timeout() -> None:
    listener = inbound({"name": ""}, mesh_config("protocolDetectionTimeout: 250ms"))
    assert listener.listener_filters_timeout.ToMilliseconds() == 250
    assert compile_sniffed(listener).sniffing.timeout == 0.25  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["protocolDetectionTimeout: soon", "protocolDetectionTimeout: -1s"])
def test_a_bad_detection_timeout_is_istios_default(bad: str) -> None:
    listener = inbound({"name": ""}, mesh_config(bad))
    assert listener.listener_filters_timeout.ToNanoseconds() == 0


def test_strict_leaves_the_tls_chains_and_disable_the_plaintext_ones() -> None:
    strict = inbound({"name": ""}, peer_authentication("STRICT"))
    assert [s[:2] for s in chain_shapes(strict)] == [(HCM, "tls"), (TCP, "tls")]
    compiled = compile_sniffed(strict)
    assert compiled.tls is not None and not compiled.plaintext
    disabled = inbound({"name": ""}, peer_authentication("DISABLE"))
    assert chain_shapes(disabled) == [(HCM, "", PLAIN_HTTP), (TCP, "", ())]
    assert [f.name for f in disabled.listener_filters] == [HTTP_INSPECTOR]
    assert compile_sniffed(disabled).tls is None
