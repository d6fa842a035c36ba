"""Istio's metric overrides, as its stats filter takes them.

istiod turns a Telemetry's `metrics[].overrides` into the config of the
`istio.stats` HTTP filter (Istio's `stats.PluginConfig`, carried in a
TypedStruct): per metric (`requests_total`, ...) whether it is dropped, the
labels removed (`tags_to_remove`) and the labels added or replaced
(`dimensions`, label -> attribute expression). A connection manager without
that filter reports Istio's standard metrics, and pays nothing for this.

Istio evaluates the expressions as CEL. pilotfish evaluates the plain
attribute references below and string literals; any other expression is
refused with a message naming it, so a proxy never reports a label it cannot
compute (the control plane leaves such a label out and says so in analysis).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format, struct_pb2
from xds.type.v3 import typed_struct_pb2

STATS_FILTER = "istio.stats"
PLUGIN_CONFIG_TYPE = "type.googleapis.com/stats.PluginConfig"
HTTP_METRICS = (
    "requests_total",
    "request_duration_milliseconds",
    "request_bytes",
    "response_bytes",
)
# The request attributes pilotfish evaluates (Istio's attribute names).
ATTRIBUTES = (
    "request.host",
    "request.method",
    "request.path",
    "request.url_path",
    "response.code",
)
HEADER, LITERAL = "request.headers", "literal"
# Peer labels a sidecar knows from Istio's metadata exchange.
PEER_LABELS = (
    "app",
    "version",
    "service.istio.io/canonical-name",
    "service.istio.io/canonical-revision",
)
_QUOTED = r"""(?:'([^'\\]*)'|"([^"\\]*)")"""
_HEADER_RE = re.compile(rf"^request\.headers\[{_QUOTED}\]$")
_LITERAL_RE = re.compile(rf"^{_QUOTED}$")
_PEER_RE = re.compile(rf"^(upstream_peer|downstream_peer)\.labels\[{_QUOTED}\]\.value$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

Expression = tuple[str, str]  # (attribute, argument): ("request.headers", "x-user")


class MetricsConfigError(ValueError):
    """A stats config the proxy cannot apply; the message names the field."""


def parse_expression(text: str) -> Expression:
    """An attribute reference or string literal; ValueError for anything else."""
    text = text.strip()
    if text in ATTRIBUTES:
        return (text, "")
    for kind, pattern in ((HEADER, _HEADER_RE), (LITERAL, _LITERAL_RE)):
        found = pattern.match(text)
        if found:
            arg = found.group(1) if found.group(1) is not None else found.group(2)
            return (kind, arg.lower() if kind == HEADER else arg)
    peer = _PEER_RE.match(text)
    if peer and (peer.group(2) or peer.group(3) or "") in PEER_LABELS:
        return (peer.group(1), peer.group(2) or peer.group(3) or "")
    raise ValueError(
        f"expression {text!r} is not supported: pilotfish evaluates string literals, "
        f"request.headers['NAME'], {', '.join(ATTRIBUTES)}, and "
        f"upstream_peer/downstream_peer.labels['LABEL'].value for {', '.join(PEER_LABELS)}"
    )


@dataclass(frozen=True, slots=True)
class RequestAttributes:
    """What one finished request offers to the expressions."""

    host: str
    method: str
    path: str
    code: int
    header: Callable[[bytes], bytes | None]
    peer_label: Callable[[str], str]  # the other side's label (metadata exchange)
    inbound: bool  # the peer is the downstream one; else the upstream one

    def evaluate(self, expression: Expression) -> str:
        kind, arg = expression
        if kind == LITERAL:
            return arg
        if kind == HEADER:
            value = self.header(arg.encode("latin-1"))
            return "unknown" if value is None else value.decode("latin-1")
        if kind in ("upstream_peer", "downstream_peer"):
            # The local app, on the other side, sends no metadata: unknown, as in Istio.
            known = (kind == "downstream_peer") == self.inbound
            return self.peer_label(arg) if known else "unknown"
        if kind == "request.host":
            return self.host
        if kind == "request.method":
            return self.method
        if kind == "request.path":
            return self.path
        if kind == "request.url_path":
            return self.path.partition("?")[0]
        return str(self.code)


@dataclass(frozen=True, slots=True)
class MetricOverride:
    """One metric's override: dropped, or its labels reshaped."""

    drop: bool = False
    remove: frozenset[str] = frozenset()
    dimensions: tuple[tuple[str, Expression], ...] = ()

    def apply(
        self, pairs: Iterable[tuple[str, str]], values: Mapping[Expression, str]
    ) -> list[tuple[str, str]]:
        """Standard labels in place (replaced where upserted), then the new
        ones by name; removed ones left out."""
        upserted = {label: values[expr] for label, expr in self.dimensions}
        out = [(k, upserted.pop(k, v)) for k, v in pairs if k not in self.remove]
        out += [(k, v) for k, v in upserted.items() if k not in self.remove]
        return out


@dataclass(frozen=True, eq=False)
class MetricsConfig:
    """The overrides of one connection manager, by metric name (no istio_
    prefix). Hashed by identity: recording keys series on it."""

    metrics: Mapping[str, MetricOverride] = field(default_factory=dict)
    expressions: tuple[Expression, ...] = field(init=False)

    def __post_init__(self) -> None:
        found = (e for o in self.metrics.values() for _, e in o.dimensions)
        object.__setattr__(self, "expressions", tuple(dict.fromkeys(found)))

    def __repr__(self) -> str:
        return f"<MetricsConfig {sorted(self.metrics)}>"

    def values(self, request: RequestAttributes) -> dict[Expression, str]:
        """Every expression's value for one request."""
        return {expr: request.evaluate(expr) for expr in self.expressions}


def split_stats_filter(
    http_filters: Sequence[Any], where: str
) -> tuple[MetricsConfig | None, list[Any]]:
    """(the `istio.stats` filter's config or None, the other filters)."""
    found = [f for f in http_filters if f.name == STATS_FILTER]
    if not found:
        return None, list(http_filters)
    if len(found) > 1:
        raise MetricsConfigError(f"{where}: http_filters: {STATS_FILTER} appears twice")
    rest = [f for f in http_filters if f.name != STATS_FILTER]
    return compile_stats_config(found[0].typed_config, f"{where}: {STATS_FILTER}"), rest


def compile_stats_config(typed_config: Any, where: str) -> MetricsConfig:
    wrapper = typed_struct_pb2.TypedStruct()
    if not typed_config.Unpack(wrapper) or wrapper.type_url != PLUGIN_CONFIG_TYPE:
        raise MetricsConfigError(
            f"{where}: typed_config must be a TypedStruct of {PLUGIN_CONFIG_TYPE}"
        )
    config = json_format.MessageToDict(wrapper.value)
    metrics: dict[str, MetricOverride] = {}
    for i, entry in enumerate(config.get("metrics") or ()):
        name = str(entry.get("name") or "")
        override = _override(entry, f"{where}.metrics[{i}]")
        for metric in (name,) if name else HTTP_METRICS:
            if metric not in HTTP_METRICS:
                raise MetricsConfigError(
                    f"{where}.metrics[{i}].name: {metric!r} is not an HTTP metric pilotfish reports"
                )
            metrics[metric] = _merge(metrics.get(metric), override)
    return MetricsConfig(metrics)


def _override(entry: Mapping[str, Any], where: str) -> MetricOverride:
    dimensions = []
    for label, text in sorted((entry.get("dimensions") or {}).items()):
        if not _LABEL_RE.match(label):
            raise MetricsConfigError(
                f"{where}.dimensions: {label!r} is not a Prometheus label name"
            )
        try:
            dimensions.append((label, parse_expression(str(text))))
        except ValueError as e:
            raise MetricsConfigError(f"{where}.dimensions.{label}: {e}") from e
    return MetricOverride(
        drop=bool(entry.get("drop")),
        remove=frozenset(str(t) for t in entry.get("tags_to_remove") or ()),
        dimensions=tuple(dimensions),
    )


def _merge(old: MetricOverride | None, new: MetricOverride) -> MetricOverride:
    """Later entries add to earlier ones for the same metric, as Istio's filter."""
    if old is None:
        return new
    dims = dict(old.dimensions) | dict(new.dimensions)
    return MetricOverride(old.drop or new.drop, old.remove | new.remove, tuple(dims.items()))


def stats_filter_struct(metrics: Sequence[Mapping[str, Any]]) -> struct_pb2.Struct:
    """The PluginConfig value istiod would write, as a Struct."""
    value = struct_pb2.Struct()
    value.update({"metrics": [dict(m) for m in metrics]})
    return value
