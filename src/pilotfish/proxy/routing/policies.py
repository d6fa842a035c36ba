"""Retry, mirror and hash policies of a route, compiled for the shell."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntFlag
from typing import Any

from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2

from pilotfish.proxy.proto_fields import seconds
from pilotfish.proxy.routing.errors import RouteConfigError
from pilotfish.proxy.routing.regex import compile_re2, compile_substitution
from pilotfish.proxy.routing.request import (
    RequestView,
    header_getter,
    index_headers,
    query_params,
)

HashKey = Callable[[RequestView], "bytes | None"]
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
_PREVIOUS_HOSTS_TYPE = previous_hosts_pb2.PreviousHostsPredicate.DESCRIPTOR.full_name
DENOMINATORS = (100, 10_000, 1_000_000)  # FractionalPercent.DenominatorType


class RetryOn(IntFlag):
    """Envoy's x-envoy-retry-on / retry_on conditions (HTTP, then gRPC)."""

    FIVE_XX = 1
    GATEWAY_ERROR = 2
    RESET = 4
    CONNECT_FAILURE = 8
    RETRIABLE_4XX = 16
    REFUSED_STREAM = 32
    RETRIABLE_STATUS_CODES = 64
    GRPC_CANCELLED = 128
    GRPC_DEADLINE_EXCEEDED = 256
    GRPC_RESOURCE_EXHAUSTED = 512
    GRPC_UNAVAILABLE = 1024
    GRPC_INTERNAL = 2048


RETRY_ON_NAMES = {
    "5xx": RetryOn.FIVE_XX,
    "gateway-error": RetryOn.GATEWAY_ERROR,
    "reset": RetryOn.RESET,
    "connect-failure": RetryOn.CONNECT_FAILURE,
    "retriable-4xx": RetryOn.RETRIABLE_4XX,
    "refused-stream": RetryOn.REFUSED_STREAM,
    "retriable-status-codes": RetryOn.RETRIABLE_STATUS_CODES,
    "cancelled": RetryOn.GRPC_CANCELLED,
    "deadline-exceeded": RetryOn.GRPC_DEADLINE_EXCEEDED,
    "resource-exhausted": RetryOn.GRPC_RESOURCE_EXHAUSTED,
    "unavailable": RetryOn.GRPC_UNAVAILABLE,
    "internal": RetryOn.GRPC_INTERNAL,
}
# Envoy knows these; pilotfish does not honour them yet, so it says so.
_KNOWN_UNSUPPORTED = {
    "reset-before-request",
    "envoy-ratelimited",
    "retriable-headers",
    "http3-post-connect-failure",
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Durations in seconds; per_try_timeout None when unset or 0 (no per-try limit).
    Back-off is Envoy's: fully jittered, starting at base, capped at max."""

    retry_on: RetryOn
    num_retries: int = 1
    per_try_timeout: float | None = None
    per_try_idle_timeout: float | None = None
    retriable_status_codes: frozenset[int] = frozenset()
    previous_hosts: bool = False
    host_selection_max_attempts: int = 1
    backoff_base: float = 0.025
    backoff_max: float = 0.25


def compile_retry_policy(p: Any, path: str) -> RetryPolicy:
    base, cap = 0.025, 0.25
    if p.HasField("retry_back_off"):
        base = seconds(p.retry_back_off.base_interval)
        if base <= 0:
            raise RouteConfigError(f"{path}.retry_back_off.base_interval", "must be above 0")
        cap = (
            seconds(p.retry_back_off.max_interval)
            if p.retry_back_off.HasField("max_interval")
            else 10 * base
        )
        if cap < base:
            raise RouteConfigError(
                f"{path}.retry_back_off.max_interval", "must be >= base_interval"
            )
    return RetryPolicy(
        retry_on=_retry_on(p.retry_on, f"{path}.retry_on"),
        num_retries=p.num_retries.value if p.HasField("num_retries") else 1,
        per_try_timeout=seconds(p.per_try_timeout) or None,
        per_try_idle_timeout=seconds(p.per_try_idle_timeout) or None,
        retriable_status_codes=frozenset(p.retriable_status_codes),
        previous_hosts=_previous_hosts(p.retry_host_predicate, f"{path}.retry_host_predicate"),
        host_selection_max_attempts=p.host_selection_retry_max_attempts or 1,
        backoff_base=base,
        backoff_max=cap,
    )


def _retry_on(text: str, path: str) -> RetryOn:
    flags = RetryOn(0)
    for name in (n.strip() for n in text.split(",")):
        if not name:
            continue
        flag = RETRY_ON_NAMES.get(name)
        if flag is None:
            known = "not supported by pilotfish" if name in _KNOWN_UNSUPPORTED else "unknown"
            raise RouteConfigError(path, f"retry condition {name!r} is {known}")
        flags |= flag
    return flags


def _previous_hosts(predicates: Sequence[Any], path: str) -> bool:
    for i, predicate in enumerate(predicates):
        type_name = predicate.typed_config.type_url.rpartition("/")[2]
        if predicate.name != PREVIOUS_HOSTS and type_name != _PREVIOUS_HOSTS_TYPE:
            name = predicate.name or type_name
            raise RouteConfigError(
                f"{path}[{i}]", f"retry host predicate {name!r} is not supported"
            )
    return bool(predicates)


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    """request_mirror_policies entry: mirror when `fires(rand)`; the copy's
    authority gets `-shadow` (see `shadow_authority`) unless disabled."""

    cluster: str
    numerator: int = 100
    denominator: int = 100
    shadow_suffix: bool = True

    def fires(self, rand: int) -> bool:
        return rand % self.denominator < self.numerator


def compile_mirror_policy(p: Any, path: str) -> MirrorPolicy:
    if not p.cluster:
        raise RouteConfigError(f"{path}.cluster", "a mirror policy needs a cluster")
    numerator, denominator = (
        fraction(p.runtime_fraction) if p.HasField("runtime_fraction") else (100, 100)
    )
    return MirrorPolicy(p.cluster, numerator, denominator, not p.disable_shadow_host_suffix_append)


def fraction(runtime_fraction: Any) -> tuple[int, int]:
    """RuntimeFractionalPercent's default value (pilotfish has no runtime layer);
    above 100% is 100%, as in Envoy."""
    value = runtime_fraction.default_value
    denominator = DENOMINATORS[value.denominator]
    return min(value.numerator, denominator), denominator


def shadow_authority(authority: bytes) -> bytes:
    """Envoy's mirror host: `reviews:9080` -> `reviews-shadow:9080`."""
    colon = authority.rfind(b":")
    if colon < 0 or authority.endswith(b"]"):
        return authority + b"-shadow"
    return authority[:colon] + b"-shadow" + authority[colon:]


@dataclass(frozen=True, slots=True)
class HashCookie:
    """A cookie hash policy with a ttl: when the request lacks the cookie, Envoy
    generates one (Set-Cookie on the response) and hashes on it. The shell does that."""

    name: bytes
    ttl: float
    path: bytes


def compile_hash_policies(policies: Sequence[Any], path: str) -> HashKey | None:
    """Envoy's rules: policies in order, each may yield a key; a terminal policy
    that yields one ends the walk. Several keys are joined with NUL."""
    steps = [(_hash_step(p, f"{path}[{i}]"), p.terminal) for i, p in enumerate(policies)]
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0][0]

    def hash_key(req: RequestView) -> bytes | None:
        parts = []
        for step, terminal in steps:
            key = step(req)
            if key is not None:
                parts.append(key)
                if terminal:
                    break
        return b"\x00".join(parts) if parts else None

    return hash_key


def hash_cookie(policies: Sequence[Any]) -> HashCookie | None:
    for p in policies:
        if p.WhichOneof("policy_specifier") == "cookie" and p.cookie.HasField("ttl"):
            cookie = p.cookie
            return HashCookie(cookie.name.encode(), seconds(cookie.ttl), cookie.path.encode())
    return None


def _hash_step(p: Any, path: str) -> HashKey:
    which = p.WhichOneof("policy_specifier")
    if which == "header":
        return _header_step(p.header, f"{path}.header")
    if which == "cookie":
        return _cookie_step(p.cookie.name.encode("utf-8"))
    if which == "connection_properties":
        if not p.connection_properties.source_ip:
            return lambda req: None
        return lambda req: req.source_ip.encode("ascii")
    if which == "query_parameter":
        name = p.query_parameter.name.encode("utf-8")
        return lambda req: query_params(req.path).get(name)
    raise RouteConfigError(
        f"{path}.{which or 'policy_specifier'}", "hash policy kind not supported"
    )


def _header_step(h: Any, path: str) -> HashKey:
    get = header_getter(h.header_name.lower().encode("utf-8"))
    if not h.HasField("regex_rewrite"):
        return lambda req: get(req, index_headers(req.headers))
    regex = compile_re2(h.regex_rewrite.pattern.regex, f"{path}.regex_rewrite.pattern.regex")
    rewrite = compile_substitution(
        regex, h.regex_rewrite.substitution, f"{path}.regex_rewrite.substitution"
    )
    return lambda req: None if (v := get(req, index_headers(req.headers))) is None else rewrite(v)


def _cookie_step(name: bytes) -> HashKey:
    def cookie_value(req: RequestView) -> bytes | None:
        header = index_headers(req.headers).get(b"cookie")
        if header is None:
            return None
        for pair in header.replace(b",", b";").split(b";"):
            key, eq, value = pair.strip().partition(b"=")
            if eq and key == name:
                return value.strip(b'"')
        return None

    return cookie_value
