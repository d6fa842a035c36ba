"""`pilotfish stat`'s numbers, as `linkerd viz stat` computes them: pure
functions from what each edge counted in a window to one row per workload,
service or Canary leaf.

A resource's numbers are what it received (reporter="destination"), or,
with `to`, what it sent to that workload or service (reporter="source", so
a fault injected on the way counts). TCP_CONN is the connections open now:
opened less closed since each sidecar started, from its last page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pilotfish.dashboard.graph import metrics
from pilotfish.dashboard.series import TCP_CLOSED, TCP_OPENED, UNKNOWN, Edge
from pilotfish.rollout.metrics.builtin import Totals

Json = dict[str, Any]
KINDS = ("workloads", "services", "canaries")
Name = tuple[str, str]  # namespace, name


def row_key(kind: str, edge: Edge, to: str | None) -> Name:
    if to is not None:
        return (edge.source_namespace, edge.source_workload)
    if kind == "services":
        return (edge.service_namespace, edge.service_name)
    return (edge.destination_namespace, edge.destination_workload)


def selector(kind: str, source: str | None, to: str | None) -> Callable[[Edge], bool]:
    """Which edges count: the reporter that saw the resource's side of the call."""

    def keep(edge: Edge) -> bool:
        if to is not None:
            return edge.reporter == "source" and to in (
                edge.destination_workload,
                edge.service_name,
            )
        if edge.reporter != "destination":
            return False
        return source is None or edge.source_workload == source

    return keep


def stat_rows(
    kind: str,
    counted: Mapping[Edge, Totals],
    cumulative: Mapping[Edge, Totals],
    window_s: float,
    known: Mapping[Name, str],
    *,
    source: str | None = None,
    to: str | None = None,
) -> list[Json]:
    """One row per resource: every `known` one (name -> MESHED, e.g. "1/1"),
    with or without traffic, and any other that had some."""
    keep = selector(kind, source, to)
    sums: dict[Name, Totals] = {}
    for edge, counts in counted.items():
        if keep(edge):
            key = row_key(kind, edge, to)
            sums[key] = sums.get(key, Totals()) + counts
    opened: dict[Name, float] = {}
    for edge, counts in cumulative.items():
        if edge.reporter == "destination" and to is None:
            key = row_key(kind, edge, to)
            now = counts.tcp.get(TCP_OPENED, 0.0) - counts.tcp.get(TCP_CLOSED, 0.0)
            opened[key] = opened.get(key, 0.0) + now
    names = set(known) | {k for k in sums if k[1] != UNKNOWN}
    return [
        row(k, sums.get(k), window_s, known.get(k, "-"), opened.get(k, 0.0)) for k in sorted(names)
    ]


def row(name: Name, counts: Totals | None, window_s: float, meshed: str, tcp: float) -> Json:
    """A row in `linkerd viz stat -o json`'s keys; None where there was no traffic."""
    found = metrics(counts, window_s) if counts is not None and counts.requests else None
    return {
        "namespace": name[0],
        "name": name[1],
        "meshed": meshed,
        "requests": found["requests"] if found else 0.0,
        "success": found["successRate"] if found else None,
        "rps": found["rps"] if found else None,
        "latency_ms_p50": found["p50"] if found else None,
        "latency_ms_p95": found["p95"] if found else None,
        "latency_ms_p99": found["p99"] if found else None,
        "tcp_open_connections": int(max(tcp, 0.0)),
    }
