"""The connection manager's `tracing` as the proxy compiles it: what it
honours, and a clear error naming the field for what it does not."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.trace.v3 import zipkin_pb2  # noqa: F401  (an Any in a case below)
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from pilotfish.proxy import xds_types  # noqa: F401  (registers Any payload types)
from pilotfish.proxy.tracing.config import TracingConfigError, compile_tracing

OTEL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"


def tracing(**fields: Any) -> hcm_pb2.HttpConnectionManager.Tracing:
    out = hcm_pb2.HttpConnectionManager.Tracing()
    json_format.ParseDict(fields, out)
    return out


def provider(**otel: Any) -> dict[str, Any]:
    return {"name": "envoy.tracers.opentelemetry", "typed_config": {"@type": OTEL, **otel}}


def test_compiled() -> None:
    config = compile_tracing(
        tracing(
            randomSampling={"value": 2.5},
            customTags=[
                {"tag": "a", "literal": {"value": "x"}},
                {"tag": "b", "environment": {"name": "TRACE_ENV", "defaultValue": "none"}},
                {"tag": "c", "requestHeader": {"name": "X-User"}},
            ],
            provider=provider(
                httpService={
                    "httpUri": {
                        "uri": "http://collector:4318/v1/traces",
                        "cluster": "otel",
                        "timeout": "3s",
                    }
                },
                maxCacheSize=10,
            ),
        ),
        env={"TRACE_ENV": "laptop"},
    )
    assert config.sampling == 2.5
    assert [(t.tag, t.value, t.header) for t in config.custom_tags] == [
        ("a", "x", b""),
        ("b", "laptop", b""),
        ("c", None, b"x-user"),
    ]
    assert config.provider is not None
    target = config.provider
    assert (target.host, target.port, target.path, target.timeout) == (
        "collector",
        4318,
        "/v1/traces",
        3.0,
    )
    assert (target.cluster, target.max_queued) == ("otel", 10)
    assert compile_tracing(tracing()).sampling == 100.0  # Envoy's default


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"overallSampling": {"value": 5}}, "field not supported by pilotfish: tracing.overall_sampling"),
        ({"randomSampling": {"value": 150}}, "tracing.random_sampling.value: must be within [0, 100]"),
        ({"customTags": [{"tag": "x", "metadata": {}}]}, "tracing.custom_tags[0].metadata"),
        ({"customTags": [{"literal": {"value": "v"}}]}, "tracing.custom_tags[0].tag: must not be empty"),
        (
            {"provider": provider(grpcService={"envoyGrpc": {"clusterName": "otel"}})},
            "tracing.provider.typed_config.grpc_service",
        ),
        (
            {"provider": provider(httpService={"httpUri": {"uri": "ftp://c/v1/traces", "cluster": "c"}})},
            "http_uri.uri: an http:// or https:// URL (OTLP/HTTP) is needed, got 'ftp://c/v1/traces'",
        ),
        (
            {"provider": {"name": "envoy.tracers.zipkin", "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"}}},
            "tracing.provider: only envoy.tracers.opentelemetry",
        ),
    ],
)  # fmt: skip
def test_refused_with_the_field(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(TracingConfigError) as refused:
        compile_tracing(tracing(**fields))
    assert error in str(refused.value)
