"""The `istio.stats` filter's config as the proxy compiles it: what it
accepts, and a clear error naming the field for what it cannot apply."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import struct_pb2
from xds.type.v3 import typed_struct_pb2

from pilotfish.proxy.metric_overrides import (
    PLUGIN_CONFIG_TYPE,
    MetricOverride,
    MetricsConfigError,
    parse_expression,
    split_stats_filter,
)
from pilotfish.translate.protos import pack


def stats(metrics: list[dict[str, Any]], type_url: str = PLUGIN_CONFIG_TYPE) -> hcm_pb2.HttpFilter:
    value = struct_pb2.Struct()
    value.update({"metrics": metrics})
    config = typed_struct_pb2.TypedStruct(type_url=type_url, value=value)
    return hcm_pb2.HttpFilter(name="istio.stats", typed_config=pack(config))


ROUTER = hcm_pb2.HttpFilter(name="envoy.filters.http.router")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("request.host", ("request.host", "")),
        (" response.code ", ("response.code", "")),
        ("request.headers['X-Team']", ("request.headers", "x-team")),
        ('request.headers["x-team"]', ("request.headers", "x-team")),
        ("'canary'", ("literal", "canary")),
        ("upstream_peer.labels['app'].value", ("upstream_peer", "app")),
        (
            'downstream_peer.labels["service.istio.io/canonical-revision"].value',
            ("downstream_peer", "service.istio.io/canonical-revision"),
        ),
    ],
)
def test_attribute_references_and_literals_parse(text: str, parsed: tuple[str, str]) -> None:
    assert parse_expression(text) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "request.size",
        "request.host + 'x'",
        "request.headers[x]",
        "has(request.host)",
        "upstream_peer.labels['team'].value",  # not a label metadata exchange carries here
        "",
    ],
)
def test_other_expressions_are_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match="is not supported: pilotfish evaluates"):
        parse_expression(text)


def test_the_filter_leaves_the_chain_and_names_no_metric_for_all() -> None:
    config, rest = split_stats_filter([stats([{"tags_to_remove": ["source_app"]}]), ROUTER], "l")
    assert rest == [ROUTER]
    assert config is not None
    assert set(config.metrics.values()) == {MetricOverride(remove=frozenset({"source_app"}))}
    assert len(config.metrics) == 4  # every HTTP metric
    assert split_stats_filter([ROUTER], "l") == (None, [ROUTER])


@pytest.mark.parametrize(
    ("metrics", "type_url", "message"),
    [
        (
            [{"name": "requests_total", "dimensions": {"x": "request.size"}}],
            PLUGIN_CONFIG_TYPE,
            r"l: istio.stats.metrics\[0\].dimensions.x: expression 'request.size' is not supported",
        ),
        (
            [{"name": "requests_total", "dimensions": {"bad-label": "request.host"}}],
            PLUGIN_CONFIG_TYPE,
            "'bad-label' is not a Prometheus label name",
        ),
        (
            [{"name": "tcp_sent_bytes_total", "drop": True}],
            PLUGIN_CONFIG_TYPE,
            r"metrics\[0\].name: 'tcp_sent_bytes_total' is not an HTTP metric pilotfish reports",
        ),
        ([], "type.googleapis.com/other.Config", "must be a TypedStruct of"),
    ],
)
def test_what_cannot_be_applied_is_refused(
    metrics: list[dict[str, Any]], type_url: str, message: str
) -> None:
    with pytest.raises(MetricsConfigError, match=message):
        split_stats_filter([stats(metrics, type_url), ROUTER], "l")
