"""Envoy's own stats: counters and gauges per cluster, listener and HTTP
connection manager, as `/stats` text and as `envoy_*` Prometheus families.

Each scope is an object with one integer attribute per stat, so the modules
that own the events (`stats.cluster(name).upstream_rq_retry += 1`) pay an
attribute add, and mypy catches a misspelled stat. An attribute's stat name
is Envoy's, with "__" standing for Envoy's "." (`outlier_detection__
ejections_active` is `outlier_detection.ejections_active`).

The Prometheus names follow the tags Istio's bootstrap extracts:
`cluster.<name>.upstream_rq_2xx` becomes
`envoy_cluster_upstream_rq{response_code_class="2xx",cluster_name="<name>"}`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import Field, dataclass, field, fields
from typing import Any

from pilotfish.proxy.telemetry import Telemetry, counter, format_labels

CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class StatusCount:
    """Responses of one status in a scope. An object with an int attribute:
    compiled, counting one more is an unboxed add, where a dict's int value
    was a new int object (above 256) and a dict store per response."""

    __slots__ = ("count", "status")

    def __init__(self, status: int) -> None:
        self.status = status
        self.count = 0

    def __repr__(self) -> str:
        return f"<StatusCount {self.status}: {self.count}>"


def count_status(scope: StatusScope, status: int) -> None:
    """One more response of `status` in `scope`. Most responses have the
    status of the one before: the scope keeps that one's count at hand (a
    comparison, about 40 instructions), and looks others up in its dict
    (about 500 before, twice a request: a dict get and a dict store). The
    count at hand is always the dict's own entry, which is never removed,
    so it cannot go stale."""
    last = scope.last
    if last is None or last.status != status:
        last = scope.statuses.get(status)
        if last is None:
            last = scope.statuses[status] = StatusCount(status)
        scope.last = last
    last.count += 1


def gauge() -> Any:
    """A stat that goes up and down; the rest of a scope's stats are counters."""
    return field(default=0, metadata={"kind": "gauge"})


@dataclass(slots=True, eq=False)
class Scope:
    """Named integer stats under one Envoy prefix."""

    name: str

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def stats(self) -> Iterator[tuple[str, str, int]]:
        """(Envoy stat name, "counter" or "gauge", value) of every stat."""
        for f in _stat_fields(type(self)):
            yield (
                f.name.replace("__", "."),
                f.metadata.get("kind", "counter"),
                getattr(self, f.name),
            )


@dataclass(slots=True, eq=False, repr=False)
class StatusScope(Scope):
    """A scope that counts responses by status (count_status); Envoy's
    per-code, per-class and completed counters are read from these counts."""

    statuses: dict[int, StatusCount] = field(default_factory=dict)
    last: StatusCount | None = None  # the status counted last (count_status)

    @property
    def codes(self) -> dict[int, int]:
        """Responses counted, by status."""
        return {status: found.count for status, found in self.statuses.items()}


_FIELDS: dict[type[Scope], tuple[Field[Any], ...]] = {}


def _stat_fields(cls: type[Scope]) -> tuple[Field[Any], ...]:
    found = _FIELDS.get(cls)
    if found is None:
        # An integer default marks a stat (not the annotation: a string when
        # interpreted, the type itself when mypyc compiled the class).
        found = _FIELDS[cls] = tuple(f for f in fields(cls) if type(f.default) is int)
    return found


@dataclass(slots=True, eq=False, repr=False)
class ClusterStats(StatusScope):
    """`cluster.<name>.*` counted as events happen. What the cluster's state
    says (membership, circuit breakers, outlier detection, active connections
    and requests) is read from it when the stats are (`StatsRegistry.state`)."""

    upstream_cx_total: int = 0
    upstream_cx_connect_fail: int = 0
    upstream_cx_connect_timeout: int = 0
    upstream_cx_destroy: int = 0
    upstream_cx_idle_timeout: int = 0
    upstream_cx_max_requests: int = 0
    upstream_cx_http2_total: int = 0
    upstream_cx_protocol_error: int = 0
    upstream_rq_total: int = 0
    upstream_rq_pending_total: int = 0
    upstream_rq_timeout: int = 0
    upstream_rq_per_try_timeout: int = 0
    upstream_rq_rx_reset: int = 0
    upstream_rq_tx_reset: int = 0
    upstream_rq_retry: int = 0
    upstream_rq_retry_success: int = 0
    upstream_rq_retry_limit_exceeded: int = 0
    ssl__handshake: int = 0
    ssl__connection_error: int = 0
    ssl__fail_verify_san: int = 0

    def stats(self) -> Iterator[tuple[str, str, int]]:
        yield from Scope.stats(self)
        codes = self.codes  # upstream responses by status
        yield from code_stats("upstream_rq_", codes)
        for code in sorted(codes):
            yield f"upstream_rq_{code}", "counter", codes[code]


@dataclass(slots=True, eq=False, repr=False)
class HttpStats(StatusScope):
    """`http.<stat_prefix>.*`: the HTTP connection manager's downstream side."""

    downstream_cx_total: int = 0
    downstream_cx_destroy: int = 0
    downstream_cx_protocol_error: int = 0
    downstream_cx_idle_timeout: int = 0
    downstream_rq_total: int = 0
    downstream_rq_rx_reset: int = 0
    downstream_rq_header_timeout: int = 0
    downstream_rq_timeout: int = 0
    downstream_rq_idle_timeout: int = 0
    downstream_rq_too_large: int = 0
    downstream_rq_max_duration_reached: int = 0
    no_route: int = 0
    no_cluster: int = 0
    rq_redirect: int = 0
    rq_direct_response: int = 0
    fault__aborts_injected: int = 0
    fault__delays_injected: int = 0
    local_rate_limit__rate_limited: int = 0
    downstream_cx_http2_total: int = 0
    downstream_cx_active: int = gauge()
    downstream_cx_http2_active: int = gauge()
    # Counters the HTTP filters name themselves (`rbac.allowed`, with their
    # configs' stat prefixes in the names).
    filters: Counter[str] = field(default_factory=Counter)

    def stats(self) -> Iterator[tuple[str, str, int]]:
        yield from Scope.stats(self)
        yield from code_stats("downstream_rq_", self.codes)
        for name in sorted(self.filters):
            yield name, "counter", self.filters[name]


@dataclass(slots=True, eq=False, repr=False)
class ListenerStats(Scope):
    """`listener.<address>.*`, the address written as Envoy does: `0.0.0.0_15001`."""

    downstream_cx_total: int = 0
    downstream_cx_destroy: int = 0
    no_filter_chain_match: int = 0  # e.g. plaintext on a STRICT mTLS port
    ssl__handshake: int = 0
    ssl__connection_error: int = 0
    downstream_cx_active: int = gauge()


@dataclass(slots=True, eq=False, repr=False)
class TracingStats(Scope):
    """`tracing.opentelemetry.*`: the span exporter's (see proxy/tracing/exporter.py)."""

    spans_sent: int = 0
    spans_dropped: int = 0  # the queue was full: the collector is slow or gone
    timer_flushed: int = 0
    reports_sent: int = 0
    reports_failed: int = 0


# What is read from live state rather than counted: (family, scope name) -> {stat: value}.
State = dict[tuple[str, str], dict[str, int]]
_STATE_GAUGE_PREFIXES = ("membership_", "circuit_breakers.")
_STATE_GAUGES = frozenset(
    {"live", "state", "uptime", "concurrency", "total_connections", "max_host_weight"}
)


def state_kind(stat: str) -> str:
    """Counter or gauge, for a stat read from state."""
    gauge = (
        stat in _STATE_GAUGES or stat.endswith("_active") or stat.startswith(_STATE_GAUGE_PREFIXES)
    )
    return "gauge" if gauge else "counter"


def code_stats(prefix: str, codes: dict[int, int]) -> Iterator[tuple[str, str, int]]:
    """Envoy's `<prefix>completed` and `<prefix>1xx`..`5xx`, summed from counts by
    status, so that a request pays one dict update for all of them."""
    classes = dict.fromkeys(range(1, 6), 0)
    for code, count in codes.items():
        if code // 100 in classes:
            classes[code // 100] += count
    yield f"{prefix}completed", "counter", sum(codes.values())
    for c, count in classes.items():
        yield f"{prefix}{c}xx", "counter", count


def listener_stat_name(host: str, port: int) -> str:
    """Envoy's listener stat address: `0.0.0.0_15001`, `[::1]_15001`."""
    return f"[{host}]_{port}" if ":" in host else f"{host}_{port}"


class StatsRegistry:
    """Every scope of one proxy; a scope is created on first use and stays
    until removed (a cluster or listener gone from the config)."""

    def __init__(self, state: Callable[[], State] = dict) -> None:
        self.state = state  # the stats read from live state, when stats are read
        self.clusters: dict[str, ClusterStats] = {}
        self.listeners: dict[str, ListenerStats] = {}
        self.http_managers: dict[str, HttpStats] = {}
        self.tracing = TracingStats("opentelemetry")
        # Counters network filters name in full (`tcp.rbac.allowed`: the network
        # RBAC filter's `<stat_prefix>rbac.allowed`), in no scope.
        self.network: Counter[str] = Counter()

    def __repr__(self) -> str:
        return (
            f"<StatsRegistry clusters={len(self.clusters)} listeners={len(self.listeners)}"
            f" http={len(self.http_managers)}>"
        )

    def cluster(self, name: str) -> ClusterStats:
        found = self.clusters.get(name)
        if found is None:
            found = self.clusters[name] = ClusterStats(name)
        return found

    def listener(self, address: str) -> ListenerStats:
        found = self.listeners.get(address)
        if found is None:
            found = self.listeners[address] = ListenerStats(address)
        return found

    def http(self, stat_prefix: str) -> HttpStats:
        found = self.http_managers.get(stat_prefix)
        if found is None:
            found = self.http_managers[stat_prefix] = HttpStats(stat_prefix)
        return found

    def remove_cluster(self, name: str) -> None:
        self.clusters.pop(name, None)

    def remove_listener(self, address: str) -> None:
        self.listeners.pop(address, None)

    def text(self) -> bytes:
        """Envoy's `/stats`: `name: value` lines, sorted by name."""
        lines = sorted(
            [
                f"{family if family == 'server' else f'{family}.{scope}'}.{stat}: {value}"
                for family, _, scope, stat, _, value in self._entries()
            ]
            + [f"{name}: {value}" for name, value in self.network.items()]
        )
        return ("\n".join(lines) + "\n").encode() if lines else b""

    def prometheus(self) -> bytes:
        """The `envoy_*` families in Prometheus text format 0.0.4."""
        families: dict[str, tuple[str, list[tuple[str, int]]]] = {}
        for family, tag, scope, stat, kind, value in self._entries():
            name, labels = _prometheus_name(family, stat, tag, scope)
            families.setdefault(name, (kind, []))[1].append((labels, value))
        for stat, value in self.network.items():
            families.setdefault("envoy_" + stat.replace(".", "_"), ("counter", []))[1].append(
                ("", value)
            )
        return "".join(_render(families)).encode()

    def _entries(self) -> Iterator[tuple[str, str | None, str, str, str, int]]:
        """(family, its scope's label name, scope, stat, kind, value) of every stat:
        the counted ones, then those read from state, for the same scope."""
        state = self.state()
        for family, scopes in self._scopes():
            tag = _TAGS[family]
            for scope in scopes:
                for stat, kind, value in scope.stats():
                    yield family, tag, scope.name, stat, kind, value
                for stat, value in state.pop((family, scope.name), {}).items():
                    yield family, tag, scope.name, stat, state_kind(stat), value
        for (family, name), stats in state.items():
            tag = _TAGS[family]
            for stat, value in stats.items():
                yield family, tag, name, stat, state_kind(stat), value

    def _scopes(self) -> Iterator[tuple[str, Iterable[Scope]]]:
        yield "cluster", self.clusters.values()
        yield "http", self.http_managers.values()
        yield "listener", self.listeners.values()
        yield "tracing", (self.tracing,)


# The label each family's scope name becomes (Istio's tag extraction); server has none.
_TAGS: dict[str, str | None] = {
    "cluster": "cluster_name",
    "http": "http_conn_manager_prefix",
    "listener": "listener_address",
    "server": None,
    "tracing": None,
}


def _prometheus_name(
    family: str, stat: str, prefix_tag: str | None, scope_name: str
) -> tuple[str, str]:
    """Envoy's tag extraction as Istio configures it: the scope's name and a
    trailing response code or class become labels."""
    pairs: list[tuple[str, str]] = []
    head, _, last = stat.rpartition("_")
    if head.endswith("_rq") and (last in CODE_CLASSES or (last.isdigit() and len(last) == 3)):
        pairs.append(("response_code_class" if last in CODE_CLASSES else "response_code", last))
        stat = head
    if prefix_tag is not None:
        pairs.append((prefix_tag, scope_name))
    if prefix_tag is None and family != "server":  # a fixed scope is part of the name
        stat = f"{scope_name}_{stat}"
    name = f"envoy_{family}_{stat.replace('.', '_')}"
    return name, format_labels(pairs)


def _render(families: dict[str, tuple[str, list[tuple[str, int]]]]) -> Iterator[str]:
    for name in sorted(families):
        kind, samples = families[name]
        yield from counter(name, "", samples, kind)


def prometheus_page(telemetry: Telemetry | None, stats: StatsRegistry | None) -> bytes:
    """The body of admin `/stats/prometheus`: Istio's families, then Envoy's."""
    parts = [] if telemetry is None else [telemetry.prometheus()]
    if stats is not None:
        parts.append(stats.prometheus())
    return b"".join(parts)
