"""The HTTP connection manager's `tracing`, compiled: who samples how much,
which custom tags every span carries, and where spans go.

Supported as Envoy reads it: `random_sampling` (default 100%, as Envoy's),
`custom_tags` (literal, environment, request_header), `max_path_tag_length`,
and `provider` `envoy.tracers.opentelemetry` with an `http_service` (OTLP/HTTP
protobuf to `http_uri.uri`). Without a provider the proxy still propagates
trace context and decides sampling, but reports no span (Istio's
`disableSpanReporting`). Any other field is refused by path (a NACK).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from envoy.config.trace.v3 import opentelemetry_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.tracing.v3 import custom_tag_pb2

from pilotfish.proxy.proto_fields import seconds, unsupported

OTEL_TRACER = "envoy.tracers.opentelemetry"
OTEL_CONFIG = "envoy.config.trace.v3.OpenTelemetryConfig"
DEFAULT_MAX_PATH_TAG_LENGTH = 256  # Envoy's
DEFAULT_EXPORT_TIMEOUT_S = 1.0
DEFAULT_MAX_CACHE_SIZE = 1024  # Envoy's OpenTelemetryConfig.max_cache_size
TRACING_FIELDS = frozenset(
    {
        "random_sampling.value",
        "max_path_tag_length",
        "custom_tags.tag",
        "custom_tags.literal.value",
        "custom_tags.environment.name",
        "custom_tags.environment.default_value",
        "custom_tags.request_header.name",
        "custom_tags.request_header.default_value",
        "provider.name",
        "provider.typed_config",
    }
)
PROVIDER_FIELDS = frozenset(
    {
        "service_name",
        "max_cache_size",
        "http_service.http_uri.uri",
        "http_service.http_uri.cluster",
        "http_service.http_uri.timeout",
        "http_service.request_headers_to_add.header.key",
        "http_service.request_headers_to_add.header.value",
    }
)


class TracingConfigError(Exception):
    """A tracing config the proxy cannot honour; the message names the field."""


@dataclass(frozen=True, slots=True)
class CustomTag:
    """A span attribute: a fixed value (literal, environment, read once), or a
    request header's value with a default."""

    tag: str
    value: str | None  # literal or environment: known when compiled
    header: bytes = b""
    default: str = ""


@dataclass(frozen=True, slots=True)
class OtlpHttp:
    """An OTLP/HTTP collector: `POST path` to host:port, protobuf; to a host
    of `cluster` instead when the proxy has that cluster (as Envoy sends it)."""

    host: str
    port: int
    path: str
    timeout: float
    service_name: str
    headers: tuple[tuple[str, str], ...] = ()
    max_queued: int = DEFAULT_MAX_CACHE_SIZE  # spans waiting to be sent; beyond, dropped
    cluster: str = ""
    tls: bool = False  # an https:// URI (the control plane's API off loopback)

    def __repr__(self) -> str:
        return f"<OtlpHttp {self.host}:{self.port}{self.path}>"


@dataclass(frozen=True, slots=True)
class TracingConfig:
    sampling: float  # percent of new traces sampled
    custom_tags: tuple[CustomTag, ...] = ()
    provider: OtlpHttp | None = None  # None: propagate and sample, report nothing
    max_path_tag_length: int = DEFAULT_MAX_PATH_TAG_LENGTH


def compile_tracing(
    tracing: hcm_pb2.HttpConnectionManager.Tracing, env: Mapping[str, str] | None = None
) -> TracingConfig:
    bad = unsupported(tracing, TRACING_FIELDS)
    if bad:
        raise TracingConfigError(
            "field not supported by pilotfish: " + ", ".join(f"tracing.{b}" for b in bad)
        )
    sampling = tracing.random_sampling.value if tracing.HasField("random_sampling") else 100.0
    if not 0.0 <= sampling <= 100.0:
        raise TracingConfigError("tracing.random_sampling.value: must be within [0, 100]")
    environ = os.environ if env is None else env
    tags = tuple(_custom_tag(t, i, environ) for i, t in enumerate(tracing.custom_tags))
    provider = _provider(tracing) if tracing.HasField("provider") else None
    length = tracing.max_path_tag_length.value if tracing.HasField("max_path_tag_length") else 0
    return TracingConfig(sampling, tags, provider, length or DEFAULT_MAX_PATH_TAG_LENGTH)


def _custom_tag(tag: custom_tag_pb2.CustomTag, i: int, env: Mapping[str, str]) -> CustomTag:
    where = f"tracing.custom_tags[{i}]"
    if not tag.tag:
        raise TracingConfigError(f"{where}.tag: must not be empty")
    kind = tag.WhichOneof("type")
    if kind == "literal":
        return CustomTag(tag.tag, tag.literal.value)
    if kind == "environment":
        value = env.get(tag.environment.name, tag.environment.default_value)
        return CustomTag(tag.tag, value)
    if kind == "request_header":
        name = tag.request_header.name.lower()
        if not name:
            raise TracingConfigError(f"{where}.request_header.name: must not be empty")
        return CustomTag(tag.tag, None, name.encode(), tag.request_header.default_value)
    raise TracingConfigError(f"{where}: one of literal, environment or request_header is needed")


def _provider(tracing: hcm_pb2.HttpConnectionManager.Tracing) -> OtlpHttp:
    typed = tracing.provider.typed_config
    if not typed.type_url.endswith("/" + OTEL_CONFIG):
        raise TracingConfigError(
            f"tracing.provider: only {OTEL_TRACER} ({OTEL_CONFIG}) is supported, "
            f"got {tracing.provider.name or typed.type_url}"
        )
    config = opentelemetry_pb2.OpenTelemetryConfig()
    typed.Unpack(config)
    bad = unsupported(config, PROVIDER_FIELDS)
    if bad:
        raise TracingConfigError(
            "field not supported by pilotfish: "
            + ", ".join(f"tracing.provider.typed_config.{b}" for b in bad)
        )
    from urllib.parse import urlsplit  # with ipaddress (0.3 MiB): only for a tracing config

    uri = config.http_service.http_uri
    parts = urlsplit(uri.uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TracingConfigError(
            "tracing.provider.typed_config.http_service.http_uri.uri: an http:// or https:// "
            f"URL (OTLP/HTTP) is needed, got {uri.uri!r}"
        )
    tls = parts.scheme == "https"
    timeout = seconds(uri.timeout) if uri.HasField("timeout") else DEFAULT_EXPORT_TIMEOUT_S
    return OtlpHttp(
        host=parts.hostname,
        port=parts.port or (443 if tls else 80),
        path=parts.path or "/v1/traces",
        timeout=timeout or DEFAULT_EXPORT_TIMEOUT_S,
        service_name=config.service_name,
        headers=tuple(
            (h.header.key, h.header.value) for h in config.http_service.request_headers_to_add
        ),
        max_queued=config.max_cache_size.value or DEFAULT_MAX_CACHE_SIZE,
        cluster=uri.cluster,
        tls=tls,
    )
