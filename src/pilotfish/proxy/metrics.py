"""Golden metrics with Istio's names and labels, as plain counters.

Recording a request is a dict lookup on its label values and a few integer
additions; label sets are escaped once, when first seen; the Prometheus text
is built only when scraped.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import Protocol

from envoy.config.core.v3.base_pb2 import Node

# Istio's default buckets for istio_request_duration_milliseconds.
DURATION_BUCKETS_MS = (
    0.5,
    1,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    300000,
    600000,
    1800000,
    3600000,
)
REQUEST_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_app",
    "source_version",
    "destination_service",
    "destination_service_name",
    "destination_cluster_name",
    "request_protocol",
    "response_code",
    "response_flags",
)


class Recorded(Protocol):
    status: int
    flags: str
    cluster: str
    started: float


@dataclass(frozen=True)
class Workload:
    """The proxy's own workload, from the bootstrap's node metadata (Istio's keys)."""

    name: str = "unknown"
    namespace: str = "unknown"
    app: str = "unknown"
    version: str = "unknown"

    @staticmethod
    def from_node(node: Node) -> Workload:
        meta = node.metadata.fields
        labels = meta["LABELS"].struct_value.fields if "LABELS" in meta else {}

        def text(fields: object, key: str) -> str:
            value = fields.get(key)  # type: ignore[attr-defined]
            return value.string_value if value is not None and value.string_value else "unknown"

        return Workload(
            text(meta, "WORKLOAD_NAME") if "WORKLOAD_NAME" in meta else text(meta, "NAME"),
            text(meta, "NAMESPACE"),
            text(labels, "app"),
            text(labels, "version"),
        )


@dataclass
class Series:
    requests: int = 0
    duration_buckets: list[int] = field(
        default_factory=lambda: [0] * (len(DURATION_BUCKETS_MS) + 1)
    )
    duration_sum: float = 0.0


@dataclass
class Telemetry:
    workload: Workload = field(default_factory=Workload)
    reporter: str = "source"
    connections: int = 0
    series: dict[tuple[str, int, str], tuple[str, Series]] = field(default_factory=dict)

    def record(self, request: Recorded) -> None:
        key = (request.cluster, request.status, request.flags)
        entry = self.series.get(key)
        if entry is None:
            entry = self.series[key] = (self._labels(*key), Series())
        series = entry[1]
        elapsed_ms = (time.monotonic() - request.started) * 1000.0
        series.requests += 1
        series.duration_buckets[bisect.bisect_left(DURATION_BUCKETS_MS, elapsed_ms)] += 1
        series.duration_sum += elapsed_ms

    def _labels(self, cluster: str, status: int, flags: str) -> str:
        host = cluster.rsplit("|", 1)[-1] if "|" in cluster else cluster or "unknown"
        values = (
            self.reporter,
            self.workload.name,
            self.workload.namespace,
            self.workload.app,
            self.workload.version,
            host,
            host.split(".")[0],
            cluster or "unknown",
            "http",
            str(status),
            flags or "-",
        )
        return ",".join(f'{k}="{escape(v)}"' for k, v in zip(REQUEST_LABELS, values, strict=True))

    def prometheus(self) -> bytes:
        lines = ["# TYPE istio_requests_total counter"]
        lines += [
            f"istio_requests_total{{{labels}}} {s.requests}" for labels, s in self.series.values()
        ]
        lines.append("# TYPE istio_request_duration_milliseconds histogram")
        for labels, s in self.series.values():
            cumulative = 0
            for bound, count in zip(
                (*DURATION_BUCKETS_MS, "+Inf"), s.duration_buckets, strict=True
            ):
                cumulative += count
                lines.append(
                    f'istio_request_duration_milliseconds_bucket{{{labels},le="{bound}"}} {cumulative}'
                )
            lines.append(
                f"istio_request_duration_milliseconds_sum{{{labels}}} {s.duration_sum:.3f}"
            )
            lines.append(f"istio_request_duration_milliseconds_count{{{labels}}} {s.requests}")
        lines.append("# TYPE envoy_server_downstream_cx_active gauge")
        lines.append(f"envoy_server_downstream_cx_active {self.connections}")
        return ("\n".join(lines) + "\n").encode()


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
