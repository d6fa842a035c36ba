"""The parts of an HTTPRoute that become policies of an Envoy Route: retries,
timeouts, fault injection, CORS, mirroring, header operations, redirects,
direct responses and consistent-hash keys. One function per Istio field."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from google.protobuf.wrappers_pb2 import BoolValue, UInt32Value

from pilotfish.objects import Obj
from pilotfish.translate.protos import (
    duration,
    integer_percent,
    pack,
    percent_to_fraction,
    string_matcher,
)

DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_RETRY_CODES = (503,)  # Istio's DefaultPolicy: a 503 is retried too
DEFAULT_ATTEMPTS = 2
HOST_SELECTION_ATTEMPTS = 5
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
REDIRECT_CODES = {
    0: rc.RedirectAction.MOVED_PERMANENTLY,
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}
_GRPC_NAMES = (
    "OK CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND ALREADY_EXISTS "
    "PERMISSION_DENIED RESOURCE_EXHAUSTED FAILED_PRECONDITION ABORTED OUT_OF_RANGE "
    "UNIMPLEMENTED INTERNAL UNAVAILABLE DATA_LOSS UNAUTHENTICATED"
)
GRPC_CODES = {name: code for code, name in enumerate(_GRPC_NAMES.split())}


def translate_retry_policy(retries: Obj | None, consistent_hash: bool) -> rc.RetryPolicy | None:
    """Istio's retry.ConvertPolicy: no `retries` means the mesh default (2
    attempts on connection-level failures and 503), `attempts: 0` means none;
    a `retryOn` replaces both the conditions and the codes. Retrying on other
    hosts is skipped with consistent hashing, which wants the same one."""
    if retries is not None and int(retries.get("attempts") or 0) <= 0:
        return None
    retries = retries or {}
    out = rc.RetryPolicy(
        retry_on=DEFAULT_RETRY_ON,
        num_retries=UInt32Value(value=int(retries.get("attempts") or DEFAULT_ATTEMPTS)),
        host_selection_retry_max_attempts=HOST_SELECTION_ATTEMPTS,
        retriable_status_codes=DEFAULT_RETRY_CODES,
    )
    if retries.get("retryOn"):
        out.retry_on, codes = _parse_retry_on(str(retries["retryOn"]))
        del out.retriable_status_codes[:]
        out.retriable_status_codes.extend(codes)
    if retries.get("perTryTimeout"):
        out.per_try_timeout.CopyFrom(duration(retries["perTryTimeout"]))
    if retries.get("backoff"):
        out.retry_back_off.base_interval.CopyFrom(duration(retries["backoff"]))
    ignore_previous = retries.get("retryIgnorePreviousHosts")
    if ignore_previous if ignore_previous is not None else not consistent_hash:
        out.retry_host_predicate.append(
            rc.RetryPolicy.RetryHostPredicate(
                name=PREVIOUS_HOSTS, typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate())
            )
        )
    return out


def _parse_retry_on(text: str) -> tuple[str, list[int]]:
    """Status codes in retryOn (`5xx,503`) go to retriable_status_codes."""
    names, codes = [], []
    for part in (p.strip() for p in text.split(",")):
        if part.isdigit() and 100 <= int(part) <= 599:
            codes.append(int(part))
        elif part:
            names.append(part)
    if codes and "retriable-status-codes" not in names:
        names.append("retriable-status-codes")
    return ",".join(names), codes


def translate_fault(fault: Obj) -> fault_pb2.HTTPFault | None:
    """HTTPFaultInjection -> HTTPFault. A delay without a percentage uses the
    deprecated integer `percent` (so 0%), an abort without one carries none,
    exactly as Istio translates them."""
    out = fault_pb2.HTTPFault()
    delay, abort = fault.get("delay"), fault.get("abort")
    if delay and delay.get("fixedDelay"):
        out.delay.fixed_delay.CopyFrom(duration(delay["fixedDelay"]))
        out.delay.percentage.CopyFrom(_fault_percentage(delay))
    if abort and ("httpStatus" in abort or "grpcStatus" in abort):
        if "httpStatus" in abort:
            out.abort.http_status = int(abort["httpStatus"])
        else:
            out.abort.grpc_status = _grpc_code(abort["grpcStatus"])
        if abort.get("percentage") is not None:
            out.abort.percentage.CopyFrom(_fault_percentage(abort))
    if not out.HasField("delay") and not out.HasField("abort"):
        return None
    return out


def _fault_percentage(spec: Obj) -> Any:
    if spec.get("percentage") is not None:
        return percent_to_fraction(float(spec["percentage"].get("value") or 0))
    return integer_percent(int(spec.get("percent") or 0))


def _grpc_code(status: str | int) -> int:
    return int(status) if isinstance(status, int) else GRPC_CODES.get(str(status).upper(), 2)


def translate_cors(cors: Obj) -> cors_pb2.CorsPolicy:
    out = cors_pb2.CorsPolicy(
        allow_methods=",".join(cors.get("allowMethods") or []),
        allow_headers=",".join(cors.get("allowHeaders") or []),
        expose_headers=",".join(cors.get("exposeHeaders") or []),
        forward_not_matching_preflights=BoolValue(
            value=cors.get("unmatchedPreflights") != "IGNORE"
        ),
    )
    out.filter_enabled.default_value.CopyFrom(integer_percent(100))
    if cors.get("allowOrigins"):
        matchers = (string_matcher(m) for m in cors["allowOrigins"])
        out.allow_origin_string_match.extend(m for m in matchers if m is not None)
    elif cors.get("allowOrigin"):
        out.allow_origin_string_match.extend(
            string_matcher({"exact": o}) for o in cors["allowOrigin"]
        )
    if cors.get("allowCredentials") is not None:
        out.allow_credentials.value = bool(cors["allowCredentials"])
    if cors.get("maxAge"):
        out.max_age = str(duration(cors["maxAge"]).seconds)
    return out


def translate_mirror(cluster: str, percentage: Obj | None) -> rc.RouteAction.RequestMirrorPolicy:
    """No percentage mirrors everything (Istio's default)."""
    out = rc.RouteAction.RequestMirrorPolicy(cluster=cluster, trace_sampled=BoolValue(value=False))
    value = 100.0 if percentage is None else float(percentage.get("value") or 0)
    out.runtime_fraction.default_value.CopyFrom(percent_to_fraction(value))
    return out


class HeaderOps:
    """Istio `Headers` split into Envoy's four lists; setting `:authority` or
    `host` becomes a host rewrite instead, since Envoy will not set those."""

    def __init__(self, headers: Obj | None) -> None:
        headers = headers or {}
        request, response = headers.get("request") or {}, headers.get("response") or {}
        self.request_add = _options(request.get("set"), False) + _options(request.get("add"), True)
        self.response_add = _options(response.get("set"), False) + _options(
            response.get("add"), True
        )
        self.request_remove = [h for h in request.get("remove") or [] if not _internal(h)]
        self.response_remove = [h for h in response.get("remove") or [] if not _internal(h)]
        self.authority = _authority(request.get("set")) or _authority(request.get("add"))

    def apply(self, target: Any) -> None:
        """Onto a Route or a WeightedCluster.ClusterWeight (same field names)."""
        target.request_headers_to_add.extend(self.request_add)
        target.response_headers_to_add.extend(self.response_add)
        target.request_headers_to_remove.extend(self.request_remove)
        target.response_headers_to_remove.extend(self.response_remove)


def _internal(name: str) -> bool:
    return name.startswith(":") or name.lower() == "host"


def _authority(values: Mapping[str, str] | None) -> str:
    found = [v for k, v in (values or {}).items() if k.lower() in (":authority", "host")]
    return str(found[-1]) if found else ""


def _options(values: Mapping[str, str] | None, append: bool) -> list[base_pb2.HeaderValueOption]:
    action = (
        base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
        if append
        else base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    )
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=k, value=str(v)), append_action=action
        )
        for k, v in sorted((values or {}).items())
        if not _internal(k)
    ]


def translate_redirect(redirect: Obj, port: int) -> rc.RedirectAction | None:
    """None for a redirectCode Envoy cannot send (Istio drops the action too)."""
    code = int(redirect.get("redirectCode") or 0)
    if code not in REDIRECT_CODES:
        return None
    out = rc.RedirectAction(host_redirect=str(redirect.get("authority") or ""))
    out.response_code = REDIRECT_CODES[code]
    if redirect.get("uri"):
        out.path_redirect = str(redirect["uri"])
    if redirect.get("scheme"):
        out.scheme_redirect = str(redirect["scheme"])
    if redirect.get("port") or redirect.get("derivePort") == "FROM_REQUEST_PORT":
        number = int(redirect.get("port") or port)
        scheme = redirect.get("scheme") or "http"
        # The default port of the scheme is left out of Location, as Istio does.
        if (scheme, number) not in (("http", 80), ("https", 443)):
            out.port_redirect = number
    return out


def translate_direct_response(direct: Obj) -> rc.DirectResponseAction:
    out = rc.DirectResponseAction(status=int(direct["status"]))
    body = direct.get("body") or {}
    if "string" in body:
        out.body.inline_string = str(body["string"])
    elif "bytes" in body:
        out.body.inline_bytes = _bytes(body["bytes"])
    return out


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else base64.b64decode(str(value))


def translate_hash_policy(consistent_hash: Obj | None) -> rc.RouteAction.HashPolicy | None:
    """consistentHash's key -> the route's hash policy (the cluster gets the ring)."""
    if not consistent_hash:
        return None
    out = rc.RouteAction.HashPolicy()
    if consistent_hash.get("httpHeaderName"):
        out.header.header_name = str(consistent_hash["httpHeaderName"])
    elif consistent_hash.get("httpCookie"):
        cookie = consistent_hash["httpCookie"]
        out.cookie.name = str(cookie.get("name", ""))
        if cookie.get("path"):
            out.cookie.path = str(cookie["path"])
        if cookie.get("ttl"):
            out.cookie.ttl.CopyFrom(duration(cookie["ttl"]))
    elif consistent_hash.get("useSourceIp"):
        out.connection_properties.source_ip = True
    elif consistent_hash.get("httpQueryParameterName"):
        out.query_parameter.name = str(consistent_hash["httpQueryParameterName"])
    else:
        return None
    return out
