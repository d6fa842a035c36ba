"""Telemetry (telemetry.istio.io) and the mesh config's tracing and access
log settings, as the `tracing` and `access_log` of a proxy's HTTP connection
managers.

Scopes as Istio's: a Telemetry in the root namespace without a selector is
the mesh's; one in the proxy's namespace without a selector, the
namespace's; one there whose selector matches the proxy's labels, the
workload's. At each scope the oldest applies (Istio's rule for conflicts).
The scopes merge from the mesh down, as istiod merges them: a scope's
`providers`, `randomSamplingPercentage` and `disableSpanReporting` replace
the wider scope's when set, and its `customTags` add to them by name. A
tracing entry applies to the proxy's side of the request its `match.mode`
names: SERVER inbound, CLIENT outbound and at the gateway; both by default.

Unset all the way down: the mesh config's `defaultProviders.tracing`, then
the control plane's own receiver (`/v1/traces` at the API URL the proxy's
node metadata PILOTFISH_API names); sampling `defaultConfig.tracing.sampling`,
then Istio's 1%. `enableTracing: false` in the mesh config turns it all off.
A provider must be an `opentelemetry` extension provider; pilotfish exports
OTLP/HTTP to its service and port (the collector's HTTP port, 4318).

Access logs merge the same way (`providers` and `disabled` replace). A
provider is Istio's built-in `envoy` (the proxy's stdout) or an
`envoyFileAccessLog` extension provider (its `path`); none named: the mesh
config's `defaultProviders.accessLogging`, else its `accessLogFile`, else no
access log, as Istio's defaults. The log's format is the proxy's own.

Metrics overrides merge as istiod merges them (merged_metrics) and become
the `istio.stats` filter's config, for the prometheus provider only (the
mesh config's `defaultProviders.metrics`, else Istio's default, prometheus).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import http_service_pb2, http_uri_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import struct_pb2
from xds.type.v3 import typed_struct_pb2

from pilotfish.model import ROOT_NAMESPACE, Proxy, ProxyType, Snapshot
from pilotfish.model.config import labels_match
from pilotfish.objects import Obj
from pilotfish.proxy.metric_overrides import PLUGIN_CONFIG_TYPE, STATS_FILTER, parse_expression
from pilotfish.translate import names
from pilotfish.translate.protos import duration, pack

OTEL_TRACER = "envoy.tracers.opentelemetry"
DEFAULT_SAMPLING = 1.0  # Istio's PILOT_TRACE_SAMPLING
API_METADATA = "PILOTFISH_API"  # the control plane's REST API, as the node agent knows it
CONTROL_PLANE_CLUSTER = "pilotfish-controlplane"
OTLP_PATH = "/v1/traces"
SERVER, CLIENT = "SERVER", "CLIENT"
FILE_ACCESS_LOG = "envoy.access_loggers.file"
STDOUT = "/dev/stdout"  # Istio's built-in `envoy` access log provider


@dataclass
class TracingSpec:
    """What the scopes say, merged; None: unset so far."""

    providers: tuple[str, ...] | None = None
    sampling: float | None = None
    disable_reporting: bool | None = None
    custom_tags: dict[str, Obj] = field(default_factory=dict)


def scoped_telemetries(snapshot: Snapshot, proxy: Proxy) -> list[Obj]:
    """The Telemetry of each scope that applies to `proxy`, mesh first."""
    found: list[Obj] = []
    for scope in (_mesh_scope, _namespace_scope, _workload_scope):
        chosen = next((t for t in snapshot.telemetries if scope(t, proxy)), None)
        if chosen is not None:
            found.append(chosen)
    return found


def _ns(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "default")


def _selector(obj: Obj) -> Mapping[str, str] | None:
    labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels")
    return labels if isinstance(labels, dict) and labels else None


def _mesh_scope(obj: Obj, proxy: Proxy) -> bool:
    return _ns(obj) == ROOT_NAMESPACE and _selector(obj) is None


def _namespace_scope(obj: Obj, proxy: Proxy) -> bool:
    return proxy.namespace != ROOT_NAMESPACE and _ns(obj) == proxy.namespace and not _selector(obj)


def _workload_scope(obj: Obj, proxy: Proxy) -> bool:
    selector = _selector(obj)
    return (
        _ns(obj) == proxy.namespace
        and selector is not None
        and labels_match(selector, proxy.labels)
    )


def merged_tracing(telemetries: list[Obj], side: str) -> TracingSpec:
    spec = TracingSpec()
    for telemetry in telemetries:
        for entry in _entries(telemetry, "tracing", side):
            providers = [str(p.get("name")) for p in entry.get("providers") or () if p.get("name")]
            if providers:
                spec.providers = tuple(providers)
            if entry.get("randomSamplingPercentage") is not None:
                spec.sampling = float(entry["randomSamplingPercentage"])
            if entry.get("disableSpanReporting") is not None:
                spec.disable_reporting = bool(entry["disableSpanReporting"])
            spec.custom_tags.update(entry.get("customTags") or {})
    return spec


def _entries(telemetry: Obj, section: str, side: str) -> Iterator[Obj]:
    for entry in (telemetry.get("spec") or {}).get(section) or ():
        mode = str((entry.get("match") or {}).get("mode") or "CLIENT_AND_SERVER")
        if mode == "CLIENT_AND_SERVER" or mode == side:
            yield entry


def proxy_side(proxy: Proxy, inbound: bool) -> str:
    return SERVER if inbound and proxy.type is not ProxyType.ROUTER else CLIENT


def translate_tracing(
    snapshot: Snapshot, proxy: Proxy, inbound: bool
) -> hcm_pb2.HttpConnectionManager.Tracing | None:
    """The `tracing` of one of the proxy's connection managers; None: off."""
    mesh = snapshot.mesh_config
    if mesh.get("enableTracing") is False:
        return None
    spec = merged_tracing(scoped_telemetries(snapshot, proxy), proxy_side(proxy, inbound))
    default_sampling = ((mesh.get("defaultConfig") or {}).get("tracing") or {}).get("sampling")
    sampling = spec.sampling if spec.sampling is not None else default_sampling
    tracing = hcm_pb2.HttpConnectionManager.Tracing(
        random_sampling=percent_pb2.Percent(
            value=float(sampling if sampling is not None else DEFAULT_SAMPLING)
        ),
        custom_tags=[translate_custom_tag(n, t) for n, t in sorted(spec.custom_tags.items())],
    )
    if not spec.disable_reporting:
        provider = _provider(mesh, spec.providers, proxy)
        if provider is not None:
            tracing.provider.CopyFrom(provider)
    return tracing


def translate_custom_tag(name: str, tag: Obj) -> custom_tag_pb2.CustomTag:
    out = custom_tag_pb2.CustomTag(tag=name)
    if "literal" in tag:
        out.literal.value = str((tag["literal"] or {}).get("value") or "")
    elif "header" in tag:
        header = tag["header"] or {}
        out.request_header.name = str(header.get("name") or "")
        out.request_header.default_value = str(header.get("defaultValue") or "")
    elif "environment" in tag:
        env = tag["environment"] or {}
        out.environment.name = str(env.get("name") or "")
        out.environment.default_value = str(env.get("defaultValue") or "")
    return out


def _provider(
    mesh: Mapping[str, Any], named: tuple[str, ...] | None, proxy: Proxy
) -> http_tracer_pb2.Tracing.Http | None:
    """The first named provider (Envoy reports to one); none named: the mesh's
    default, else the control plane's receiver. None: report nothing."""
    names_ = named or tuple((mesh.get("defaultProviders") or {}).get("tracing") or ())
    if not names_:
        api = proxy.metadata.get(API_METADATA, "").rstrip("/")
        if not api.startswith(("http://", "https://")):
            return None
        return _otel(api + OTLP_PATH, CONTROL_PLANE_CLUSTER, None, "")
    for provider in mesh.get("extensionProviders") or ():
        if isinstance(provider, dict) and provider.get("name") == names_[0]:
            otel = provider.get("opentelemetry")
            return _from_extension(otel) if isinstance(otel, dict) else None
    return None


def _from_extension(otel: Obj) -> http_tracer_pb2.Tracing.Http | None:
    service, port = str(otel.get("service") or ""), otel.get("port")
    if not service or not isinstance(port, int):
        return None
    http = otel.get("http") or {}
    path = str(http.get("path") or OTLP_PATH)
    host = service.partition("/")[2] or service  # Istio allows NAMESPACE/HOST
    uri = f"http://{host}:{port}{path if path.startswith('/') else '/' + path}"
    cluster = names.outbound_cluster(port, "", host)
    return _otel(uri, cluster, http.get("timeout"), "", http.get("headers") or ())


def _otel(
    uri: str, cluster: str, timeout: object, service_name: str, headers: Any = ()
) -> http_tracer_pb2.Tracing.Http:
    http_uri = http_uri_pb2.HttpUri(uri=uri, cluster=cluster, timeout=duration(1.0))
    if isinstance(timeout, str) and timeout:
        # The mesh config is not validated when stored: a bad one keeps the default.
        with contextlib.suppress(ValueError):
            http_uri.timeout.CopyFrom(duration(timeout))
    service = http_service_pb2.HttpService(http_uri=http_uri)
    for header in headers:
        if isinstance(header, dict) and header.get("name"):
            added = service.request_headers_to_add.add()
            added.header.key, added.header.value = str(header["name"]), str(header.get("value", ""))
    config = opentelemetry_pb2.OpenTelemetryConfig(http_service=service, service_name=service_name)
    return http_tracer_pb2.Tracing.Http(name=OTEL_TRACER, typed_config=pack(config))


def merged_access_logging(telemetries: list[Obj], side: str) -> tuple[tuple[str, ...] | None, bool]:
    """(providers, disabled) the scopes say, merged as tracing's are."""
    providers: tuple[str, ...] | None = None
    disabled = False
    for telemetry in telemetries:
        for entry in _entries(telemetry, "accessLogging", side):
            named = [str(p.get("name")) for p in entry.get("providers") or () if p.get("name")]
            if named:
                providers = tuple(named)
            if entry.get("disabled") is not None:
                disabled = bool(entry["disabled"])
    return providers, disabled


def translate_access_logs(
    snapshot: Snapshot, proxy: Proxy, inbound: bool
) -> list[accesslog_pb2.AccessLog]:
    """The file access logs of one of the proxy's connection managers."""
    mesh = snapshot.mesh_config
    telemetries = scoped_telemetries(snapshot, proxy)
    named, disabled = merged_access_logging(telemetries, proxy_side(proxy, inbound))
    if disabled:
        return []
    default = tuple((mesh.get("defaultProviders") or {}).get("accessLogging") or ())
    chosen = named or default
    if not chosen:
        path = mesh.get("accessLogFile")
        return [_file_log(str(path))] if isinstance(path, str) and path else []
    paths = (_access_log_path(mesh, name) for name in chosen)
    return [_file_log(p) for p in dict.fromkeys(p for p in paths if p)]


def _access_log_path(mesh: Mapping[str, Any], name: str) -> str:
    for provider in mesh.get("extensionProviders") or ():
        if isinstance(provider, dict) and provider.get("name") == name:
            found = provider.get("envoyFileAccessLog")
            return str(found.get("path") or STDOUT) if isinstance(found, dict) else ""
    return STDOUT if name == "envoy" else ""


def _file_log(path: str) -> accesslog_pb2.AccessLog:
    return accesslog_pb2.AccessLog(
        name=FILE_ACCESS_LOG, typed_config=pack(file_pb2.FileAccessLog(path=path))
    )


# -- metrics ---------------------------------------------------------------

# Telemetry's metric names -> the stats filter's (Istio's telemetry.go).
METRIC_NAMES = {
    "REQUEST_COUNT": "requests_total",
    "REQUEST_DURATION": "request_duration_milliseconds",
    "REQUEST_SIZE": "request_bytes",
    "RESPONSE_SIZE": "response_bytes",
}
PROMETHEUS = "prometheus"


@dataclass
class MetricOverrideSpec:
    """One metric's override on one side, merged over the scopes."""

    disabled: bool = False
    tags: dict[str, Obj] = field(default_factory=dict)  # tag -> its last tagOverride


def merged_metrics(
    telemetries: list[Obj], side: str, default_providers: tuple[str, ...]
) -> dict[str, MetricOverrideSpec]:
    """The prometheus provider's overrides for `side`, by stats metric name,
    as istiod merges them: an entry without providers inherits the wider
    scope's; `disabled` replaces, `tagOverrides` add by tag; only the
    narrowest scope's providers report at all."""
    found: dict[str, MetricOverrideSpec] = {}
    in_scope = default_providers
    for telemetry in telemetries:
        for entry in (telemetry.get("spec") or {}).get("metrics") or ():
            named = tuple(str(p.get("name")) for p in entry.get("providers") or () if p.get("name"))
            in_scope = named or in_scope
            if PROMETHEUS in in_scope:
                _apply_overrides(found, entry.get("overrides") or (), side)
    return found if PROMETHEUS in in_scope else {}


def _apply_overrides(found: dict[str, MetricOverrideSpec], overrides: Any, side: str) -> None:
    for override in overrides:
        match = override.get("match") or {}
        mode = str(match.get("mode") or "CLIENT_AND_SERVER")
        if mode not in ("CLIENT_AND_SERVER", side):
            continue
        metric = str(match.get("metric") or "ALL_METRICS")
        # A customMetric names no standard metric; TCP ones are not overridable here.
        targets = METRIC_NAMES.values() if metric == "ALL_METRICS" else [METRIC_NAMES.get(metric)]
        for name in (t for t in targets if t is not None and not match.get("customMetric")):
            spec = found.setdefault(name, MetricOverrideSpec())
            if override.get("disabled") is not None:
                spec.disabled = bool(override["disabled"])
            spec.tags.update(override.get("tagOverrides") or {})


def translate_stats_filter(
    snapshot: Snapshot, proxy: Proxy, inbound: bool
) -> hcm_pb2.HttpFilter | None:
    """The `istio.stats` filter carrying the Telemetry metric overrides of one
    of the proxy's connection managers; None when nothing is overridden, so
    that such a proxy pays nothing for them."""
    mesh = snapshot.mesh_config
    defaults = tuple((mesh.get("defaultProviders") or {}).get("metrics") or (PROMETHEUS,))
    merged = merged_metrics(
        scoped_telemetries(snapshot, proxy), proxy_side(proxy, inbound), defaults
    )
    metrics = [m for m in (_stats_metric(n, s) for n, s in sorted(merged.items())) if m]
    if not metrics:
        return None
    value = struct_pb2.Struct()
    value.update({"metrics": metrics})
    config = typed_struct_pb2.TypedStruct(type_url=PLUGIN_CONFIG_TYPE, value=value)
    return hcm_pb2.HttpFilter(name=STATS_FILTER, typed_config=pack(config))


def _stats_metric(name: str, spec: MetricOverrideSpec) -> Obj:
    """One metric's PluginConfig entry; {} when it changes nothing. A tag
    whose expression the proxy cannot evaluate is left out (analysis says so)."""
    remove, dimensions = [], {}
    for tag, override in sorted(spec.tags.items()):
        if str((override or {}).get("operation") or "UPSERT") == "REMOVE":
            remove.append(tag)
        elif upsert_error((override or {}).get("value")) is None:
            dimensions[tag] = str(override["value"])
    if not (spec.disabled or remove or dimensions):
        return {}
    out: Obj = {"name": name}
    if spec.disabled:
        out["drop"] = True
    if dimensions:
        out["dimensions"] = dimensions
    if remove:
        out["tags_to_remove"] = remove
    return out


def upsert_error(value: object) -> str | None:
    """Why an UPSERT's `value` cannot be reported by pilotfish; None: it can."""
    if not isinstance(value, str) or not value.strip():
        return "an UPSERT needs a value"
    try:
        parse_expression(value)
    except ValueError as e:
        return str(e)
    return None
