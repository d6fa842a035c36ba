"""The fault filter (envoy.filters.http.fault): delays and aborts, configured
or asked for by the caller's headers.

`FaultPolicy` is an `HTTPFault` compiled; `decide` is the whole policy as one
pure call. `FaultFilter` runs it in the chain as Envoy does: the delay first
(the chain answers `Delay`, the shell sleeps), then, on resume, the abort;
each injected fault holds one of `max_active_faults` slots, a delay until it
has elapsed, an abort until the request is finished.

Header-controlled faults need the matching `header_delay` / `header_abort` in
the config; their percentage headers can only lower the configured percentage.
Only the first value of each control header counts: the caller is untrusted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from random import Random
from typing import Any

from envoy.extensions.filters.http.fault.v3 import fault_pb2
from google.protobuf.message import Message

from pilotfish.proxy.filters.base import (
    PROCEED,
    Delay,
    Exchange,
    LocalReply,
    Proceed,
    Step,
    local_reply,
)
from pilotfish.proxy.filters.errors import FilterConfigError
from pilotfish.proxy.filters.overrides import RouteOverrides, expect
from pilotfish.proxy.filters.percent import Percent, percent_from_proto
from pilotfish.proxy.proto_fields import seconds, unsupported
from pilotfish.proxy.routing.errors import RouteConfigError
from pilotfish.proxy.routing.match import Condition, compile_header_matcher
from pilotfish.proxy.routing.per_filter import FilterConfigs
from pilotfish.proxy.routing.request import RequestView, index_headers

ABORT_HEADER = b"x-envoy-fault-abort-request"
ABORT_GRPC_HEADER = b"x-envoy-fault-abort-grpc-request"
ABORT_PERCENT_HEADER = b"x-envoy-fault-abort-request-percentage"
DELAY_HEADER = b"x-envoy-fault-delay-request"
DELAY_PERCENT_HEADER = b"x-envoy-fault-delay-request-percentage"
NODE_HEADER = b"x-envoy-downstream-service-node"
ABORT_MESSAGE = "fault filter abort"

_RUNTIME_KEYS = (
    "delay_percent_runtime",
    "abort_percent_runtime",
    "delay_duration_runtime",
    "abort_http_status_runtime",
    "abort_grpc_status_runtime",
    "max_active_faults_runtime",
    "response_rate_limit_percent_runtime",
)
SUPPORTED = frozenset(
    {
        "delay.fixed_delay",
        "delay.header_delay",
        "delay.percentage",
        "abort.http_status",
        "abort.grpc_status",
        "abort.header_abort",
        "abort.percentage",
        "upstream_cluster",
        "headers",
        "downstream_nodes",
        "max_active_faults",
        "disable_downstream_cluster_stats",
        *_RUNTIME_KEYS,  # pilotfish has no runtime layer: the defaults apply, as in Envoy
    }
)
_UINT = re.compile(rb"\s*\+?(\d{1,20})\s*")
_UINT32_MAX = 2**32 - 1


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What one request gets: a delay (0.0 for none), then an abort or not.
    A gRPC abort has abort_status 200 and a grpc_status."""

    delay_s: float = 0.0
    abort_status: int | None = None
    grpc_status: int | None = None

    @property
    def injected(self) -> bool:
        return self.delay_s > 0 or self.abort_status is not None


NO_FAULT = FaultDecision()


@dataclass(frozen=True, slots=True)
class DelaySpec:
    """fixed_s None: the delay comes from the x-envoy-fault-delay-request header."""

    fixed_s: float | None
    percent: Percent


@dataclass(frozen=True, slots=True)
class AbortSpec:
    """http_status and grpc_status both None: the abort comes from the headers."""

    http_status: int | None
    grpc_status: int | None
    percent: Percent

    @property
    def from_headers(self) -> bool:
        return self.http_status is None and self.grpc_status is None


@dataclass(frozen=True, slots=True, eq=False)
class FaultPolicy:
    delay: DelaySpec | None = None
    abort: AbortSpec | None = None
    conditions: tuple[Condition, ...] = ()
    downstream_nodes: frozenset[bytes] = frozenset()
    upstream_cluster: str = ""
    max_active: int | None = None  # None: unlimited

    def __repr__(self) -> str:
        return f"FaultPolicy(delay={self.delay}, abort={self.abort})"

    def applies(self, req: RequestView, index: dict[bytes, bytes], cluster: str) -> bool:
        """upstream_cluster, downstream_nodes and headers all hold (Envoy's order)."""
        if self.upstream_cluster and cluster != self.upstream_cluster:
            return False
        if self.downstream_nodes and index.get(NODE_HEADER) not in self.downstream_nodes:
            return False
        return all(condition(req, index) for condition in self.conditions)

    def delay_for(self, index: dict[bytes, bytes], rng: Random) -> float:
        """Seconds to delay, 0.0 for none; draws from rng only if a delay is configured."""
        spec = self.delay
        if spec is None:
            return 0.0
        percent = spec.percent
        if spec.fixed_s is None:
            percent = _header_percent(index, DELAY_PERCENT_HEADER, percent)
        if not percent.sample(rng):
            return 0.0
        if spec.fixed_s is not None:
            return spec.fixed_s
        millis = _uint(index.get(DELAY_HEADER))
        return millis / 1000 if millis else 0.0

    def abort_for(self, index: dict[bytes, bytes], rng: Random) -> tuple[int, int | None] | None:
        """(HTTP status, gRPC status or None), or None for no abort. An HTTP
        status wins over a gRPC one; a gRPC abort answers 200, as in Envoy."""
        spec = self.abort
        if spec is None:
            return None
        if not spec.from_headers:
            if not spec.percent.sample(rng):
                return None
            return (spec.http_status, None) if spec.http_status else (200, spec.grpc_status)
        if not _header_percent(index, ABORT_PERCENT_HEADER, spec.percent).sample(rng):
            return None
        http = _uint(index.get(ABORT_HEADER))
        if http is not None and 200 <= http < 600:
            return (http, None)
        grpc = _uint(index.get(ABORT_GRPC_HEADER))
        return (200, grpc) if grpc is not None else None

    def decide(self, req: RequestView, rng: Random, cluster: str = "") -> FaultDecision:
        """The policy on its own, without max_active_faults (that needs the
        filter's count of faults in flight)."""
        index = index_headers(req.headers)
        if not self.applies(req, index, cluster):
            return NO_FAULT
        delay = self.delay_for(index, rng)
        abort = self.abort_for(index, rng)
        if abort is None:
            return FaultDecision(delay) if delay else NO_FAULT
        return FaultDecision(delay, abort[0], abort[1])


def _header_percent(index: dict[bytes, bytes], name: bytes, configured: Percent) -> Percent:
    value = _uint(index.get(name))
    if value is None or value > _UINT32_MAX:
        return configured
    return configured.capped(value)


def _uint(raw: bytes | None) -> int | None:
    """A header's first value as a non-negative integer, as absl::SimpleAtoi reads it."""
    if raw is None:
        return None
    match = _UINT.fullmatch(raw.split(b",", 1)[0])
    return int(match.group(1)) if match else None


def compile_fault(config: fault_pb2.HTTPFault, path: str) -> FaultPolicy:
    bad = unsupported(config, SUPPORTED)
    if bad:
        raise FilterConfigError(f"{path}.{bad[0]}", "not supported by pilotfish")
    try:
        conditions = tuple(
            compile_header_matcher(m, f"{path}.headers[{i}]") for i, m in enumerate(config.headers)
        )
    except RouteConfigError as e:
        raise FilterConfigError(e.path, e.reason) from None
    return FaultPolicy(
        delay=_delay(config.delay, f"{path}.delay") if config.HasField("delay") else None,
        abort=_abort(config.abort, f"{path}.abort") if config.HasField("abort") else None,
        conditions=conditions,
        downstream_nodes=frozenset(n.encode() for n in config.downstream_nodes),
        upstream_cluster=config.upstream_cluster,
        max_active=config.max_active_faults.value if config.HasField("max_active_faults") else None,
    )


def _delay(delay: Any, path: str) -> DelaySpec:
    percent = percent_from_proto(delay.percentage, f"{path}.percentage")
    which = delay.WhichOneof("fault_delay_secifier")  # sic: Envoy's spelling
    if which == "header_delay":
        return DelaySpec(None, percent)
    if which != "fixed_delay":
        raise FilterConfigError(path, "a delay needs fixed_delay or header_delay")
    delay_s = seconds(delay.fixed_delay)
    if delay_s <= 0:
        raise FilterConfigError(f"{path}.fixed_delay", "must be greater than 0s")
    return DelaySpec(delay_s, percent)


def _abort(abort: Any, path: str) -> AbortSpec:
    percent = percent_from_proto(abort.percentage, f"{path}.percentage")
    which = abort.WhichOneof("error_type")
    if which == "http_status":
        if not 200 <= abort.http_status < 600:
            raise FilterConfigError(f"{path}.http_status", "must be in [200, 600)")
        return AbortSpec(abort.http_status, None, percent)
    if which == "grpc_status":
        return AbortSpec(None, abort.grpc_status, percent)
    if which == "header_abort":
        return AbortSpec(None, None, percent)
    raise FilterConfigError(path, "an abort needs http_status, grpc_status or header_abort")


class ActiveFaults:
    """Faults in flight through one filter (Envoy's active_faults gauge). As in
    Envoy the limit is checked, not reserved, so it is a soft one."""

    def __init__(self) -> None:
        self.count = 0

    def __repr__(self) -> str:
        return f"<ActiveFaults {self.count}>"

    def hold(self, limit: int | None) -> FaultHold | None:
        if limit is not None and self.count >= limit:
            return None
        self.count += 1
        return FaultHold(self)


class FaultHold:
    """One request's slot; releasing twice is harmless, so the shell's
    `finish` and the end of a delay can both do it."""

    def __init__(self, faults: ActiveFaults) -> None:
        self._faults: ActiveFaults | None = faults

    def release(self) -> None:
        if self._faults is not None:
            self._faults.count -= 1
            self._faults = None


class FaultFilter:
    """The fault filter in a chain: its own policy (None: it acts only where a
    route configures it), the routes' policies, and the count of active faults
    that all of them share (Envoy keeps one gauge per filter)."""

    def __init__(self, name: str, policy: FaultPolicy | None) -> None:
        self.name = name
        self.policies = RouteOverrides(name, policy, _compile_override)
        self.active = ActiveFaults()

    def __repr__(self) -> str:
        return f"<FaultFilter {self.name} {self.policies.base!r} active={self.active.count}>"

    def decode(self, ex: Exchange, rng: Random) -> Step:
        policy = self.policies.resolve(ex.route_configs)
        if policy is None:
            return PROCEED
        index = ex.index()
        if not policy.applies(ex.request, index, ex.cluster):
            return PROCEED
        delay = policy.delay_for(index, rng)
        if delay:
            hold = self._hold(ex, policy)
            if hold is not None:
                ex.release_after_pause = hold.release
                return Delay(delay)
        return self._abort(ex, policy, rng, held=False)

    def prepare(self, route_configs: FilterConfigs) -> None:
        self.policies.resolve(route_configs)

    def idle(self, route_configs: FilterConfigs) -> bool:
        policy = self.policies.resolve(route_configs)
        return policy is None or (policy.delay is None and policy.abort is None)

    def resume(self, ex: Exchange, rng: Random) -> Step:
        """After the delay: Envoy decides the abort now, and a delay that is
        not followed by one stops counting as an active fault."""
        policy = self.policies.resolve(ex.route_configs)
        release, ex.release_after_pause = ex.release_after_pause, None
        assert policy is not None and release is not None  # only a policy delays, and holds
        step = self._abort(ex, policy, rng, held=True)
        if isinstance(step, Proceed):
            release()
        return step

    def _abort(self, ex: Exchange, policy: FaultPolicy, rng: Random, held: bool) -> Step:
        abort = policy.abort_for(ex.index(), rng)
        if abort is None or (not held and self._hold(ex, policy) is None):
            return PROCEED
        status, grpc_status = abort
        return abort_reply(ex, status, grpc_status)

    def _hold(self, ex: Exchange, policy: FaultPolicy) -> FaultHold | None:
        hold = self.active.hold(policy.max_active)
        if hold is not None:
            ex.finishers.append(hold.release)
        return hold


def _compile_override(msg: Message, path: str) -> FaultPolicy | None:
    return compile_fault(expect(msg, fault_pb2.HTTPFault, path), path)


def abort_reply(ex: Exchange, status: int, grpc_status: int | None) -> LocalReply:
    return local_reply(
        ex, status, ABORT_MESSAGE, flag="FI", details="fault_filter_abort", grpc_status=grpc_status
    )
