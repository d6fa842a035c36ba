"""The CORS filter (envoy.filters.http.cors): preflights answered, the
response of an allowed cross-origin request marked as shareable.

The filter itself takes no config; the policy comes from a route's (or virtual
host's) `typed_per_filter_config`, as `envoy.extensions.filters.http.cors.v3.CorsPolicy`
(or the identical `envoy.config.route.v3.CorsPolicy`). A route without one is
left alone.

As Envoy does:
- an Origin an allow_origin_string_match entry matches (or an entry that
  matches "*") is echoed back in Access-Control-Allow-Origin, never "*";
- a preflight (OPTIONS with Origin and Access-Control-Request-Method) from an
  allowed origin is answered 200 by the proxy; one from another origin goes
  upstream, unless forward_not_matching_preflights is false (then the proxy
  answers it, without Access-Control-Allow-Origin);
- every response to an allowed origin, the preflight's included, gets
  Access-Control-Allow-Origin, -Allow-Credentials and -Expose-Headers set;
- a response to an origin not allowed gets nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from random import Random
from typing import Any

from google.protobuf.message import Message

from pilotfish.proxy.filters.base import (
    PROCEED,
    Exchange,
    LocalReply,
    ResponseHeaders,
    Step,
    set_header,
)
from pilotfish.proxy.filters.errors import FilterConfigError
from pilotfish.proxy.filters.overrides import RouteOverrides
from pilotfish.proxy.filters.percent import ALWAYS, NEVER, Percent, runtime_percent
from pilotfish.proxy.proto_fields import unsupported
from pilotfish.proxy.routing.errors import RouteConfigError
from pilotfish.proxy.routing.match import ValueTest, compile_string_matcher
from pilotfish.proxy.routing.per_filter import FilterConfigs

ALLOW_ORIGIN = b"access-control-allow-origin"
ALLOW_CREDENTIALS = b"access-control-allow-credentials"
ALLOW_METHODS = b"access-control-allow-methods"
ALLOW_HEADERS = b"access-control-allow-headers"
EXPOSE_HEADERS = b"access-control-expose-headers"
MAX_AGE = b"access-control-max-age"
ALLOW_PRIVATE_NETWORK = b"access-control-allow-private-network"
REQUEST_METHOD = b"access-control-request-method"
REQUEST_HEADERS = b"access-control-request-headers"
REQUEST_PRIVATE_NETWORK = b"access-control-request-private-network"

POLICY_TYPES = frozenset(
    {"envoy.extensions.filters.http.cors.v3.CorsPolicy", "envoy.config.route.v3.CorsPolicy"}
)
SUPPORTED = frozenset(
    {
        "allow_origin_string_match",
        "allow_methods",
        "allow_headers",
        "expose_headers",
        "max_age",
        "allow_credentials",
        "filter_enabled",
        "shadow_enabled",
        "allow_private_network_access",
        "forward_not_matching_preflights",
    }
)


@dataclass(frozen=True, slots=True, eq=False)
class CorsPolicy:
    """A CorsPolicy compiled. Empty byte strings mean "not configured"."""

    origins: tuple[ValueTest, ...] = ()
    allow_methods: bytes = b""
    allow_headers: bytes = b""
    expose_headers: bytes = b""
    max_age: bytes = b""
    allow_credentials: bool = False
    allow_private_network: bool = False
    forward_not_matching_preflights: bool = True
    enabled: Percent = ALWAYS
    shadow: Percent = NEVER  # evaluate but never act: pilotfish keeps no CORS stats

    def __repr__(self) -> str:
        return f"CorsPolicy({len(self.origins)} origins, enabled={self.enabled})"

    def origin_allowed(self, origin: bytes) -> bool:
        return any(test(b"*") or test(origin) for test in self.origins)

    def add_response_headers(self, origin: bytes, headers: ResponseHeaders) -> None:
        set_header(headers, ALLOW_ORIGIN, origin)
        if self.allow_credentials:
            set_header(headers, ALLOW_CREDENTIALS, b"true")
        if self.expose_headers:
            set_header(headers, EXPOSE_HEADERS, self.expose_headers)

    def preflight(self, origin: bytes | None, index: dict[bytes, bytes]) -> LocalReply:
        """The proxy's answer to a preflight; origin None when it was not allowed."""
        headers: list[tuple[bytes, bytes]] = []
        if origin is not None:
            headers.append((ALLOW_ORIGIN, origin))
        if self.allow_credentials:
            headers.append((ALLOW_CREDENTIALS, b"true"))
        if self.allow_methods:
            # "*" echoes what was asked for, so it also works with credentials,
            # which make browsers read "*" literally.
            echo = self.allow_methods == b"*"
            methods = index.get(REQUEST_METHOD, b"") if echo else self.allow_methods
            headers.append((ALLOW_METHODS, methods))
        if self.allow_headers:
            echo = self.allow_headers == b"*"
            allowed = index.get(REQUEST_HEADERS, b"") if echo else self.allow_headers
            headers.append((ALLOW_HEADERS, allowed))
        if self.max_age:
            headers.append((MAX_AGE, self.max_age))
        if self.allow_private_network and index.get(REQUEST_PRIVATE_NETWORK) == b"true":
            headers.append((ALLOW_PRIVATE_NETWORK, b"true"))
        return LocalReply(200, tuple(headers), b"", "", "cors_response")


def compile_cors_policy(policy: Any, path: str) -> CorsPolicy:
    bad = unsupported(policy, SUPPORTED)
    if bad:
        raise FilterConfigError(f"{path}.{bad[0]}", "not supported by pilotfish")
    try:
        origins = tuple(
            compile_string_matcher(m, f"{path}.allow_origin_string_match[{i}]")
            for i, m in enumerate(policy.allow_origin_string_match)
        )
    except RouteConfigError as e:
        raise FilterConfigError(e.path, e.reason) from None
    return CorsPolicy(
        origins=origins,
        allow_methods=policy.allow_methods.encode(),
        allow_headers=policy.allow_headers.encode(),
        expose_headers=policy.expose_headers.encode(),
        max_age=policy.max_age.encode(),
        allow_credentials=policy.allow_credentials.value,
        allow_private_network=policy.allow_private_network_access.value,
        forward_not_matching_preflights=(
            policy.forward_not_matching_preflights.value
            if policy.HasField("forward_not_matching_preflights")
            else True
        ),
        enabled=runtime_percent(policy, "filter_enabled", ALWAYS, path),
        shadow=runtime_percent(policy, "shadow_enabled", NEVER, path),
    )


class CorsFilter:
    """The CORS filter in a chain: it has no policy of its own, only the routes'."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.policies: RouteOverrides[CorsPolicy | None] = RouteOverrides(
            name, None, _compile_override
        )

    def __repr__(self) -> str:
        return f"<CorsFilter {self.name}>"

    def decode(self, ex: Exchange, rng: Random) -> Step:
        policy = self.policies.resolve(ex.route_configs)
        if policy is None or not policy.enabled.sample(rng):
            return PROCEED
        index = ex.index()
        origin = index.get(b"origin")
        if not origin:
            return PROCEED
        allowed = policy.origin_allowed(origin)
        if allowed:
            ex.encoders.append(partial(policy.add_response_headers, origin))
        if ex.request.method != b"OPTIONS" or not index.get(REQUEST_METHOD):
            return PROCEED
        if not allowed and policy.forward_not_matching_preflights:
            return PROCEED
        return policy.preflight(origin if allowed else None, index)

    def prepare(self, route_configs: FilterConfigs) -> None:
        self.policies.resolve(route_configs)

    def idle(self, route_configs: FilterConfigs) -> bool:
        return self.policies.resolve(route_configs) is None

    def resume(self, ex: Exchange, rng: Random) -> Step:
        raise AssertionError("the CORS filter never pauses")


def _compile_override(msg: Message, path: str) -> CorsPolicy | None:
    if msg.DESCRIPTOR.full_name not in POLICY_TYPES:
        expected = " or ".join(sorted(POLICY_TYPES))
        raise FilterConfigError(path, f"expected {expected}, got {msg.DESCRIPTOR.full_name}")
    return compile_cors_policy(msg, path)
