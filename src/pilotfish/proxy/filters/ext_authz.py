"""The external authorization filter (envoy.filters.http.ext_authz) with an
HTTP authorization service, as Envoy runs it:

- only where `filter_enabled_metadata` matches the request's dynamic
  metadata (Istio: the CUSTOM policy's shadow RBAC filter matched);
- the check request goes to `server_uri.cluster` with the original method,
  `path_prefix` + the original path, the Host, Method, Path, Content-Length
  and Authorization headers plus those `allowed_headers` match, and
  `authorization_request.headers_to_add`; no body;
- 200: allowed; the authorizer's headers that `allowed_upstream_headers`
  match are set on the request upstream, those `allowed_client_headers_on_success`
  match are added to the response;
- another status below 500: denied with the authorizer's status, body and
  the headers `allowed_client_headers` match (all but Host when unset),
  flag UAEX, details `ext_authz_denied`;
- no answer within `server_uri.timeout`, a failed connection or a 5xx: an
  error; `failure_mode_allow` lets the request through, else
  `status_on_error` (403) with no body, details `ext_authz_error`;
- counters `ext_authz.ok|denied|error|failure_mode_allowed`.

With a gRPC service (`grpc_service.envoy_grpc`), the check is
envoy.service.auth.v3.Authorization/Check with the request's attributes
(ext_authz_grpc.py); an OK status allows (its headers set or appended
upstream, removed, or added to the response), any other denies with the
denied_response's status (403 when unset), headers and body; a failed call
is an error as above.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from random import Random
from typing import Any

from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2

from pilotfish.proxy.filters.base import (
    PROCEED,
    Check,
    Exchange,
    LocalReply,
    ResponseHeaders,
    Step,
    set_header,
)
from pilotfish.proxy.filters.errors import FilterConfigError
from pilotfish.proxy.filters.ext_authz_grpc import (
    CHECK_METHOD,
    Verdict,
    check_request,
    read_response,
)
from pilotfish.proxy.filters.overrides import RouteOverrides, only_disabled
from pilotfish.proxy.filters.rbac import compile_metadata_matcher
from pilotfish.proxy.proto_fields import unsupported
from pilotfish.proxy.routing.errors import RouteConfigError
from pilotfish.proxy.routing.headers import (
    APPEND_IF_EXISTS_OR_ADD,
    OVERWRITE_IF_EXISTS_OR_ADD,
    REMOVE,
    HeaderMutation,
)
from pilotfish.proxy.routing.match import compile_string_matcher
from pilotfish.proxy.routing.per_filter import FilterConfigs

NAME = "envoy.filters.http.ext_authz"
SUPPORTED = frozenset(
    {"http_service.server_uri", "http_service.path_prefix",
     "http_service.authorization_request.headers_to_add",
     "http_service.authorization_response.allowed_upstream_headers",
     "http_service.authorization_response.allowed_client_headers",
     "http_service.authorization_response.allowed_client_headers_on_success",
     "grpc_service.envoy_grpc.cluster_name", "grpc_service.envoy_grpc.authority",
     "grpc_service.timeout",
     "failure_mode_allow", "status_on_error", "allowed_headers", "filter_enabled_metadata",
     "transport_api_version", "stat_prefix"}
)  # fmt: skip
ALWAYS_SENT = frozenset({b"host", b"authorization", b"content-length"})
NOT_TO_CLIENT = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})
NameTest = Callable[[bytes], bool]
Headers = tuple[tuple[bytes, bytes], ...]


def _names(matcher: Any, path: str) -> NameTest | None:
    """A ListStringMatcher over header names; None when unset."""
    if not matcher.patterns:
        return None
    tests = [
        compile_string_matcher(p, f"{path}.patterns[{i}]") for i, p in enumerate(matcher.patterns)
    ]
    return lambda name: any(t(name) for t in tests)


@dataclass(frozen=True, slots=True)
class GrpcService:
    cluster: str
    timeout: float
    authority: bytes


@dataclass(frozen=True, slots=True)
class HttpService:
    cluster: str
    timeout: float
    path_prefix: bytes
    headers_to_add: tuple[tuple[bytes, bytes], ...]
    to_upstream: NameTest | None
    to_client_on_deny: NameTest | None
    to_client_on_allow: NameTest | None


class ExtAuthzFilter:
    def __init__(
        self,
        name: str,
        service: HttpService | GrpcService,
        allowed_headers: NameTest | None,
        enabled: Callable[[Exchange], bool] | None,
        fail_open: bool,
        status_on_error: int,
        prefix: str,
    ) -> None:
        self.name, self.service = name, service
        self.allowed_headers, self.enabled = allowed_headers, enabled
        self.off = RouteOverrides(name, False, only_disabled(ext_authz_pb2.ExtAuthzPerRoute))
        self.fail_open, self.status_on_error = fail_open, status_on_error
        self.stat = f"ext_authz.{prefix}." if prefix else "ext_authz."

    def __repr__(self) -> str:
        return f"ExtAuthzFilter({self.name} -> {self.service.cluster})"

    def decode(self, ex: Exchange, rng: Random) -> Step:
        if self.off.resolve(ex.route_configs):
            return PROCEED
        if self.enabled is not None and not self.enabled(ex):
            return PROCEED
        service = self.service
        if isinstance(service, GrpcService):
            authority = ((b":authority", service.authority),) if service.authority else ()
            method = CHECK_METHOD.encode()
            body = check_request(ex)
            return Check(service.cluster, service.timeout, b"POST", method, authority, body, True)
        req = ex.request
        headers = [(b"host", req.authority)]
        for name, value in ex.request.headers:
            if name == b"host":
                continue
            if name in ALWAYS_SENT or (self.allowed_headers and self.allowed_headers(name)):
                headers.append((name, value))
        headers += service.headers_to_add
        path = service.path_prefix + req.path
        return Check(service.cluster, service.timeout, req.method, path, tuple(headers))

    def resume(self, ex: Exchange, rng: Random) -> Step:
        result = ex.check_result
        if isinstance(self.service, GrpcService):
            verdict = read_response(result.body) if result is not None else None
            return self._error(ex) if verdict is None else self._grpc_verdict(ex, verdict)
        if result is None or result.status >= 500:
            return self._error(ex)
        if result.status != 200:
            return self._denied(ex, result.status, result.headers, result.body)
        ex.counters[self.stat + "ok"] += 1
        self._allowed(ex, result.headers)
        return PROCEED

    def _error(self, ex: Exchange) -> Step:
        ex.counters[self.stat + "error"] += 1
        if self.fail_open:
            ex.counters[self.stat + "failure_mode_allowed"] += 1
            return PROCEED
        return LocalReply(self.status_on_error, (), b"", "UAEX", "ext_authz_error")

    def _denied(self, ex: Exchange, status: int, headers: Headers, body: bytes) -> Step:
        ex.counters[self.stat + "denied"] += 1
        service = self.service
        chosen = service.to_client_on_deny if isinstance(service, HttpService) else None
        shown = tuple(
            (n, v) for n, v in headers if n not in NOT_TO_CLIENT and (chosen is None or chosen(n))
        )
        return LocalReply(status, shown, body, "UAEX", "ext_authz_denied")

    def _grpc_verdict(self, ex: Exchange, verdict: Verdict) -> Step:
        if not verdict.allowed:
            return self._denied(ex, verdict.status, verdict.client, verdict.body)
        ex.counters[self.stat + "ok"] += 1
        ops = [(REMOVE, name, b"") for name in verdict.remove]
        ops += [
            (APPEND_IF_EXISTS_OR_ADD if append else OVERWRITE_IF_EXISTS_OR_ADD, n, v)
            for append, n, v in verdict.upstream
        ]
        if ops:
            ex.upstream_headers.append(HeaderMutation(tuple(ops)))
        if verdict.client:
            ex.encoders.append(lambda response: _set_all(response, list(verdict.client)))
        return PROCEED

    def _allowed(self, ex: Exchange, headers: Headers) -> None:
        service = self.service
        assert isinstance(service, HttpService)
        upstream, client = service.to_upstream, service.to_client_on_allow
        if upstream is not None:
            ops = tuple((OVERWRITE_IF_EXISTS_OR_ADD, n, v) for n, v in headers if upstream(n))
            if ops:
                ex.upstream_headers.append(HeaderMutation(ops))
        if client is not None:
            chosen = [(n, v) for n, v in headers if client(n) and n not in NOT_TO_CLIENT]
            if chosen:
                ex.encoders.append(lambda response: _set_all(response, chosen))

    def prepare(self, route_configs: FilterConfigs) -> None:
        self.off.resolve(route_configs)

    def idle(self, route_configs: FilterConfigs) -> bool:
        return self.off.resolve(route_configs)


def _set_all(response: ResponseHeaders, chosen: list[tuple[bytes, bytes]]) -> None:
    for name, value in chosen:
        set_header(response, name, value)


def compile_ext_authz(name: str, config: ext_authz_pb2.ExtAuthz, path: str) -> ExtAuthzFilter:
    bad = unsupported(config, SUPPORTED)
    if bad:
        raise FilterConfigError(f"{path}.{bad[0]}", "not supported by pilotfish")
    try:
        service = _service(config, path)
        allowed = _names(config.allowed_headers, f"{path}.allowed_headers")
        enabled = (
            compile_metadata_matcher(
                config.filter_enabled_metadata, f"{path}.filter_enabled_metadata"
            )
            if config.HasField("filter_enabled_metadata")
            else None
        )
    except RouteConfigError as e:
        raise FilterConfigError(e.path, e.reason) from None
    status = config.status_on_error.code if config.HasField("status_on_error") else 403
    return ExtAuthzFilter(
        name,
        service,
        allowed,
        enabled,
        config.failure_mode_allow,
        status or 403,
        config.stat_prefix,
    )


def _service(config: Any, path: str) -> HttpService | GrpcService:
    if config.HasField("http_service"):
        return _http_service(config.http_service, f"{path}.http_service")
    if config.HasField("grpc_service"):
        return _grpc_service(config.grpc_service, f"{path}.grpc_service")
    raise RouteConfigError(f"{path}.services", "an http_service or a grpc_service is required")


def _grpc_service(g: Any, path: str) -> GrpcService:
    if not g.envoy_grpc.cluster_name:
        raise RouteConfigError(f"{path}.envoy_grpc.cluster_name", "is required")
    timeout = g.timeout.seconds + g.timeout.nanos / 1e9 if g.HasField("timeout") else 0.2
    return GrpcService(g.envoy_grpc.cluster_name, timeout, g.envoy_grpc.authority.encode())


def _http_service(s: Any, path: str) -> HttpService:
    uri = s.server_uri
    if not uri.cluster:
        raise RouteConfigError(f"{path}.server_uri.cluster", "is required")
    timeout = uri.timeout.seconds + uri.timeout.nanos / 1e9 if uri.HasField("timeout") else 0.2
    response = s.authorization_response
    return HttpService(
        cluster=uri.cluster,
        timeout=timeout,
        path_prefix=s.path_prefix.encode(),
        headers_to_add=tuple(
            (h.key.lower().encode(), h.value.encode())
            for h in s.authorization_request.headers_to_add
        ),
        to_upstream=_names(response.allowed_upstream_headers, f"{path}.allowed_upstream_headers"),
        to_client_on_deny=_names(response.allowed_client_headers, f"{path}.allowed_client_headers"),
        to_client_on_allow=_names(
            response.allowed_client_headers_on_success, f"{path}.allowed_client_headers_on_success"
        ),
    )
