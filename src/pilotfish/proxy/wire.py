"""HTTP/1.1 bytes the proxy writes: heads, local responses, hop-by-hop rules.

Constants are built once; per request there is one join per head.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
CRLF, COLON = b"\r\n", b": "
CHUNKED = (b"transfer-encoding", b"chunked")
LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def forwardable(headers: Headers) -> Headers:
    """The end-to-end headers: hop-by-hop ones and those named in Connection removed."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }
    drop = HOP_BY_HOP | named if named else HOP_BY_HOP
    return [h for h in headers if h[0] not in drop]


def request_head(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines.extend(name + COLON + value for name, value in headers)
    return CRLF.join(lines) + CRLF + CRLF


def response_head(status: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"Unknown"))]
    lines.extend(name + COLON + value for name, value in headers)
    return CRLF.join(lines) + CRLF + CRLF


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def local_response(
    status: int, body: bytes, *, flags: str = "", close: bool = False, extra: Headers | None = None
) -> bytes:
    """A complete response the proxy answers itself (no route, upstream failure,
    fault...), with Envoy's response flag in x-pilotfish-flags."""
    headers: Headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"text/plain")]
    if flags:
        headers.append((b"x-pilotfish-flags", flags.encode()))
    headers.extend(extra or ())
    if close:
        headers.append((b"connection", b"close"))
    return response_head(status, headers) + body
