"""An HttpConnectionManager's `http_filters`, compiled into the chain a
request goes through before the router forwards it.

    chain = compile_http_filters(hcm.http_filters)     # FilterConfigError -> NACK
    chain.prepare(route.filter_configs)                # per route, at config time

and then, per request, `start` / `decode` / `encode` / `finish` (see `base`).

As Envoy does, a filter is known by its typed_config's type, its name being
the key its per-route configs go by; a filter without typed_config is known
by its well-known name. The router must come last, and is the shell's
forwarding: it is not in `filters`. An unknown filter fails the compile,
naming it, unless it is marked `is_optional`, in which case it is left out.
An empty list means the router alone, as in Envoy.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from random import Random
from typing import Any, Protocol

from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from pilotfish.proxy import xds_types
from pilotfish.proxy.filters.base import (
    NO_CONNECTION,
    PROCEED,
    Check,
    Connection,
    Delay,
    Exchange,
    Proceed,
    ResponseHeaders,
    Step,
)
from pilotfish.proxy.filters.cors import CorsFilter
from pilotfish.proxy.filters.errors import FilterConfigError
from pilotfish.proxy.filters.fault import FaultFilter, compile_fault
from pilotfish.proxy.filters.ratelimit import (
    Clock,
    LocalRateLimitFilter,
    compile_local_rate_limit,
)
from pilotfish.proxy.proto_fields import unsupported
from pilotfish.proxy.routing.per_filter import EMPTY, FilterConfigs
from pilotfish.proxy.routing.request import RequestView

FAULT = "envoy.filters.http.fault"
CORS = "envoy.filters.http.cors"
LOCAL_RATELIMIT = "envoy.filters.http.local_ratelimit"
RBAC = "envoy.filters.http.rbac"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
JWT_AUTHN = "envoy.filters.http.jwt_authn"
ROUTER = "envoy.filters.http.router"
# Router fields that change nothing pilotfish does (stats and tracing labels).
ROUTER_FIELDS = frozenset({"dynamic_stats", "start_child_span"})


class HttpFilter(Protocol):
    """A decoder filter: `decode` runs once per request, `resume` after the
    `Delay` it returned has elapsed. Response work goes in `Exchange.encoders`."""

    name: str

    def decode(self, ex: Exchange, rng: Random) -> Step: ...

    def resume(self, ex: Exchange, rng: Random) -> Step: ...

    def prepare(self, route_configs: FilterConfigs) -> None:
        """Compile this filter's per-route config, if `route_configs` has one."""

    def idle(self, route_configs: FilterConfigs) -> bool:
        """Whether the filter does nothing at all for requests on such a route."""


# The config message each supported filter takes, and how to build it from one.
_Builder = Callable[[str, Message, str, Clock], HttpFilter]


def _fault(name: str, msg: Message, path: str, clock: Clock) -> HttpFilter:
    assert isinstance(msg, fault_pb2.HTTPFault)
    return FaultFilter(name, compile_fault(msg, path))


def _cors(name: str, msg: Message, path: str, clock: Clock) -> HttpFilter:
    return CorsFilter(name)  # cors.v3.Cors has no fields: policies are per route


def _local_ratelimit(name: str, msg: Message, path: str, clock: Clock) -> HttpFilter:
    assert isinstance(msg, local_rate_limit_pb2.LocalRateLimit)
    return LocalRateLimitFilter(name, compile_local_rate_limit(msg, path, clock), clock)


# The authorization filters' code and config types are imported with the
# first config that has them (xds_types.ON_DEMAND): most sidecars have none.
def _rbac(name: str, msg: Message, path: str, clock: Clock) -> HttpFilter:
    from envoy.extensions.filters.http.rbac.v3 import rbac_pb2

    from pilotfish.proxy.filters.rbac import compile_rbac

    assert isinstance(msg, rbac_pb2.RBAC)
    return compile_rbac(name, msg, path)


def _ext_authz(name: str, msg: Message, path: str, clock: Clock) -> HttpFilter:
    from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2

    from pilotfish.proxy.filters.ext_authz import compile_ext_authz

    assert isinstance(msg, ext_authz_pb2.ExtAuthz)
    return compile_ext_authz(name, msg, path)


def _jwt_authn(name: str, msg: Message, path: str, clock: Clock) -> HttpFilter:
    from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_authn_pb2

    from pilotfish.proxy.filters.jwt_authn import JwtAuthnFilter, compile_jwt_authn

    assert isinstance(msg, jwt_authn_pb2.JwtAuthentication)
    return JwtAuthnFilter(name, compile_jwt_authn(msg, path))


_KINDS: dict[str, _Builder | None] = {  # config type -> builder (None: the router)
    xds_types.EXT_AUTHZ_CONFIG: _ext_authz,
    xds_types.HTTP_RBAC_CONFIG: _rbac,
    fault_pb2.HTTPFault.DESCRIPTOR.full_name: _fault,
    cors_pb2.Cors.DESCRIPTOR.full_name: _cors,
    local_rate_limit_pb2.LocalRateLimit.DESCRIPTOR.full_name: _local_ratelimit,
    xds_types.JWT_AUTHN_CONFIG: _jwt_authn,
    router_pb2.Router.DESCRIPTOR.full_name: None,
}
_WELL_KNOWN = {
    FAULT: fault_pb2.HTTPFault.DESCRIPTOR.full_name,
    CORS: cors_pb2.Cors.DESCRIPTOR.full_name,
    LOCAL_RATELIMIT: local_rate_limit_pb2.LocalRateLimit.DESCRIPTOR.full_name,
    RBAC: xds_types.HTTP_RBAC_CONFIG,
    EXT_AUTHZ: xds_types.EXT_AUTHZ_CONFIG,
    JWT_AUTHN: xds_types.JWT_AUTHN_CONFIG,
    ROUTER: router_pb2.Router.DESCRIPTOR.full_name,
}
SUPPORTED_NAMES = tuple(_WELL_KNOWN)


@dataclass(frozen=True, slots=True, eq=False)
class FilterChain:
    """The decoder filters in order, the router left out (it is the shell's
    forwarding step). Holds the filters' shared state: buckets, fault counts."""

    filters: tuple[HttpFilter, ...] = ()
    idle_by_default: bool = field(init=False)  # idle on a route without per-filter configs

    def __post_init__(self) -> None:
        object.__setattr__(self, "idle_by_default", all(f.idle(EMPTY) for f in self.filters))

    def __repr__(self) -> str:
        return f"FilterChain({', '.join(f.name for f in self.filters)} -> router)"

    @property
    def empty(self) -> bool:
        """Nothing but the router: the shell may skip the chain altogether."""
        return not self.filters

    def idle(self, route_configs: FilterConfigs) -> bool:
        """No filter has anything to do on such a route (a sidecar's CORS and
        fault filters, where no VirtualService asks for them): the shell may
        skip the chain, as for `empty`."""
        if route_configs is EMPTY:
            return self.idle_by_default
        return all(f.idle(route_configs) for f in self.filters)

    def prepare(self, route_configs: FilterConfigs) -> None:
        """Compile a route's per-filter configs now, so that a bad one fails
        the configuration (a NACK) rather than a request."""
        for f in self.filters:
            f.prepare(route_configs)

    def start(
        self,
        request: RequestView,
        route_configs: FilterConfigs = EMPTY,
        cluster: str = "",
        connection: Connection = NO_CONNECTION,
        counters: Counter[str] | None = None,
    ) -> Exchange:
        """route_configs: the chosen target's (or route's) filter_configs;
        cluster: the chosen cluster, "" for redirects and direct responses;
        counters: the HTTP connection manager's filter counters."""
        if counters is None:
            return Exchange(request, route_configs, cluster, connection=connection)
        return Exchange(request, route_configs, cluster, connection=connection, counters=counters)

    def decode(self, ex: Exchange, rng: Random) -> Step:
        """Run the filters from where the request stands: PROCEED (route it),
        Delay (sleep, then call again) or LocalReply (answer it, then stop)."""
        filters = self.filters
        if ex.paused:
            ex.paused = False
            step = filters[ex.position].resume(ex, rng)
            if not isinstance(step, Proceed):
                return _stopped(ex, step)
            ex.position += 1
        while ex.position < len(filters):
            step = filters[ex.position].decode(ex, rng)
            if not isinstance(step, Proceed):
                return _stopped(ex, step)
            ex.position += 1
        return PROCEED

    def encode(self, ex: Exchange, headers: ResponseHeaders) -> None:
        """Edit a response's headers (upstream or local) before they are sent.
        Last filter first, as Envoy's encoder chain runs."""
        for encoder in reversed(ex.encoders):
            encoder(headers)

    def finish(self, ex: Exchange) -> None:
        """The request is over, however it ended (answered, reset, cancelled)."""
        finishers, ex.finishers = ex.finishers, []
        for release in finishers:
            release()


def _stopped(ex: Exchange, step: Step) -> Step:
    if isinstance(step, Delay):
        ex.paused = True
        ex.flags.append("DI")
    elif isinstance(step, Check):
        ex.paused = True
    elif not isinstance(step, Proceed) and step.flag:
        ex.flags.append(step.flag)
    return step


def compile_http_filters(
    http_filters: Sequence[Any], clock: Clock = time.monotonic, path: str = "http_filters"
) -> FilterChain:
    """HttpConnectionManager.http_filters (HttpFilter protos) -> FilterChain."""
    filters: list[HttpFilter] = []
    router_at = -1
    for i, proto in enumerate(http_filters):
        where = f"{path}[{i}] ({proto.name or 'unnamed'})"
        if router_at >= 0:
            raise FilterConfigError(
                f"{path}[{router_at}]",
                f"the router must be the last filter, but {proto.name!r} follows it",
            )
        built = _compile_one(proto, where, clock)
        if isinstance(built, _Router):
            router_at = i
        elif built is not None:
            filters.append(built)
    if http_filters and router_at < 0:
        last = http_filters[-1].name
        raise FilterConfigError(
            path, f"the last filter must be the router ({ROUTER}), not {last!r}"
        )
    return FilterChain(tuple(filters))


class _Router:
    """The router's place in the list; the shell does its work."""


_ROUTER = _Router()
_HTTP_FILTER_FIELDS = frozenset({"name", "typed_config", "is_optional"})


def _compile_one(proto: Any, where: str, clock: Clock) -> HttpFilter | _Router | None:
    if not proto.name:
        raise FilterConfigError(where, "a filter needs a name")
    bad = unsupported(proto, _HTTP_FILTER_FIELDS)
    if bad:
        raise FilterConfigError(f"{where}.{bad[0]}", "not supported by pilotfish")
    has_config = proto.HasField("typed_config")
    type_name = proto.typed_config.type_url.rpartition("/")[2] if has_config else ""
    kind = type_name or _WELL_KNOWN.get(proto.name, "")
    if kind not in _KINDS:
        if proto.is_optional:
            return None
        shown = f"type {type_name}" if type_name else "no typed_config"
        raise FilterConfigError(
            where,
            f"HTTP filter {proto.name!r} ({shown}) is not supported by pilotfish "
            f"(supported: {', '.join(SUPPORTED_NAMES)}); mark it is_optional to skip it",
        )
    build = _KINDS[kind]
    xds_types.register(kind)
    msg = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(kind))()
    if has_config and not proto.typed_config.Unpack(msg):
        raise FilterConfigError(f"{where}.typed_config", f"cannot decode {type_name}")
    if build is None:
        _check_router(msg, f"{where}.typed_config")
        return _ROUTER
    return build(proto.name, msg, f"{where}.typed_config", clock)


def _check_router(msg: Message, path: str) -> None:
    bad = unsupported(msg, ROUTER_FIELDS)
    if bad:
        raise FilterConfigError(f"{path}.{bad[0]}", "not supported by pilotfish")
