"""Telemetry and the mesh config translated into the connection managers'
tracing, then compiled by the proxy (what the sidecar would do), without sockets."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import yaml
from translate_sim import BOOKINFO_INSTANCES, BOOKINFO_SERVICES, INGRESS, PRODUCTPAGE

from pilotfish.model import Proxy, build_snapshot
from pilotfish.proxy.listeners import compile_listener
from pilotfish.proxy.tracing.config import TracingConfig
from pilotfish.translate import translate_listeners

Obj = dict[str, Any]
API = {"PILOTFISH_API": "http://127.0.0.1:15080"}
OTEL = {"name": "otel", "opentelemetry": {"service": "otel.observability.svc.cluster.local",
                                          "port": 4318, "http": {"timeout": "3s"}}}  # fmt: skip


def telemetry(name: str, namespace: str, tracing: list[Obj], selector: Obj | None = None) -> Obj:
    spec: Obj = {"tracing": tracing}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    return {
        "apiVersion": "telemetry.istio.io/v1",
        "kind": "Telemetry",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def mesh(config: Obj) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": yaml.safe_dump(config)},
    }


def tracing_of(*objects: Obj, proxy: Proxy = PRODUCTPAGE) -> dict[str, TracingConfig | None]:
    """Each listener's compiled tracing, by `inbound`/`outbound`/the gateway's name."""
    proxy = replace(proxy, metadata={**proxy.metadata, **API})
    snapshot = build_snapshot([*BOOKINFO_SERVICES, *objects], BOOKINFO_INSTANCES)
    out = {}
    for listener in translate_listeners(snapshot, proxy):
        compiled = compile_listener(listener)
        key = "inbound" if compiled.inbound else "outbound"
        out[key if proxy.type.name != "ROUTER" else listener.name] = compiled.http.tracing
    return out


def test_default_is_the_control_plane_at_one_percent() -> None:
    found = tracing_of()
    for side in ("inbound", "outbound"):
        config = found[side]
        assert config is not None and config.sampling == 1.0
        assert config.provider is not None
        assert (config.provider.host, config.provider.port) == ("127.0.0.1", 15080)
        assert config.provider.path == "/v1/traces"


def test_off_loopback_the_control_plane_receiver_is_https() -> None:
    """A joined node's sidecars know the API as https://: spans go there over
    TLS (before, an https:// API meant no spans at all)."""
    api = {"PILOTFISH_API": "https://10.0.0.11:15080"}
    proxy = replace(PRODUCTPAGE, metadata={**PRODUCTPAGE.metadata, **api})
    snapshot = build_snapshot(BOOKINFO_SERVICES, BOOKINFO_INSTANCES)
    for listener in translate_listeners(snapshot, proxy):
        provider = compile_listener(listener).http.tracing.provider  # type: ignore[union-attr]
        assert provider is not None and provider.tls
        assert (provider.host, provider.port, provider.path) == ("10.0.0.11", 15080, "/v1/traces")


def test_without_a_known_receiver_trace_context_still_propagates() -> None:
    snapshot = build_snapshot(BOOKINFO_SERVICES, BOOKINFO_INSTANCES)
    for listener in translate_listeners(snapshot, PRODUCTPAGE):
        config = compile_listener(listener).http.tracing
        assert config is not None and config.provider is None


def test_mesh_config_sampling_provider_and_switch() -> None:
    config = {"defaultConfig": {"tracing": {"sampling": 25.0}}, "extensionProviders": [OTEL],
              "defaultProviders": {"tracing": ["otel"]}}  # fmt: skip
    found = tracing_of(mesh(config))["outbound"]
    assert found is not None and found.sampling == 25.0 and found.provider is not None
    assert (found.provider.host, found.provider.port) == (
        "otel.observability.svc.cluster.local",
        4318,
    )
    assert found.provider.timeout == 3.0
    assert tracing_of(mesh({"enableTracing": False})) == {"inbound": None, "outbound": None}


def test_scopes_merge_mesh_namespace_workload() -> None:
    objects = [
        mesh({"extensionProviders": [OTEL]}),
        telemetry("mesh-default", "istio-system", [{
            "providers": [{"name": "otel"}], "randomSamplingPercentage": 10,
            "customTags": {"cluster": {"literal": {"value": "laptop"}}},
        }]),
        telemetry("ns", "default", [{"randomSamplingPercentage": 50,
                                     "customTags": {"user": {"header": {"name": "x-user"}}}}]),
        telemetry("productpage", "default", [{"randomSamplingPercentage": 100}],
                  selector={"app": "productpage"}),
        telemetry("reviews", "default", [{"randomSamplingPercentage": 0}],
                  selector={"app": "reviews"}),
    ]  # fmt: skip
    found = tracing_of(*objects)["outbound"]
    assert found is not None
    assert found.sampling == 100.0  # the workload's wins
    assert found.provider is not None and found.provider.port == 4318  # the mesh's provider
    assert [t.tag for t in found.custom_tags] == ["cluster", "user"]  # merged, sorted
    assert found.custom_tags[1].header == b"x-user"
    other_namespace = replace(PRODUCTPAGE, namespace="other")
    assert tracing_of(*objects, proxy=other_namespace)["outbound"].sampling == 10.0  # type: ignore[union-attr]


def test_disable_span_reporting_and_match_mode() -> None:
    objects = [
        telemetry("ns", "default", [
            {"match": {"mode": "SERVER"}, "disableSpanReporting": True},
            {"match": {"mode": "CLIENT"}, "randomSamplingPercentage": 42},
        ]),
    ]  # fmt: skip
    found = tracing_of(*objects)
    inbound, outbound = found["inbound"], found["outbound"]
    assert inbound is not None and inbound.provider is None and inbound.sampling == 1.0
    assert outbound is not None and outbound.provider is not None and outbound.sampling == 42.0


GATEWAY = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "Gateway",
    "metadata": {"name": "gw", "namespace": "istio-system"},
    "spec": {"selector": {"istio": "ingressgateway"},
             "servers": [{"port": {"number": 8080, "name": "http", "protocol": "HTTP"},
                          "hosts": ["*"]}]},
}  # fmt: skip


def test_gateway_is_the_client_side() -> None:
    gateway = GATEWAY
    objects = [gateway, telemetry("t", "istio-system", [
        {"match": {"mode": "CLIENT"}, "randomSamplingPercentage": 100}])]  # fmt: skip
    (config,) = tracing_of(*objects, proxy=INGRESS).values()
    assert config is not None and config.sampling == 100.0


def test_translation_is_sorted_and_stable() -> None:
    tags = {name: {"literal": {"value": name}} for name in ("b", "a", "c")}
    objects = [telemetry("ns", "default", [{"customTags": tags}])]
    first, second = tracing_of(*objects), tracing_of(*objects)
    assert first == second
    assert [t.tag for t in first["outbound"].custom_tags] == ["a", "b", "c"]  # type: ignore[union-attr]
