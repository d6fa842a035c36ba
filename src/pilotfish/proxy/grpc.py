"""gRPC's wire conventions as the proxy needs them, pure: what a gRPC request
is, its status codes and their names, the grpc-timeout header, and the
trailers-only answer Envoy's sendLocalReply gives a gRPC caller.

Everything here reads header values, never framing, so it serves an HTTP/1.1
exchange and an HTTP/2 stream alike (grpc-status comes in response headers
for a trailers-only answer, else in the trailers).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from pilotfish.proxy.protocol.http1 import Headers

CONTENT_TYPE: Final = b"application/grpc"
TE_TRAILERS: Final = (b"te", b"trailers")

# Status codes, by number (google.rpc.Code).
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = range(6)
ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION = range(6, 10)
ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS = range(10, 16)
UNAUTHENTICATED: Final = 16
# Envoy's %GRPC_STATUS% (CAMEL_STRING, its default): Grpc::Utility::grpcStatusToString.
CAMEL_NAMES: Final = (
    "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
)  # fmt: skip

# Envoy's Grpc::Utility::httpToGrpcStatus (gRPC's http-grpc-status-mapping.md):
# what a gRPC caller is told for an HTTP status; anything else is UNKNOWN.
_FROM_HTTP: Final = {
    400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
    429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE,
}  # fmt: skip

# Envoy's Grpc::Utility::grpcToHttpStatus, by code; any other is 500.
_TO_HTTP: Final = (
    200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401,
)  # fmt: skip

# grpc-timeout's units, in seconds (gRPC's PROTOCOL-HTTP2.md).
_TIMEOUT_UNITS: Final = {
    ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0,
    ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9,
}  # fmt: skip
_MAX_TIMEOUT_DIGITS: Final = 8
_MAX_TIMEOUT_VALUE: Final = 10**_MAX_TIMEOUT_DIGITS - 1


def is_grpc_content_type(content_type: bytes | None) -> bool:
    """Envoy's Grpc::Common::hasGrpcContentType: application/grpc, alone or
    followed by `+` (application/grpc+proto) or `;` (parameters)."""
    if content_type is None or not content_type.startswith(CONTENT_TYPE):
        return False
    return len(content_type) == len(CONTENT_TYPE) or content_type[len(CONTENT_TYPE)] in b"+;"


def http_to_grpc(status: int) -> int:
    """Envoy's httpToGrpcStatus."""
    return _FROM_HTTP.get(status, UNKNOWN)


def grpc_to_http(code: int) -> int:
    """Envoy's grpcToHttpStatus: the HTTP status outlier detection counts for a code."""
    return _TO_HTTP[code] if 0 <= code < len(_TO_HTTP) else 500


def parse_status(value: bytes | None) -> int | None:
    """A grpc-status header's code; None when absent or not a number. Codes
    above 16 are kept: gRPC lets servers use their own."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 10:
        return None
    return int(value)


def status_of(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The grpc-status among response headers (a trailers-only answer) or
    trailers, names in any case."""
    for name, value in headers:
        if len(name) == 11 and name.lower() == b"grpc-status":
            return parse_status(value)
    return None


def camel_name(code: int) -> str:
    """Envoy's %GRPC_STATUS% text for a code."""
    return CAMEL_NAMES[code] if 0 <= code < len(CAMEL_NAMES) else "InvalidCode"


def parse_timeout(value: bytes | None) -> float | None:
    """A grpc-timeout header (`TimeoutValue TimeoutUnit`: at most 8 digits,
    then H, M, S, m, u or n) in seconds; None when absent or malformed, as
    Envoy's Grpc::Common::getGrpcTimeout ignores a bad one."""
    if value is None or len(value) < 2:
        return None
    digits, unit = value[:-1], _TIMEOUT_UNITS.get(value[-1])
    if unit is None or not digits.isdigit() or len(digits) > _MAX_TIMEOUT_DIGITS:
        return None
    return int(digits) * unit


def route_timeout(header: float | None, header_max: float, offset: float | None) -> float | None:
    """Envoy's router timeout for a gRPC request on a route that honours
    grpc-timeout (`header_max` set: max_stream_duration.grpc_timeout_header_max
    or max_grpc_timeout; 0 for uncapped). The header's value, less `offset`
    when that leaves time, capped at `header_max`; None for no timeout (no
    header and no cap: Envoy's 0, infinity)."""
    timeout = header or 0.0
    if offset and offset < timeout:
        timeout -= offset
    if header_max and (not timeout or timeout > header_max):
        timeout = header_max
    return timeout or None


def expected_timeout(route: float | None, per_try: float | None) -> float | None:
    """Envoy's setTimeoutHeaders: the time an upstream is told it has, the
    per-try timeout where it is the shorter, else the route's; None for none."""
    if per_try and (not route or per_try < route):
        return per_try
    return route or None


def format_timeout(seconds: float) -> bytes:
    """Envoy's Grpc::Common::toGrpcTimeout: whole milliseconds (1 at least),
    or seconds, minutes, hours, whichever first fits grpc-timeout's 8 digits."""
    value = max(1, round(seconds * 1000))
    if value <= _MAX_TIMEOUT_VALUE:
        return b"%dm" % value
    value //= 1000
    for unit in b"SMH":
        if value <= _MAX_TIMEOUT_VALUE:
            return b"%d%c" % (value, unit)
        value //= 60
    return b"%dH" % _MAX_TIMEOUT_VALUE


def keeps_te(headers: Headers) -> bool:
    """Envoy's sanitizeTEHeader: TE is hop-by-hop, but one that lists
    `trailers` goes on as `te: trailers` (for every request: gRPC servers
    such as grpcio's refuse a call without it)."""
    for name, value in headers:
        if name == b"te":
            return any(token.strip() == b"trailers" for token in value.split(b","))
    return False


def encode_message(message: bytes) -> bytes:
    """grpc-message's percent-encoding: bytes outside printable ASCII, and `%`."""
    if all(0x20 <= c <= 0x7E and c != 0x25 for c in message):
        return message
    return b"".join(
        bytes((c,)) if 0x20 <= c <= 0x7E and c != 0x25 else b"%%%02X" % c for c in message
    )


_REPLACED: Final = frozenset({b"content-type", b"content-length"})


def local_reply(
    status: int, body: bytes, headers: Headers, grpc_status: int | None = None
) -> tuple[int, Headers, bytes]:
    """Envoy's sendLocalReply for a gRPC caller: a trailers-only answer, HTTP
    200 with content-type application/grpc, grpc-status (`grpc_status`, else
    the HTTP status mapped; one already among `headers` stays), and the body
    text as grpc-message; no body. Applying it twice changes nothing."""
    out = [h for h in headers if h[0] not in _REPLACED]
    out.insert(0, (b"content-type", CONTENT_TYPE))
    if not any(name == b"grpc-status" for name, _ in out):
        code = grpc_status if grpc_status is not None else http_to_grpc(status)
        out.append((b"grpc-status", b"%d" % code))
    if body:
        out = [h for h in out if h[0] != b"grpc-message"]
        out.append((b"grpc-message", encode_message(body.rstrip(b"\n"))))
    return 200, out, b""
