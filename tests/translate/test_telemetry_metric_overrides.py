"""Telemetry metrics overrides: merged over the scopes as istiod merges them,
translated into the `istio.stats` filter, compiled by the proxy and applied
to what it reports, without sockets."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from test_telemetry_tracing import GATEWAY, mesh, telemetry
from translate_sim import BOOKINFO_INSTANCES, BOOKINFO_SERVICES, INGRESS, PRODUCTPAGE

from pilotfish.analysis import analyze
from pilotfish.model import Proxy, build_snapshot
from pilotfish.proxy.listeners import compile_listener
from pilotfish.proxy.metric_overrides import (
    MetricOverride,
    MetricsConfig,
    RequestAttributes,
    parse_expression,
)
from pilotfish.proxy.telemetry import UNKNOWN_WORKLOAD, ServiceInfo, Telemetry, WorkloadInfo
from pilotfish.translate import translate_listeners

Obj = dict[str, Any]
REVIEWS = ServiceInfo("reviews.default.svc.cluster.local", "reviews", "default")
REVIEWS_V2 = WorkloadInfo("reviews-v2", "default", "reviews", "v2", "reviews", "v2")


def metrics(name: str, namespace: str, entries: list[Obj], selector: Obj | None = None) -> Obj:
    obj = telemetry(name, namespace, [], selector)
    del obj["spec"]["tracing"]
    obj["spec"]["metrics"] = entries
    return obj


def override(metric: str = "", mode: str = "", **fields: Any) -> Obj:
    match = {k: v for k, v in (("metric", metric), ("mode", mode)) if v}
    return {"match": match, **fields} if match else fields


def configs_of(*objects: Obj, proxy: Proxy = PRODUCTPAGE) -> dict[str, MetricsConfig | None]:
    """Each connection manager's compiled overrides, by side (or the gateway's name)."""
    snapshot = build_snapshot([*BOOKINFO_SERVICES, *objects], BOOKINFO_INSTANCES)
    out = {}
    for listener in translate_listeners(snapshot, proxy):
        compiled = compile_listener(listener)
        side = "inbound" if compiled.inbound else "outbound"
        out[side if proxy is PRODUCTPAGE else listener.name] = compiled.http.metrics
    return out


def shape(config: MetricsConfig | None) -> dict[str, MetricOverride] | None:
    return None if config is None else dict(config.metrics)


def exposition(config: MetricsConfig | None, **headers: str) -> dict[str, list[dict[str, str]]]:
    """What /stats/prometheus shows after one outbound GET to reviews, by family."""
    telemetry_ = Telemetry()
    wanted = {k.replace("_", "-").encode(): v.encode() for k, v in headers.items()}
    request = RequestAttributes(
        "reviews:9080", "GET", "/api?x=1", 200, wanted.get, REVIEWS_V2.label, inbound=False
    )
    key = (UNKNOWN_WORKLOAD, REVIEWS, 200, "", "http", "", False)
    if config is None:
        telemetry_.outbound.record(UNKNOWN_WORKLOAD, REVIEWS, 200, "", 3.0, 10, 20)
    else:
        telemetry_.outbound.record_overridden(config, request, key, 3.0, 10, 20)
    text = telemetry_.prometheus().decode()
    return {
        f.name: [dict(s.labels) for s in f.samples if not s.name.endswith("_bucket")]
        for f in text_string_to_metric_families(text)
    }


def test_no_override_means_no_stats_filter_and_the_standard_path() -> None:
    assert configs_of() == {"inbound": None, "outbound": None}
    # Tracing alone, or a metrics entry that overrides nothing, adds nothing either.
    empty = metrics("mesh-default", "istio-system", [{"providers": [{"name": "prometheus"}]}])
    assert configs_of(empty) == {"inbound": None, "outbound": None}


def test_disabled_metric_and_tag_overrides_by_side() -> None:
    mesh_wide = metrics("mesh-default", "istio-system", [{"overrides": [
        override("REQUEST_SIZE", disabled=True),
        override("REQUEST_COUNT", "CLIENT", tagOverrides={
            "response_flags": {"operation": "REMOVE"},
            "request_host": {"value": "request.host"},
        }),
    ]}])  # fmt: skip
    found = configs_of(mesh_wide)
    assert shape(found["inbound"]) == {"request_bytes": MetricOverride(drop=True)}
    assert shape(found["outbound"]) == {
        "request_bytes": MetricOverride(drop=True),
        "requests_total": MetricOverride(
            remove=frozenset({"response_flags"}),
            dimensions=(("request_host", ("request.host", "")),),
        ),
    }


def test_narrower_scopes_win_per_metric_and_per_tag() -> None:
    objects = [
        metrics("mesh-default", "istio-system", [{"overrides": [
            override(disabled=True),  # ALL_METRICS
            override("REQUEST_COUNT", tagOverrides={"source_app": {"operation": "REMOVE"},
                                                    "team": {"value": "'mesh'"}}),
        ]}]),
        metrics("ns", "default", [{"overrides": [override("REQUEST_COUNT", disabled=False)]}]),
        metrics("pp", "default", [{"overrides": [override("REQUEST_COUNT", tagOverrides={
            "team": {"value": "request.headers['x-team']"}})]}], selector={"app": "productpage"}),
    ]  # fmt: skip
    outbound = configs_of(*objects)["outbound"]
    assert shape(outbound) == {
        "request_bytes": MetricOverride(drop=True),
        "request_duration_milliseconds": MetricOverride(drop=True),
        "response_bytes": MetricOverride(drop=True),
        "requests_total": MetricOverride(
            remove=frozenset({"source_app"}),
            dimensions=(("team", ("request.headers", "x-team")),),
        ),
    }
    shown = exposition(outbound, x_team="checkout")
    assert sorted(shown) == ["istio_requests"]  # prometheus_client drops the _total
    (labels,) = shown["istio_requests"]
    assert labels["team"] == "checkout" and "source_app" not in labels
    assert labels["destination_service_name"] == "reviews"


def test_only_the_prometheus_provider_and_the_narrowest_scopes_providers() -> None:
    disable_all = [{"overrides": [override(disabled=True)]}]
    elsewhere = [{"providers": [{"name": "stackdriver"}], "overrides": [override(disabled=True)]}]
    assert configs_of(metrics("mesh-default", "istio-system", elsewhere))["outbound"] is None
    # The workload names another provider: prometheus reports nothing it overrides.
    objects = [
        metrics("mesh-default", "istio-system", disable_all),
        metrics(
            "pp", "default", [{"providers": [{"name": "stackdriver"}]}], {"app": "productpage"}
        ),
    ]
    assert configs_of(*objects) == {"inbound": None, "outbound": None}
    # Entries without providers use the mesh config's default providers.
    other_default = mesh({"defaultProviders": {"metrics": ["stackdriver"]}})
    found = configs_of(other_default, metrics("mesh-default", "istio-system", disable_all))
    assert found == {"inbound": None, "outbound": None}


def test_the_gateway_is_the_client_side() -> None:
    gateway = GATEWAY
    server_only = [{"overrides": [override("REQUEST_DURATION", "SERVER", disabled=True)]}]
    client_only = [{"overrides": [override("REQUEST_DURATION", "CLIENT", disabled=True)]}]
    found = configs_of(gateway, metrics("m", "istio-system", server_only), proxy=INGRESS)
    assert list(found.values()) == [None]
    found = configs_of(gateway, metrics("m", "istio-system", client_only), proxy=INGRESS)
    assert [shape(c) for c in found.values()] == [
        {"request_duration_milliseconds": MetricOverride(drop=True)}
    ]


def test_exposition_without_overrides_is_istios_standard() -> None:
    shown = exposition(None)
    assert sorted(shown) == [
        "istio_request_bytes",
        "istio_request_duration_milliseconds",
        "istio_requests",
        "istio_response_bytes",
    ]
    assert "response_flags" in shown["istio_requests"][0]


def test_unsupported_expression_is_left_out_and_analysis_says_why() -> None:
    obj = metrics("mesh-default", "istio-system", [{"overrides": [
        override("REQUEST_COUNT", tagOverrides={
            "size_class": {"value": "request.size > 1024 ? 'big' : 'small'"},
            "method": {"value": "request.method"},
        }),
        override("TCP_OPENED_CONNECTIONS", disabled=True),
    ]}])  # fmt: skip
    outbound = configs_of(obj)["outbound"]
    assert shape(outbound) == {
        "requests_total": MetricOverride(dimensions=(("method", ("request.method", "")),))
    }
    assert exposition(outbound)["istio_requests"][0]["method"] == "GET"
    found = sorted(m.text for m in analyze([obj]) if m.type.code == "PF0001")
    assert found == [
        "Telemetry spec.metrics[0].overrides[0].tagOverrides.size_class.value is stored but not "
        "enforced by pilotfish: expression \"request.size > 1024 ? 'big' : 'small'\" is not "
        "supported: pilotfish evaluates string literals, request.headers['NAME'], "
        "request.host, request.method, request.path, request.url_path, response.code, and "
        "upstream_peer/downstream_peer.labels['LABEL'].value for app, version, "
        "service.istio.io/canonical-name, service.istio.io/canonical-revision; "
        "the label is not added",
        "Telemetry spec.metrics[0].overrides[1].match is stored but not enforced by pilotfish: "
        "only the HTTP metrics' overrides are applied",
    ]


def test_an_override_added_live_keeps_one_series_per_label_set() -> None:
    """Prometheus refuses a scrape with a sample twice: requests recorded
    before and after an override that leaves their labels alone add up."""
    telemetry_ = Telemetry()
    request = RequestAttributes("reviews:9080", "GET", "/", 200, {}.get, REVIEWS_V2.label, False)
    key = (UNKNOWN_WORKLOAD, REVIEWS, 200, "", "http", "", False)
    telemetry_.outbound.record(UNKNOWN_WORKLOAD, REVIEWS, 200, "", 3.0, 10, 20)
    drop_sizes = MetricsConfig({"request_bytes": MetricOverride(drop=True)})
    telemetry_.outbound.record_overridden(drop_sizes, request, key, 3.0, 10, 20)
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(telemetry_.prometheus().decode()):
        for s in family.samples:
            sample = (s.name, frozenset(s.labels.items()))
            assert sample not in found, f"duplicate sample {sample}"
            found[sample] = s.value
    counts = {name: v for (name, _), v in found.items() if name.endswith(("_total", "_count"))}
    assert counts == {
        "istio_requests_total": 2.0,
        "istio_request_duration_milliseconds_count": 2.0,
        "istio_request_bytes_count": 1.0,  # dropped after the first request
        "istio_response_bytes_count": 2.0,
    }


def test_peer_labels_come_from_the_side_that_sent_its_metadata() -> None:
    """Outbound, the peer is the upstream (the destination's sidecar says who
    it is); the downstream is the local app, which says nothing."""
    config = MetricsConfig({"requests_total": MetricOverride(dimensions=(
        ("dst_version", parse_expression("upstream_peer.labels['version'].value")),
        ("src_app", parse_expression('downstream_peer.labels["app"].value')),
    ))})  # fmt: skip
    (labels,) = exposition(config)["istio_requests"]
    assert (labels["dst_version"], labels["src_app"]) == ("v2", "unknown")
