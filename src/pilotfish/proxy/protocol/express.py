"""The common HTTP/1.1 message, read and rewritten in a few C-level steps.

Most requests through a sidecar are one complete head (and maybe a small
body) in one read, and most responses a head with a Content-Length. For
those, the proxy does not need every header as a Python object: one regular
expression checks the whole head, a second finds the few headers the proxy
acts on, and forwarding keeps the header section as received, cutting the
lines it must drop and appending the ones it adds.

`parse_request` / `parse_response` return None for anything else (a partial
head, chunked framing, Upgrade, Expect, HTTP/1.0, a repeated Host or
Content-Length, a Connection header naming other headers, an unknown method,
anything the regular expressions do not accept): the caller then hands the
same bytes to protocol/http1's parsers, which decide, and answer bad input.
So this module only ever accepts a subset of what those parsers accept, with
the same meaning (tests/proxy/protocol/test_express.py checks both).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from pilotfish.proxy.protocol.http1 import (
    DEFAULT_MAX_HEAD,
    END,
    Headers,
    ResponseEvent,
    ResponseHead,
)

_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_LINES: Final = rb"((?:\r\n" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*)*)\r\n\r\n"
# The methods llhttp knows that carry no tunnel; CONNECT and the rest go the long way.
_METHOD: Final = rb"(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|TRACE)"
_TARGET: Final = rb"((?:/|https?://)[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*)"
_REQUEST: Final = re.compile(_METHOD + rb" " + _TARGET + rb" HTTP/1\.1" + _LINES)
_RESPONSE: Final = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9]) [\t\x20-\x7e\x80-\xff]*" + _LINES)
_HEADER: Final = re.compile(rb"\r\n(" + _TOKEN + rb"):[ \t]*([^\r]*)")

# Headers the proxy acts on; every other line goes through as it came.
_REQUEST_NAMES: Final = (
    rb"host|content-length|transfer-encoding|expect|upgrade|connection|keep-alive"
    rb"|proxy-connection|te|trailer|x-forwarded-for|x-forwarded-proto|x-request-id"
    rb"|x-envoy-peer-metadata|x-envoy-peer-metadata-id"
)
_RESPONSE_NAMES: Final = (
    rb"content-length|transfer-encoding|upgrade|connection|keep-alive|proxy-connection"
    rb"|te|trailer|x-envoy-peer-metadata|x-envoy-peer-metadata-id"
)
_REQUEST_SPECIAL: Final = re.compile(rb"\r\n(" + _REQUEST_NAMES + rb"):[ \t]*([^\r]*)", re.I)
_RESPONSE_SPECIAL: Final = re.compile(rb"\r\n(" + _RESPONSE_NAMES + rb"):[ \t]*([^\r]*)", re.I)
_MAX_LENGTH_DIGITS: Final = 15
_PEER: Final = frozenset({b"x-envoy-peer-metadata", b"x-envoy-peer-metadata-id"})
_REFUSED: Final = frozenset({b"transfer-encoding", b"expect", b"upgrade"})

Span = tuple[int, int]


# init=False and an __init__ of its own, in both classes: a dataclass's
# generated __init__ is interpreted Python even in a compiled module, and
# costs more than the rest of building the message.
@dataclass(slots=True, init=False)
class ExpressRequest:
    """A request head (and its whole body) found in one read; the exchange
    takes it where it takes a RequestHead.

    `lines` is the header section as received, each line led by CRLF and
    without the blank line; `cuts` are spans of `lines` to leave out when
    forwarding (hop-by-hop headers, and x-forwarded-for, which is re-added);
    `peer_cuts` those of Istio's metadata-exchange headers, `peer` the
    metadata itself."""

    method: bytes
    target: bytes
    lines: bytes
    cuts: list[Span]
    host: bytes | None
    keep_alive: bool
    content_length: int | None  # as RequestHead has it: None when absent
    body: bytes
    forwarded_for: bytes | None
    has_proto: bool
    has_request_id: bool
    peer: bytes | None
    peer_cuts: list[Span]
    # What a RequestHead says that is the same for every express request:
    # fields, not ClassVars (mypyc takes a dataclass's class-level values
    # for field defaults) nor properties (a call each).
    version: bytes
    upgrade: bool
    expect_continue: bool
    chunked: bool

    def __init__(self, method: bytes, target: bytes, lines: bytes) -> None:
        """The rest as parse_request finds it in the special headers."""
        self.method, self.target, self.lines = method, target, lines
        self.cuts, self.peer_cuts = [], []
        self.host = self.content_length = self.forwarded_for = self.peer = None
        self.keep_alive, self.body = True, b""
        self.has_proto = self.has_request_id = False
        self.version = b"1.1"
        self.upgrade = self.expect_continue = self.chunked = False

    def headers(self) -> Headers:
        """Every header, names lower-cased, values stripped, in order."""
        return header_list(self.lines)


@dataclass(slots=True, init=False)
class ExpressResponse:
    """A response head found in one read, with a Content-Length body."""

    status: int
    lines: bytes
    cuts: list[Span]
    keep_alive: bool
    content_length: int | None  # None only while parsing: none yet
    body: bytes  # the part of the body in the same read
    peer: bytes | None
    peer_cuts: list[Span]

    def __init__(self, status: int, lines: bytes) -> None:
        self.status, self.lines = status, lines
        self.cuts, self.peer_cuts = [], []
        self.keep_alive, self.content_length, self.body, self.peer = True, None, b"", None

    def headers(self) -> Headers:
        return header_list(self.lines)


def header_list(lines: bytes) -> Headers:
    return [(name.lower(), value.rstrip(b" \t")) for name, value in _HEADER.findall(lines)]


def parse_request(data: bytes, max_head: int = DEFAULT_MAX_HEAD) -> ExpressRequest | None:
    """The request that is exactly `data`, or None (see the module docstring)."""
    match = _REQUEST.match(data)
    if match is None or match.end() > max_head:
        return None
    lines = match.group(3)
    req = ExpressRequest(match.group(1), match.group(2), lines)
    for special in _REQUEST_SPECIAL.finditer(lines):
        if not _request_header(req, special):
            return None
    if req.host is None and req.target[:1] == b"/":
        return None  # HTTP/1.1 without Host: the long way answers 400
    body = data[match.end() :]
    if len(body) != (req.content_length or 0):
        return None  # a body still coming, or pipelined bytes after it
    req.body = body
    return req


def _request_header(req: ExpressRequest, special: re.Match[bytes]) -> bool:
    name, value = special.groups()
    name, value = name.lower(), value.rstrip(b" \t")
    if name == b"host":
        if req.host is not None:
            return False
        req.host = value
    elif name == b"x-forwarded-for":
        if req.forwarded_for is not None:
            return False
        req.forwarded_for = value
        req.cuts.append(special.span())  # appended to, at the end
    elif name == b"x-forwarded-proto":
        req.has_proto = True
    elif name == b"x-request-id":
        req.has_request_id = True
    else:
        return _message_header(req, name, value, special)
    return True


def parse_response(data: bytes, max_head: int = DEFAULT_MAX_HEAD) -> ExpressResponse | None:
    """The response at the start of `data`, if it is a final (2xx-5xx,
    not 204 or 304) HTTP/1.1 response with a Content-Length and no more than
    its body follows; else None."""
    match = _RESPONSE.match(data)
    if match is None or match.end() > max_head:
        return None
    status = int(match.group(1))
    if status in (204, 304):
        return None
    lines = match.group(2)
    resp = ExpressResponse(status, lines)
    for special in _RESPONSE_SPECIAL.finditer(lines):
        name, value = special.groups()
        if not _message_header(resp, name.lower(), value.rstrip(b" \t"), special):
            return None
    body = data[match.end() :]
    if resp.content_length is None or len(body) > resp.content_length:
        return None
    resp.body = body
    return resp


def _message_header(
    message: ExpressRequest | ExpressResponse, name: bytes, value: bytes, found: re.Match[bytes]
) -> bool:
    """What requests and responses share: framing, Connection, hop-by-hop
    headers (cut) and Istio's metadata exchange (set aside). False: only the
    long way can take this message."""
    if name == b"content-length":
        if message.content_length is not None or not value.isdigit():
            return False
        if len(value) > _MAX_LENGTH_DIGITS:
            return False
        message.content_length = int(value)
        return True
    if name in _REFUSED:
        return False
    if name in _PEER:
        message.peer_cuts.append(found.span())
        if name == b"x-envoy-peer-metadata":
            message.peer = value
        return True
    if name == b"connection":
        keep = _connection(value)
        if keep is None:
            return False
        message.keep_alive = keep
    message.cuts.append(found.span())
    return True


def _connection(value: bytes) -> bool | None:
    """keep-alive: True, close: False; a list naming other headers: None."""
    value = value.lower()
    if value == b"keep-alive":
        return True
    if value == b"close":
        return False
    return None


def splice(lines: bytes, cuts: list[Span]) -> bytes:
    """`lines` without the spans in `cuts` (not overlapping)."""
    if not cuts:
        return lines
    parts, start = [], 0
    for begin, end in sorted(cuts):
        parts.append(lines[start:begin])
        start = end
    parts.append(lines[start:])
    return b"".join(parts)


def encode_lines(headers: Headers) -> bytes:
    """Header lines in the form of `lines`: each led by CRLF."""
    return b"".join([b"\r\n" + name + b": " + value for name, value in headers])


def express_events(resp: ExpressResponse) -> list[ResponseEvent]:
    """The events protocol/http1's ResponseParser makes of the same bytes."""
    head = ResponseHead(
        resp.status, b"", b"1.1", resp.headers(), resp.keep_alive, False, resp.content_length,
        False,
    )  # fmt: skip
    events: list[ResponseEvent] = [head]
    if resp.body:
        events.append(resp.body)
    if len(resp.body) == resp.content_length:
        events.append(END)
    return events
