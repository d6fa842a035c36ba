"""The local rate limit filter (envoy.filters.http.local_ratelimit): one token
bucket per config, shared by every request that config applies to.

The bucket behaves as Envoy's TokenBucket documents: it starts full
(max_tokens), gains tokens_per_fill at the end of each fill_interval (never
above max_tokens), and each request takes one token. Fills are counted from the
injected clock when the bucket is read, not by a timer, which gives the same
arithmetic with no task to run.

Per request, as Envoy's filter does: filter_enabled is drawn first (unset: 0%,
so an unconfigured filter does nothing), then a token is taken; a request
without one is answered `status` (429 by default, flag RL) if filter_enforced
is drawn (unset: 0%), or else goes upstream with
request_headers_to_add_when_not_enforced. With enable_x_ratelimit_headers set
to DRAFT_VERSION_03, every response of a request that took part carries
x-ratelimit-limit, -remaining and -reset.

Descriptors (rate limits keyed on request attributes) are not implemented: a
config that sets them is rejected, so no request is ever limited by the wrong
bucket.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from random import Random
from typing import Any

from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from google.protobuf.message import Message

from pilotfish.proxy.filters.base import (
    PROCEED,
    Exchange,
    ResponseHeaders,
    Step,
    local_reply,
)
from pilotfish.proxy.filters.errors import FilterConfigError
from pilotfish.proxy.filters.overrides import RouteOverrides, expect
from pilotfish.proxy.filters.percent import NEVER, Percent, runtime_percent
from pilotfish.proxy.proto_fields import unsupported
from pilotfish.proxy.routing.errors import RouteConfigError
from pilotfish.proxy.routing.headers import NO_HEADERS, HeaderMutation, compile_level, merge_levels
from pilotfish.proxy.routing.per_filter import FilterConfigs

Clock = Callable[[], float]  # seconds, monotonic (time.monotonic, loop.time)

LIMITED_MESSAGE = "local_rate_limited"
DEFAULT_STATUS = 429
MIN_FILL_INTERVAL_NS = 50_000_000  # Envoy refuses faster fill timers
RESOURCE_EXHAUSTED = 8
X_RATELIMIT_DRAFT_03 = 1  # envoy.extensions.common.ratelimit.v3.XRateLimitHeadersRFCVersion
LIMIT_HEADER = b"x-ratelimit-limit"
REMAINING_HEADER = b"x-ratelimit-remaining"
RESET_HEADER = b"x-ratelimit-reset"

SUPPORTED = frozenset(
    {
        "stat_prefix",
        "status.code",
        "token_bucket",
        "filter_enabled",
        "filter_enforced",
        "request_headers_to_add_when_not_enforced",
        "response_headers_to_add",
        "enable_x_ratelimit_headers",
        "rate_limited_as_resource_exhausted",
        "always_consume_default_token_bucket",  # only matters with descriptors
        "max_dynamic_descriptors",  # likewise
    }
)
_NOT_IMPLEMENTED = {
    "descriptors": "rate limit descriptors are not implemented by pilotfish; "
    "only the token_bucket (descriptor-less) mode is",
    "rate_limits": "rate_limits (descriptor sources) are not implemented by pilotfish",
    "local_rate_limit_per_downstream_connection": "per-connection buckets are not implemented "
    "by pilotfish; buckets are per proxy",
}


class TokenBucket:
    """Mutable, shared by concurrent requests; nothing awaits between a read
    and a take, so the event loop needs no lock."""

    def __init__(self, max_tokens: int, tokens_per_fill: int, interval_ns: int, clock: Clock):
        self.max_tokens = max_tokens
        self.tokens_per_fill = tokens_per_fill
        self.interval_ns = interval_ns
        self._clock = clock
        self.tokens = max_tokens
        self._filled_at = self._now()

    def __repr__(self) -> str:
        return f"<TokenBucket {self.remaining()}/{self.max_tokens} +{self.tokens_per_fill}>"

    def take(self) -> bool:
        self._fill()
        if self.tokens <= 0:
            return False
        self.tokens -= 1
        return True

    def remaining(self) -> int:
        self._fill()
        return self.tokens

    def reset_seconds(self) -> int:
        """Whole seconds, rounded up, until the next fill."""
        self._fill()
        left_ns = self._filled_at + self.interval_ns - self._now()
        return math.ceil(left_ns / 1e9)

    def _fill(self) -> None:
        fills = (self._now() - self._filled_at) // self.interval_ns
        if fills > 0:
            self.tokens = min(self.max_tokens, self.tokens + fills * self.tokens_per_fill)
            self._filled_at += fills * self.interval_ns

    def _now(self) -> int:
        # Integer nanoseconds, so that fill boundaries do not drift with float error.
        return round(self._clock() * 1e9)


@dataclass(frozen=True, slots=True, eq=False)
class LocalRateLimit:
    """A LocalRateLimit compiled; bucket None: no limit (a filter-level config
    may leave the bucket to its routes)."""

    bucket: TokenBucket | None
    enabled: Percent = NEVER
    enforced: Percent = NEVER
    status: int = DEFAULT_STATUS
    response_headers: HeaderMutation = NO_HEADERS
    request_headers_when_not_enforced: HeaderMutation = NO_HEADERS
    x_ratelimit_headers: bool = False
    grpc_status: int | None = None  # RESOURCE_EXHAUSTED if rate_limited_as_resource_exhausted

    def __repr__(self) -> str:
        return f"LocalRateLimit({self.bucket!r}, enabled={self.enabled}, enforced={self.enforced})"

    def add_x_ratelimit(self, headers: ResponseHeaders) -> None:
        """Read when the response leaves, as Envoy reads its bucket then."""
        assert self.bucket is not None
        headers.append((LIMIT_HEADER, b"%d" % self.bucket.max_tokens))
        headers.append((REMAINING_HEADER, b"%d" % self.bucket.remaining()))
        headers.append((RESET_HEADER, b"%d" % self.bucket.reset_seconds()))


def compile_local_rate_limit(
    config: local_rate_limit_pb2.LocalRateLimit, path: str, clock: Clock, per_route: bool = False
) -> LocalRateLimit:
    _check_fields(config, path)
    if not config.stat_prefix:
        raise FilterConfigError(f"{path}.stat_prefix", "is required")
    if per_route and not config.HasField("token_bucket"):
        # As Envoy: a route's config is there to limit, so it must say how.
        raise FilterConfigError(f"{path}.token_bucket", "is required in a per-route config")
    bucket = None
    if config.HasField("token_bucket"):
        bucket = _bucket(config.token_bucket, f"{path}.token_bucket", clock)
    code = config.status.code
    return LocalRateLimit(
        bucket=bucket,
        enabled=runtime_percent(config, "filter_enabled", NEVER, path),
        enforced=runtime_percent(config, "filter_enforced", NEVER, path),
        status=code if code >= 400 else DEFAULT_STATUS,  # Envoy's toErrorCode
        response_headers=_headers(config.response_headers_to_add, path, "response"),
        request_headers_when_not_enforced=_headers(
            config.request_headers_to_add_when_not_enforced, path, "request"
        ),
        x_ratelimit_headers=config.enable_x_ratelimit_headers == X_RATELIMIT_DRAFT_03,
        grpc_status=RESOURCE_EXHAUSTED if config.rate_limited_as_resource_exhausted else None,
    )


def _check_fields(config: local_rate_limit_pb2.LocalRateLimit, path: str) -> None:
    for name, reason in _NOT_IMPLEMENTED.items():
        value = getattr(config, name)
        if value is True or (not isinstance(value, bool) and len(value) > 0):
            raise FilterConfigError(f"{path}.{name}", reason)
    bad = unsupported(config, SUPPORTED)
    if bad:
        raise FilterConfigError(f"{path}.{bad[0]}", "not supported by pilotfish")


def _bucket(bucket: Any, path: str, clock: Clock) -> TokenBucket:
    if bucket.max_tokens <= 0:
        raise FilterConfigError(f"{path}.max_tokens", "must be greater than 0")
    per_fill = bucket.tokens_per_fill.value if bucket.HasField("tokens_per_fill") else 1
    if per_fill <= 0:
        raise FilterConfigError(f"{path}.tokens_per_fill", "must be greater than 0")
    interval_ns = bucket.fill_interval.seconds * 1_000_000_000 + bucket.fill_interval.nanos
    if interval_ns < MIN_FILL_INTERVAL_NS:
        raise FilterConfigError(f"{path}.fill_interval", "must be at least 50ms, as in Envoy")
    return TokenBucket(bucket.max_tokens, per_fill, interval_ns, clock)


def _headers(options: Any, path: str, kind: str) -> HeaderMutation:
    try:
        return merge_levels([compile_level(options, (), path, kind)])
    except RouteConfigError as e:
        # compile_level names the field after the route's; give it its name here.
        field = f".{kind}_headers_to_add["
        real = ".request_headers_to_add_when_not_enforced[" if kind == "request" else field
        raise FilterConfigError(e.path.replace(field, real), e.reason) from None


class LocalRateLimitFilter:
    """The local rate limit filter in a chain: its own config and bucket, and
    the routes' configs, each with its own bucket."""

    def __init__(self, name: str, limit: LocalRateLimit, clock: Clock) -> None:
        self.name = name
        self.limits = RouteOverrides(name, limit, partial(_compile_override, clock=clock))

    def __repr__(self) -> str:
        return f"<LocalRateLimitFilter {self.name} {self.limits.base!r}>"

    def idle(self, route_configs: FilterConfigs) -> bool:
        return self.limits.resolve(route_configs).bucket is None

    def decode(self, ex: Exchange, rng: Random) -> Step:
        limit = self.limits.resolve(ex.route_configs)
        if not limit.enabled.sample(rng):
            return PROCEED
        if limit.bucket is None:
            return PROCEED
        allowed = limit.bucket.take()
        if limit.x_ratelimit_headers:
            ex.encoders.append(limit.add_x_ratelimit)
        if allowed:
            return PROCEED
        if not limit.enforced.sample(rng):
            if limit.request_headers_when_not_enforced:
                ex.upstream_headers.append(limit.request_headers_when_not_enforced)
            return PROCEED
        return local_reply(
            ex,
            limit.status,
            LIMITED_MESSAGE,
            flag="RL",
            details="local_rate_limited",
            grpc_status=limit.grpc_status,
            extra=limit.response_headers,
        )

    def prepare(self, route_configs: FilterConfigs) -> None:
        self.limits.resolve(route_configs)

    def resume(self, ex: Exchange, rng: Random) -> Step:
        raise AssertionError("the local rate limit filter never pauses")


def _compile_override(msg: Message, path: str, clock: Clock) -> LocalRateLimit:
    config = expect(msg, local_rate_limit_pb2.LocalRateLimit, path)
    return compile_local_rate_limit(config, path, clock, per_route=True)
