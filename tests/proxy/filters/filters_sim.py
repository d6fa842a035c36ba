"""Drive the filter chain as the proxy's shell does, without sockets or sleeps."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from pilotfish.proxy.filters import (
    Delay,
    FilterChain,
    LocalReply,
    compile_http_filters,
)
from pilotfish.proxy.filters.base import Proceed
from pilotfish.proxy.routing.per_filter import decode_filter_configs
from pilotfish.proxy.routing.request import Request

T = "type.googleapis.com/envoy.extensions.filters.http."
FAULT_T = T + "fault.v3.HTTPFault"
CORS_T = T + "cors.v3.Cors"
CORS_POLICY_T = T + "cors.v3.CorsPolicy"
RL_T = T + "local_ratelimit.v3.LocalRateLimit"
ROUTER_T = T + "router.v3.Router"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_T}}


def fault(**config: Any) -> fault_pb2.HTTPFault:
    return json_format.ParseDict(config, fault_pb2.HTTPFault())


def local_rate_limit(**config: Any) -> local_rate_limit_pb2.LocalRateLimit:
    return json_format.ParseDict(config, local_rate_limit_pb2.LocalRateLimit())


def http_filters(*filters: dict[str, Any]) -> list[hcm_pb2.HttpFilter]:
    return [json_format.ParseDict(f, hcm_pb2.HttpFilter()) for f in filters]


def chain(*filters: dict[str, Any], clock: Any = None) -> FilterChain:
    protos = http_filters(*filters, ROUTER)
    return compile_http_filters(protos, clock) if clock else compile_http_filters(protos)


def per_route(**configs: dict[str, Any]) -> Any:
    """typed_per_filter_config as the routing code hands it over: decoded protos by name."""
    anys = {}
    for name, config in configs.items():
        holder = json_format.ParseDict({"typed_per_filter_config": {name: config}}, _route_holder())
        anys[name] = holder.typed_per_filter_config[name]
    return decode_filter_configs(anys, "")


def _route_holder() -> Any:
    return route_components_pb2.Route()


def request(method: str = "GET", path: str = "/", headers: dict[str, str] | None = None) -> Request:
    pairs = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request(method=method.encode(), path=path.encode(), authority=b"svc", headers=pairs)


@dataclass
class Outcome:
    """What the caller sees: the response status (0: forwarded upstream), headers
    the filters put on it, the total delay, the flags."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    delay: float
    flags: list[str]
    reply: LocalReply | None = None
    upstream_edits: list[Any] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name.encode()]
        return values[0].decode() if values else None


def run(
    c: FilterChain,
    req: Request,
    rng: random.Random | None = None,
    configs: Any = None,
    cluster: str = "backend",
    upstream_headers: list[tuple[bytes, bytes]] | None = None,
    finish: bool = True,
) -> Outcome:
    rng = rng or random.Random(0)
    ex = c.start(req, configs or {}, cluster)
    step = c.decode(ex, rng)
    delay = 0.0
    while isinstance(step, Delay):
        delay += step.seconds
        step = c.decode(ex, rng)
    if isinstance(step, Proceed):
        headers = list(upstream_headers or [])
        status, body, reply = 0, b"", None
    else:
        headers, status, body, reply = list(step.headers), step.status, step.body, step
    c.encode(ex, headers)
    if finish:
        c.finish(ex)
    return Outcome(status, headers, body, delay, ex.flags, reply, ex.upstream_headers)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# An RBACPerRoute and the RBAC config it may carry (GET only), for the
# RBAC filter's simulation and its end-to-end test.
RBAC_PER_ROUTE_T = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
ALLOW_GET = {
    "rules": {
        "action": "ALLOW",
        "policies": {
            "get-only": {
                "permissions": [{"header": {"name": ":method", "exact_match": "GET"}}],
                "principals": [{"any": True}],
            }
        },
    }
}
