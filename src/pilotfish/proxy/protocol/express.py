"""The common HTTP/1.1 message, read and rewritten in a few C-level steps.

Most requests through a sidecar are one complete head (and maybe a small
body) in one read, and most responses a head with a Content-Length. For
those, the proxy does not need every header as a Python object: the head is
split at its CRLFs, its bytes are checked in one `translate` (and each name
in one), only the few headers the proxy acts on are looked at further, and
forwarding keeps the header section as received, cutting the lines it must
drop and appending the ones it adds. No regular expression: matching the
head and finding those headers with `re` cost more than all of this
(docs/benchmarks.md, "The express recognizer without regular expressions").

`parse_request` / `parse_response` return None for anything else (a partial
head, chunked framing, Upgrade, Expect, HTTP/1.0, a repeated Host or
Content-Length, a Connection header naming other headers, an unknown method,
a name that is not a token, a byte outside field-content, a bare CR or LF):
the caller then hands the same bytes to protocol/http1's parsers, which
decide, and answer bad input. So this module only ever accepts a subset of
what those parsers accept, with the same meaning
(tests/proxy/protocol/test_express.py checks both).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from string import ascii_letters, ascii_lowercase, ascii_uppercase, digits
from typing import Final

from pilotfish.proxy import grpc
from pilotfish.proxy.protocol.http1 import (
    DEFAULT_MAX_HEAD,
    END,
    Headers,
    ResponseEvent,
    ResponseHead,
)


def _check_table(allowed: bytes) -> bytes:
    """A `translate` table that changes exactly the bytes not in `allowed`:
    a block is made only of allowed bytes when translating leaves it equal
    (one C loop; no new object when it does)."""
    return bytes(b if b in allowed else b ^ 1 for b in range(256))


_TOKEN: Final = _check_table((ascii_letters + digits + "!#$%&'*+-.^_`|~").encode())
# field-content as llhttp takes it (RFC 9110 5.5: HTAB, SP, VCHAR, obs-text)
_FIELD: Final = _check_table(bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)]))
_TARGET: Final = _check_table((ascii_letters + digits + "-._~:/?#[]@!$&'()*+,;=%").encode())
_LOWER: Final = bytes.maketrans(ascii_uppercase.encode(), ascii_lowercase.encode())
_OWS: Final = b" \t"
# The methods llhttp knows that carry no tunnel; CONNECT and the rest go the long way.
_METHODS: Final = (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"TRACE")
_METHODS_SP: Final = tuple(method + b" " for method in _METHODS)
_VERSION: Final = b" HTTP/1.1"
_STATUS_LINE: Final = b"HTTP/1.1 "

# What the proxy does with a header it acts on; every other line goes
# through as it came.
_HOST: Final = 1
_FORWARDED_FOR: Final = 2
_FORWARDED_PROTO: Final = 3
_REQUEST_ID: Final = 4
_CONTENT_TYPE: Final = 5  # a request's: is it gRPC?
_SHARED: Final = 6  # from here on, what requests and responses share
_CONTENT_LENGTH: Final = 6
_REFUSED: Final = 7  # only the long way can take the message
_PEER: Final = 8  # Istio's metadata exchange: set aside
_PEER_ID: Final = 9
_CONNECTION: Final = 10
_HOP: Final = 11  # hop-by-hop: cut
_RESPONSE_NAMES: Final[dict[bytes, int]] = {
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _REFUSED,
    b"upgrade": _REFUSED,
    b"connection": _CONNECTION,
    b"keep-alive": _HOP,
    b"proxy-connection": _HOP,
    b"te": _HOP,
    b"trailer": _HOP,
    b"x-envoy-peer-metadata": _PEER,
    b"x-envoy-peer-metadata-id": _PEER_ID,
}
_REQUEST_NAMES: Final[dict[bytes, int]] = {
    **_RESPONSE_NAMES,
    b"host": _HOST,
    b"expect": _REFUSED,
    b"x-forwarded-for": _FORWARDED_FOR,
    b"x-forwarded-proto": _FORWARDED_PROTO,
    b"x-request-id": _REQUEST_ID,
    b"content-type": _CONTENT_TYPE,
}


def _lengths_by_start(names: Iterable[bytes]) -> tuple[int, ...]:
    """For each byte, a bit set at the length of each name that starts
    with it (either case): most other lines need no lookup at all."""
    masks = [0] * 256
    for name in names:
        for start in (name[0], name[0] ^ 0x20):
            masks[start] |= 1 << len(name)
    return tuple(masks)


_REQUEST_LENGTHS: Final = _lengths_by_start(_REQUEST_NAMES)
_RESPONSE_LENGTHS: Final = _lengths_by_start(_RESPONSE_NAMES)


def _spellings(names: dict[bytes, int]) -> dict[bytes, int]:
    """`names` under their usual spellings too (Content-Length): a name
    found as it came needs no lower-cased copy to be looked up."""
    spelled = {
        b"-".join(part.capitalize() for part in name.split(b"-")): kind
        for name, kind in names.items()
    }
    return {**spelled, **names}


_REQUEST_SPELLINGS: Final = _spellings(_REQUEST_NAMES)
_RESPONSE_SPELLINGS: Final = _spellings(_RESPONSE_NAMES)
_MAX_LENGTH_DIGITS: Final = 15
# bytes' methods mypyc has no primitive for, called through their
# descriptors: compiled, `x.partition(...)` looks the method up on the type
# at every call.
_PARTITION: Final = bytes.partition
_SPLIT: Final = bytes.split
_STRIP: Final = bytes.strip

Span = tuple[int, int]
# A message's cuts while it has none, which is most messages: two new empty
# lists per message cost about 300 instructions to make and free. Shared, so
# never appended to: `_cut` gives a message its own list at its first cut.
_NO_CUTS: Final[list[Span]] = []


def _cut(cuts: list[Span], start: int, end: int) -> list[Span]:
    """`cuts` with the span added: the same list, or a new one for _NO_CUTS."""
    if cuts is _NO_CUTS:
        return [(start, end)]
    cuts.append((start, end))
    return cuts


# init=False and an __init__ of its own, in both classes: a dataclass's
# generated __init__ is interpreted Python even in a compiled module, and
# costs more than the rest of building the message.
@dataclass(slots=True, init=False)
class _Message:
    """What requests and responses share, set by the headers both have (one
    native class, so that compiled code reads and sets them directly)."""

    lines: bytes
    cuts: list[Span]
    keep_alive: bool
    content_length: int | None  # as RequestHead has it: None when absent
    body: bytes
    peer: bytes | None
    peer_cuts: list[Span]

    def headers(self) -> Headers:
        """Every header, names lower-cased, values stripped, in order."""
        headers: Headers = []
        for line in self.lines.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.lower(), value.strip(_OWS)))
        return headers


@dataclass(slots=True, init=False)
class ExpressRequest(_Message):
    """A request head (and its whole body) found in one read; the exchange
    takes it where it takes a RequestHead.

    `lines` is the header section as received, each line led by CRLF and
    without the blank line; `cuts` are spans of `lines` to leave out when
    forwarding (hop-by-hop headers, and x-forwarded-for, which is re-added);
    `peer_cuts` those of Istio's metadata-exchange headers, `peer` the
    metadata itself."""

    method: bytes
    target: bytes
    host: bytes | None
    forwarded_for: bytes | None
    has_proto: bool
    has_request_id: bool
    content_type: bytes | None  # the first one's value
    grpc: bool  # Envoy's Grpc::Common::isGrpcRequestHeaders
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
        self.cuts = self.peer_cuts = _NO_CUTS
        self.host = self.content_length = self.forwarded_for = self.peer = None
        self.keep_alive, self.body = True, b""
        self.has_proto = self.has_request_id = self.grpc = False
        self.content_type = None
        self.version = b"1.1"
        self.upgrade = self.expect_continue = self.chunked = False


@dataclass(slots=True, init=False)
class ExpressResponse(_Message):
    """A response head found in one read, with a Content-Length body (its
    content_length is None only while parsing; its body is the part of the
    body in the same read)."""

    status: int

    def __init__(self, status: int, lines: bytes) -> None:
        self.status, self.lines = status, lines
        self.cuts = self.peer_cuts = _NO_CUTS
        self.keep_alive, self.content_length, self.body, self.peer = True, None, b"", None


def _head(data: bytes, max_head: int) -> tuple[list[bytes], bytes]:
    """The lines of the head `data` starts with (the first line, then each
    header line, without CRLFs) and what follows the head, if the head is
    whole, within `max_head` and made of field-content with no CR or LF but
    those that end lines; else no lines. (When `data` ends with a blank
    line, the lines may include an empty one, which _headers refuses.)"""
    if data.endswith(b"\r\n\r\n"):
        # Most requests have no body: split `data` itself (a blank line
        # before the last leaves an empty line that no header line passes).
        if len(data) > max_head:
            return [], b""
        parts, rest = _SPLIT(data, b"\r\n"), b""
        parts.pop()
        parts.pop()
    else:
        head, blank, rest = _PARTITION(data, b"\r\n\r\n")
        if not blank or len(head) + 4 > max_head:
            return [], rest
        parts = _SPLIT(head, b"\r\n")
    text = b"".join(parts)  # a CR or LF left here stands alone
    return (parts if text.translate(_FIELD) == text else []), rest


def _headers(
    parts: list[bytes], message: _Message, names: dict[bytes, int], lengths: tuple[int, ...]
) -> bool:
    """Apply to `message` the header lines named in `names`, with their
    spans in the section after the first line (each line led by its CRLF);
    False unless every line is a token, a colon and a value, and the
    message takes its special headers. A few C calls a line, and no lookup
    for a name that no special one has the first letter and length of."""
    start = 0
    for i in range(1, len(parts)):
        line = parts[i]
        name, colon, value = _PARTITION(line, b":")
        end = start + 2 + len(line)
        if not name or not colon:
            return False
        size = len(name)
        if size < 32 and lengths[name[0]] >> size & 1:
            kind = names.get(name, 0)  # as it came: a name the table has is a token
            if not kind:
                if name.translate(_TOKEN) != name:
                    return False
                kind = names.get(name.translate(_LOWER), 0)
            if kind and not _header(message, kind, _STRIP(value, _OWS), start, end):
                return False
        elif name.translate(_TOKEN) != name:
            return False
        start = end
    return True


def _method(line: bytes) -> bytes:
    """The method `line` starts with (then a space) if express takes it, else b"" """
    for i in range(len(_METHODS)):  # by index: no iterator object
        if line.startswith(_METHODS_SP[i]):
            return _METHODS[i]
    return b""


def parse_request(data: bytes, max_head: int = DEFAULT_MAX_HEAD) -> ExpressRequest | None:
    """The request that is exactly `data`, or None (see the module docstring)."""
    parts, body = _head(data, max_head)
    first = parts[0] if parts else b""
    method = _method(first)
    stop = len(first) - len(_VERSION)
    # (A compiled slice whose start is past its stop fails: mypyc 2.4.1's
    # CPyBytes_GetSlice raises SystemError rather than returning b"".)
    if not method or stop <= len(method) or not first.endswith(_VERSION):
        return None
    target = first[len(method) + 1 : stop]
    if not _origin_or_absolute(target):
        return None
    req = ExpressRequest(method, target, data[len(first) : len(data) - len(body) - 4])
    if not _headers(parts, req, _REQUEST_SPELLINGS, _REQUEST_LENGTHS):
        return None
    if req.host is None and target.startswith(b"/"):
        return None  # HTTP/1.1 without Host: the long way answers 400
    if len(body) != (req.content_length or 0):
        return None  # a body still coming, or pipelined bytes after it
    req.body = body
    return req


def _origin_or_absolute(target: bytes) -> bool:
    """An origin-form or http(s) absolute-form target of plain characters."""
    if target.translate(_TARGET) != target:
        return False
    return (
        target.startswith(b"/") or target.startswith(b"http://") or target.startswith(b"https://")
    )


def _header(message: _Message, kind: int, value: bytes, start: int, end: int) -> bool:
    """Take one special header (its line from `start` to `end`); False: only
    the long way can take this message."""
    if kind < _SHARED and isinstance(message, ExpressRequest):  # only a request's names
        return _request_header(message, kind, value, start, end)
    return _message_header(message, kind, value, start, end)


def _request_header(req: ExpressRequest, kind: int, value: bytes, start: int, end: int) -> bool:
    if kind == _HOST:
        if req.host is not None:
            return False
        req.host = value
    elif kind == _FORWARDED_FOR:
        if req.forwarded_for is not None:
            return False
        req.forwarded_for = value
        req.cuts = _cut(req.cuts, start, end)  # re-added at the end
    elif kind == _FORWARDED_PROTO:
        req.has_proto = True
    elif kind == _REQUEST_ID:
        req.has_request_id = True
    elif kind == _CONTENT_TYPE and req.content_type is None:
        # the first one counts, as get_header reads it
        req.content_type = value
        # startswith first: is_grpc_content_type is interpreted Python
        req.grpc = value.startswith(grpc.CONTENT_TYPE) and grpc.is_grpc_content_type(value)
    return True


def parse_response(data: bytes, max_head: int = DEFAULT_MAX_HEAD) -> ExpressResponse | None:
    """The response at the start of `data`, if it is a final (2xx-5xx,
    not 204 or 304) HTTP/1.1 response with a Content-Length and no more than
    its body follows; else None."""
    parts, body = _head(data, max_head)
    status = _status(parts[0]) if parts else 0
    if not status:
        return None
    resp = ExpressResponse(status, data[len(parts[0]) : len(data) - len(body) - 4])
    if not _headers(parts, resp, _RESPONSE_SPELLINGS, _RESPONSE_LENGTHS):
        return None
    if resp.content_length is None or len(body) > resp.content_length:
        return None
    resp.body = body
    return resp


def _status(line: bytes) -> int:
    """The status of an `HTTP/1.1 NNN reason` line with a final status
    other than 204 and 304, else 0 (the reason is checked with the head)."""
    if len(line) < 13 or not line.startswith(_STATUS_LINE) or line[12] != 32:
        return 0
    hundreds, tens, units = line[9] - 48, line[10] - 48, line[11] - 48
    if not (2 <= hundreds <= 5 and 0 <= tens <= 9 and 0 <= units <= 9):
        return 0
    status = hundreds * 100 + tens * 10 + units
    return 0 if status in (204, 304) else status


def _message_header(message: _Message, kind: int, value: bytes, start: int, end: int) -> bool:
    """What requests and responses share: framing, Connection, hop-by-hop
    headers (cut) and Istio's metadata exchange (set aside). False: only the
    long way can take this message."""
    if kind == _CONTENT_LENGTH:
        length = _length(value)
        if message.content_length is not None or length < 0:
            return False
        message.content_length = length
        return True
    if kind == _REFUSED:
        return False
    if kind in (_PEER, _PEER_ID):
        message.peer_cuts = _cut(message.peer_cuts, start, end)
        if kind == _PEER:
            message.peer = value
        return True
    if kind == _CONNECTION:
        keep = _connection(value)
        if keep is None:
            return False
        message.keep_alive = keep
    message.cuts = _cut(message.cuts, start, end)
    return True


def _length(value: bytes) -> int:
    """A Content-Length of at most 15 digits (2 ** 53 is 16), else -1."""
    if not 0 < len(value) <= _MAX_LENGTH_DIGITS:
        return -1
    length = 0
    for digit in value:
        if not 48 <= digit <= 57:  # "0" to "9"
            return -1
        length = length * 10 + digit - 48
    return length


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
    # One list and one join: a `+` per piece would make a bytes object each.
    parts: list[bytes] = []
    for name, value in headers:
        parts.append(b"\r\n")
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
    return b"".join(parts)


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
