"""Envoy's `/clusters` admin text: one `cluster::field::value` line per fact."""

from __future__ import annotations

from collections.abc import Iterable

from pilotfish.proxy.upstream.breakers import Thresholds
from pilotfish.proxy.upstream.cluster import Cluster
from pilotfish.proxy.upstream.host import Host


def render_clusters(clusters: Iterable[Cluster]) -> str:
    lines: list[str] = []
    for cluster in clusters:
        lines.extend(cluster_lines(cluster))
    return "".join(line + "\n" for line in lines)


def cluster_lines(cluster: Cluster) -> list[str]:
    name, spec = cluster.name, cluster.spec
    lines = [f"{name}::observability_name::{spec.stat_name}"]
    if cluster.outlier is not None and cluster.outlier.success_rate_average >= 0:
        outlier = cluster.outlier
        lines.append(f"{name}::outlier::success_rate_average::{outlier.success_rate_average:g}")
        threshold = outlier.success_rate_ejection_threshold
        lines.append(f"{name}::outlier::success_rate_ejection_threshold::{threshold:g}")
    lines += _thresholds(name, "default_priority", spec.thresholds)
    lines += _thresholds(name, "high_priority", spec.high_thresholds)
    lines.append(f"{name}::added_via_api::{str(spec.added_via_api).lower()}")
    if spec.eds_service_name:
        lines.append(f"{name}::eds_service_name::{spec.eds_service_name}")
    for host in cluster.hosts:
        lines += host_lines(name, host)
    return lines


def host_lines(cluster: str, host: Host) -> list[str]:
    prefix = f"{cluster}::{host.address}:{host.port}::"
    region, zone, sub_zone = host.locality
    facts: list[tuple[str, object]] = [
        ("cx_active", host.cx_active),
        ("cx_connect_fail", host.cx_connect_fail),
        ("cx_total", host.cx_total),
        ("rq_active", host.rq_active),
        ("rq_error", host.rq_error),
        ("rq_success", host.rq_success),
        ("rq_timeout", host.rq_timeout),
        ("rq_total", host.rq_total),
        ("hostname", host.hostname),
        ("health_flags", host.health_flags()),
        ("weight", host.weight),
        ("region", region),
        ("zone", zone),
        ("sub_zone", sub_zone),
        ("canary", "false"),
        ("priority", host.priority),
        ("success_rate", f"{host.success_rate:.1f}"),
        ("local_origin_success_rate", f"{host.local_origin_success_rate:.1f}"),
    ]
    return [f"{prefix}{key}::{value}" for key, value in facts]


def _thresholds(cluster: str, priority: str, t: Thresholds) -> list[str]:
    return [
        f"{cluster}::{priority}::max_connections::{t.max_connections}",
        f"{cluster}::{priority}::max_pending_requests::{t.max_pending_requests}",
        f"{cluster}::{priority}::max_requests::{t.max_requests}",
        f"{cluster}::{priority}::max_retries::{t.max_retries}",
    ]
