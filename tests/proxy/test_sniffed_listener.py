"""Compiling a listener whose chains the http_inspector chooses: what it
accepts, and the clear errors (a NACK) for what it does not."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.listener.v3.listener_pb2 import Listener
from google.protobuf import json_format

from pilotfish.proxy.config import ProxyConfig
from pilotfish.proxy.listeners import ListenerError, is_sniffed
from pilotfish.proxy.sniff import compile_sniffed

PREFIX = "type.googleapis.com/"
HCM = PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP = PREFIX + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HTTP_INSPECTOR = PREFIX + "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
ROUTER = PREFIX + "envoy.extensions.filters.http.router.v3.Router"


def http_chain() -> dict[str, Any]:
    manager = {
        "@type": HCM,
        "stat_prefix": "in",
        "route_config": {"name": "in", "virtual_hosts": []},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "filter_chain_match": {"application_protocols": ["http/1.1", "http/1.0", "h2c"]},
        "filters": [{"name": "hcm", "typed_config": manager}],
    }


def tcp_chain() -> dict[str, Any]:
    proxy = {"@type": TCP, "stat_prefix": "in", "cluster": "raw"}
    return {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy}]}


def sniffed(chains: list[dict[str, Any]], **extra: Any) -> Listener:
    return json_format.ParseDict(
        {
            "name": "sniffed",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 7000}},
            "listener_filters": [
                {
                    "name": "envoy.filters.listener.http_inspector",
                    "typed_config": {"@type": HTTP_INSPECTOR},
                }
            ],
            "filter_chains": chains,
            **extra,
        },
        Listener(),
    )


def test_envoys_defaults_when_the_listener_says_nothing() -> None:
    listener = sniffed([http_chain(), tcp_chain()])
    assert is_sniffed(listener)
    compiled = compile_sniffed(listener)
    assert compiled.sniffing is not None
    assert compiled.sniffing.timeout == 15.0  # Envoy's listener_filters_timeout
    assert not compiled.sniffing.continue_on_timeout
    assert compiled.sniffing.tcp.tcp.clusters == (("raw", 1),)


@pytest.mark.parametrize(
    ("chains", "error"),
    [
        ([http_chain()], "no chain ends with a tcp_proxy"),
        ([tcp_chain()], "no chain ends with an HttpConnectionManager"),
        (
            [http_chain(), tcp_chain(), {"filters": []}],
            "filter_chains[2]: under the http_inspector a chain ends with an "
            "HttpConnectionManager or a tcp_proxy",
        ),
    ],
)
def test_chains_it_cannot_choose_between_are_refused(
    chains: list[dict[str, Any]], error: str
) -> None:
    with pytest.raises(ListenerError) as raised:
        compile_sniffed(sniffed(chains))
    assert error in str(raised.value)
    assert str(raised.value).startswith("listener sniffed: ")


def test_both_sides_serve_the_same_transports() -> None:
    tls_only_tcp = tcp_chain() | {
        "filter_chain_match": {"transport_protocol": "tls"},
        "transport_socket": {
            "name": "tls",
            "typed_config": {
                "@type": PREFIX + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [
                        {"name": "default", "sds_config": {"ads": {}}}
                    ]
                },
            },
        },
    }
    with pytest.raises(ListenerError, match="must serve the same transports"):
        compile_sniffed(sniffed([http_chain(), tls_only_tcp]))


def test_a_bad_sniffed_listener_is_nacked_and_changes_nothing() -> None:
    config = ProxyConfig()
    good = sniffed([http_chain(), tcp_chain()], listener_filters_timeout="1s")
    config.load_static([good], [])
    before = config.snapshot.listeners["sniffed"]
    assert before.sniffing is not None and before.sniffing.timeout == 1.0
    with pytest.raises(ListenerError, match="no chain ends with a tcp_proxy"):
        config.load_static([sniffed([http_chain()])], [])
    assert config.snapshot.listeners["sniffed"] is before
