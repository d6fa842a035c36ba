"""HTTP/1.1 without I/O: the proxy's parser and serializer for both sides of a hop.

Downstream, the shell feeds client bytes to a `RequestParser` and writes
`serialize_response_head(...)` plus body bytes; upstream, it writes
`serialize_request_head(...)` plus body bytes and feeds the backend's bytes to
a `ResponseParser`. Parsing is llhttp (through httptools); the Python
callbacks do as little as they can, because they run for every request:
headers stay the (name, value) pairs as received, body pieces are the bytes
objects the parser made, and the few headers the core must understand (Host,
Content-Length, Transfer-Encoding, Expect) are spotted by their length before
anything is lowercased.

Events, in order: a head (`RequestHead` / `ResponseHead`), `bytes` for each
piece of body as it arrives, `EndOfMessage`; after an Upgrade, CONNECT or 101
message, `Tunnel` with the bytes that already belong to the new protocol.
When a message ends the parser holds the events that follow it (pipelined
requests, or bytes an upstream sent unasked) until `next_message()`; while
`paused` the shell should not read, so the core never holds more than one read.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, Generic, Protocol, TypeAlias, TypeVar

import httptools

Header: TypeAlias = tuple[bytes, bytes]
Headers: TypeAlias = list[Header]

DEFAULT_MAX_HEAD: Final = 60 * 1024  # Envoy's default max_request_headers_kb
CONTINUE_RESPONSE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"

_VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0"}
_HTTP11: Final = _VERSIONS["1.1"]  # compared by identity


# -- errors ---------------------------------------------------------------------------------


class ProtocolError(Exception):
    """Bytes this proxy does not accept as HTTP/1.1.

    `status` is what the proxy answers with before closing; `flag` is the
    Envoy response flag for the access log and x-pilotfish-flags."""

    # The default flag is an argument, not a class attribute the subclass
    # overrides: mypyc compiles these classes, and its instances do not fall
    # back to class attributes.
    def __init__(self, reason: str, status: int = 400, flag: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.flag = flag or "DPE"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, status={self.status}, flag={self.flag!r})"

    def response(self) -> bytes:
        """The complete response to send before closing the connection."""
        flags = [(b"x-pilotfish-flags", self.flag.encode())]
        return error_response(self.status, status_phrase(self.status) + b"\n", flags)


class RequestError(ProtocolError):
    """A client's request the proxy refuses (Envoy's DPE: downstream protocol error)."""


class ResponseError(ProtocolError):
    """An upstream's response the proxy cannot forward. The client is not at
    fault, so whatever went wrong it gets 503 (Envoy's UPE), never a 4xx."""

    def __init__(self, reason: str, status: int = 503, flag: str | None = None) -> None:
        super().__init__(reason, 503, flag or "UPE")


# -- events ---------------------------------------------------------------------------------


@dataclass(slots=True)
class RequestHead:
    """A request line and header section as the client sent them."""

    method: bytes
    target: bytes  # raw: origin-form, absolute-form, authority-form (CONNECT) or "*"
    version: bytes  # b"1.1" or b"1.0"
    headers: Headers  # names keep their case; values lose surrounding whitespace
    keep_alive: bool  # another request may follow on this connection
    upgrade: bool  # Upgrade with Connection: upgrade, or CONNECT: a Tunnel follows the END
    expect_continue: bool  # an HTTP/1.1 client waits for "100 Continue" before its body
    content_length: int | None
    chunked: bool
    host: bytes | None


@dataclass(slots=True)
class ResponseHead:
    """A status line and header section as the upstream sent them. A status of
    1xx other than 101 is interim: no body and no END follow it, the final head does."""

    status: int
    reason: bytes
    version: bytes
    headers: Headers
    keep_alive: bool  # the upstream connection can carry another request
    upgrade: bool  # 101, or 2xx to CONNECT: a Tunnel follows the END
    content_length: int | None
    chunked: bool


@dataclass(slots=True, frozen=True)
class EndOfMessage:
    """The message is complete; `trailers` are the fields after a chunked body."""

    trailers: tuple[Header, ...] = ()


END: Final = EndOfMessage()


@dataclass(slots=True, frozen=True)
class Tunnel:
    """Bytes after an Upgrade/CONNECT/101 message: the tunnelled protocol, not HTTP."""

    data: bytes


RequestEvent: TypeAlias = RequestHead | bytes | EndOfMessage | Tunnel
ResponseEvent: TypeAlias = ResponseHead | bytes | EndOfMessage | Tunnel
Event = TypeVar("Event", RequestEvent, ResponseEvent)

# -- the state machine ------------------------------------------------------------------------
#
#            begin          headers          end
#    IDLE ---------> HEAD ----------> BODY -------> IDLE --switch--> TUNNEL
#                     |                              ^
#                     +--interim (1xx)--> INTERIM ---+ end (no END event)
#
#    IDLE, TUNNEL --eof--> CLOSED          an input with no entry --> FAILED
#
# Being paused is not a state of this machine: llhttp may already be parsing
# the next pipelined message while the shell works on this one; the gate only
# decides whether events go out now or wait for next_message().
#
# Plain ints rather than an Enum: on 3.11 reading an Enum member costs about
# as much as a whole header callback, and the per-message callbacks read several.
# Each a Final literal, which mypyc inlines; a name bound by unpacking range()
# would be a lookup in the module's dict at every use.

_IDLE: Final = 0
_HEAD: Final = 1
_BODY: Final = 2
_INTERIM: Final = 3
_TUNNEL: Final = 4  # >= _TUNNEL: no more HTTP
_CLOSED: Final = 5
_FAILED: Final = 6
_STATE_NAMES: Final = ("IDLE", "HEAD", "BODY", "INTERIM", "TUNNEL", "CLOSED", "FAILED")
_QUIET_SLACK: Final = 4096
_BEGIN: Final = 0
_HEADERS: Final = 1
_INTERIM_HEADERS: Final = 2
_END: Final = 3
_SWITCH: Final = 4
_EOF: Final = 5
_INPUT_NAMES: Final = ("begin", "headers", "interim headers", "end", "switch", "eof")

_TRANSITIONS: Final[dict[tuple[int, int], int]] = {
    (_IDLE, _BEGIN): _HEAD,
    (_HEAD, _HEADERS): _BODY,
    (_HEAD, _INTERIM_HEADERS): _INTERIM,
    (_INTERIM, _END): _IDLE,
    (_BODY, _END): _IDLE,
    (_IDLE, _SWITCH): _TUNNEL,
    (_IDLE, _EOF): _CLOSED,
    (_TUNNEL, _EOF): _CLOSED,
}


class _Unexpected(Exception):
    """An input the transition table has no entry for (becomes a ProtocolError)."""


def _next_state(state: int, event: int) -> int:
    next_state = _TRANSITIONS.get((state, event))
    if next_state is None:
        raise _Unexpected(f"unexpected {_INPUT_NAMES[event]} while {_STATE_NAMES[state]}")
    return next_state


# Headers the core reads while parsing; by length first, since most headers are none of them.
_HOST: Final = 0
_CONTENT_LENGTH: Final = 1
_TRANSFER_ENCODING: Final = 2
_EXPECT: Final = 3
_CONNECTION: Final = 4
_REQUEST_WATCH: Final = {
    b"host": _HOST,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"expect": _EXPECT,
    b"connection": _CONNECTION,
}
_RESPONSE_WATCH: Final = {
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
}
_WATCH_LENGTHS: Final = frozenset(map(len, _REQUEST_WATCH))

# Headers a request's Connection header may not nominate for removal: framing
# (dropping Content-Length while forwarding the body makes the body a second
# request upstream), where the request goes, what the proxy itself sets or
# trusts. Envoy's codec refuses the X-Forwarded-* ones and pseudo-headers
# (400, http1.connection_header_rejected); the rest are the same mistake here.
PROTECTED_FROM_CONNECTION: Final = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-envoy-peer-metadata",
        b"x-envoy-peer-metadata-id",
    }
)
MAX_CONNECTION_TOKENS: Final = 10  # Envoy refuses a Connection header with 10 or more


class _Cut(Exception):
    """Raised from a callback to stop llhttp where httptools cannot tell it that
    a response has no body (to HEAD) or becomes a tunnel (to CONNECT)."""


class _Parser(Generic[Event]):
    """What requests and responses share: callbacks, the gate, limits, errors.

    The callbacks are the hot path: each runs once per header or per message,
    so they read module constants and inline the table lookup."""

    _error: type[ProtocolError] = ProtocolError
    _watch: dict[bytes, int] = {}

    def __init__(self, max_head: int = DEFAULT_MAX_HEAD) -> None:
        self.max_head = max_head
        self._parser = self._new_parser()
        self._state = _IDLE
        # Callbacks append to _sink: this feed's list, or _held once a message has ended.
        self._live: list[Any] = []
        self._sink = self._live
        self._held: list[Any] = []
        self._gated = False
        self._failure: ProtocolError | None = None
        self._quiet = 0  # bytes fed since the last event, to bound what httptools buffers
        self._fields: Headers = []
        self._head_size = 0
        self._content_length: int | None = None
        self._transfer_encoding: bytes | None = None
        self._upgrade = False

    def _new_parser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = _STATE_NAMES[self._state]
        return f"<{type(self).__name__} {state} paused={self._gated} held={len(self._held)}>"

    @property
    def paused(self) -> bool:
        """The current message has ended: stop reading until next_message()."""
        return self._gated

    @property
    def idle(self) -> bool:
        """Between messages with nothing held: the next bytes start a message."""
        return self._state == _IDLE and not self._gated and not self._held

    # -- driving it -------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Event]:
        """Parse `data`; return the events of the current message found in it."""
        if self._state >= _TUNNEL:
            return self._feed_after_http(data)
        out: list[Any] = []
        self._live = out
        if not self._gated:
            self._sink = out
        held = len(self._held)
        self._run(data)
        if out or len(self._held) != held:
            self._quiet = 0
        elif self._state < _TUNNEL:
            self._count_quiet(len(data))
        return out

    def next_message(self) -> list[Event]:
        """Release the events held since the current message ended, up to the
        next message's end; raise the error met in them, if there was one."""
        held = self._held
        if not held and not self._gated and self._state != _FAILED:
            return []  # nothing was read ahead (the express way): nothing to do
        end = _message_end(held) if held else -1
        if end >= 0:
            self._held = self._sink = held[end:]
            return held[:end]
        self._gated = False
        self._held = []
        if self._state == _FAILED and self._failure is not None:
            raise self._failure
        return held

    def eof(self) -> list[Event]:
        """The peer closed its side: end a body that runs until close, or fail
        the message it cut off."""
        out: list[Any] = []
        if self._state == _CLOSED:
            return out
        if not self._gated:
            self._sink = self._live = out
        if self._state == _BODY and self._ends_at_eof():
            self.on_message_complete()
        if self._state in (_IDLE, _TUNNEL):
            self._state = _next_state(self._state, _EOF)
        elif self._state != _FAILED:
            self._fail(self._closed_error())
        elif not self._gated and self._failure is not None:
            raise self._failure
        return out

    # -- internals --------------------------------------------------------------------------

    def _run(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._switch(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            self._on_parser_error(exc)

    def _on_parser_error(self, exc: httptools.HttpParserError) -> None:
        cause = exc.__context__
        if isinstance(cause, ProtocolError):
            self._fail(cause)
        elif isinstance(cause, (_Unexpected, ValueError)):
            self._fail(self._error(str(cause)))
        else:
            self._fail(self._error(str(exc) or "malformed message"))

    def _fail(self, error: ProtocolError) -> None:
        """Stop parsing for good. An error in a held message waits until the
        shell reaches that message; one in the current message is raised now."""
        self._state = _FAILED
        self._failure = error
        if not self._gated:
            raise error

    def _feed_after_http(self, data: bytes) -> list[Event]:
        if self._state == _TUNNEL:
            if self._gated:
                self._held.append(Tunnel(data))
                return []
            return [Tunnel(data)]
        if self._state == _FAILED and self._gated:
            return []
        raise self._failure or self._error("bytes after the connection was closed")

    def _count_quiet(self, size: int) -> None:
        # Bytes that produce no event are being buffered inside httptools (a header
        # or trailer still arriving) or skipped (chunk extensions): bound both. This
        # is a memory bound with some slack; the callbacks' exact checks decide first.
        self._quiet += size
        if self._quiet > self.max_head + _QUIET_SLACK:
            if self._state == _HEAD:
                self._fail(self._error("header section too large", 431))
            else:
                self._fail(self._error("too many bytes without a complete element"))

    def _switch(self, rest: bytes) -> None:
        self._state = _next_state(self._state, _SWITCH)
        self._sink.append(Tunnel(rest))

    def _ends_at_eof(self) -> bool:
        return False

    def _closed_error(self) -> ProtocolError:
        return self._error("connection closed in the middle of a message", flag="DC")

    # -- shared httptools callbacks ---------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        value = value.rstrip(b" \t")  # llhttp strips leading whitespace only
        if len(name) in _WATCH_LENGTHS:
            self._watched(name, value)
        self._head_size += len(name) + len(value)
        self._fields.append((name, value))

    def on_body(self, data: bytes) -> None:
        self._sink.append(data)

    def on_message_complete(self) -> None:
        state = _TRANSITIONS.get((self._state, _END))
        self._state = _next_state(self._state, _END) if state is None else state
        sink = self._sink
        if self._fields:
            sink.append(self._trailers())
        else:
            sink.append(END)
        if not self._upgrade and sink is self._live:
            self._gated = True
            self._sink = self._held

    def _trailers(self) -> EndOfMessage:
        if self._head_size > self.max_head:
            raise self._error("trailer section too large", 431)
        return EndOfMessage(tuple(self._fields))

    def _watched(self, name: bytes, value: bytes) -> None:
        kind = self._watch.get(name.lower())
        if kind is None:
            return
        if self._state != _HEAD:
            raise self._error(f"{name.decode('latin-1')} is not allowed in trailers")
        if kind == _CONTENT_LENGTH:
            self._content_length = int(value)  # llhttp has checked digits and duplicates
        elif kind == _TRANSFER_ENCODING:
            te = self._transfer_encoding
            self._transfer_encoding = value if te is None else te + b", " + value
        else:
            self._watched_request(kind, value)

    def _watched_request(self, kind: int, value: bytes) -> None:
        raise NotImplementedError

    def _chunked(self, te: bytes) -> bool:
        """Whether the body is chunked. Anything but exactly `chunked` is refused,
        since forwarding would mean understanding the other codings."""
        if te.lower() == b"chunked":
            return True
        if te.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
            raise self._error("transfer codings other than chunked are not supported", 501)
        raise self._error("transfer-encoding must end in chunked")


def _message_end(events: list[Any]) -> int:
    """Index just past the first message's END (and the Tunnel after it), or -1."""
    for index, event in enumerate(events):
        if event.__class__ is EndOfMessage:
            index += 1
            while index < len(events) and events[index].__class__ is Tunnel:
                index += 1
            return index
    return -1


# -- requests -------------------------------------------------------------------------------


class RequestParser(_Parser[RequestEvent]):
    """Requests from a client. Feed it what the socket reads; act on what it returns."""

    _error = RequestError
    _watch = _REQUEST_WATCH
    _parser: httptools.HttpRequestParser

    def __init__(self, max_head: int = DEFAULT_MAX_HEAD) -> None:
        super().__init__(max_head)
        self._url = b""
        self._host: bytes | None = None
        self._expect = False
        self._nominated = 0  # tokens seen in this request's Connection headers

    def _new_parser(self) -> httptools.HttpRequestParser:
        return httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        state = _TRANSITIONS.get((self._state, _BEGIN))
        self._state = _next_state(self._state, _BEGIN) if state is None else state
        self._fields = []
        self._head_size = 0
        self._content_length = self._transfer_encoding = self._host = None
        self._upgrade = self._expect = False
        self._url = b""
        self._nominated = 0

    def _watched_request(self, kind: int, value: bytes) -> None:
        if kind == _HOST:
            if self._host is not None:
                raise RequestError("more than one Host header")
            self._host = value
        elif kind == _EXPECT:
            self._expect = value.lower() == b"100-continue"
        else:
            self._check_connection(value)

    def _check_connection(self, value: bytes) -> None:
        """Refuse a Connection header that nominates a protected header, or too
        many (Envoy: 400, http1.connection_header_rejected)."""
        for token in value.split(b","):
            token = token.strip().lower()
            if not token:
                continue
            self._nominated += 1
            if token in PROTECTED_FROM_CONNECTION or token[:1] == b":":
                name = token.decode("latin-1")
                raise RequestError(f"invalid nominated header in Connection: {name}")
        if self._nominated >= MAX_CONNECTION_TOKENS:
            raise RequestError("too many nominated headers in Connection")

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.max_head:
            raise RequestError("request target too long", 414)

    def on_headers_complete(self) -> None:
        state = _TRANSITIONS.get((self._state, _HEADERS))
        self._state = _next_state(self._state, _HEADERS) if state is None else state
        parser = self._parser
        version = _VERSIONS.get(parser.get_http_version())
        too_big = self._head_size + len(self._url) > self.max_head
        if version is not _HTTP11 or self._host is None or too_big:
            self._check_head(version)  # the uncommon cases, out of the way
        te = self._transfer_encoding
        head = RequestHead(
            parser.get_method(),
            self._url,
            version,  # type: ignore[arg-type]  # _check_head refused None
            self._fields,
            parser.should_keep_alive(),
            parser.should_upgrade(),
            self._expect and version is _HTTP11,  # RFC 9110 10.1.1: ignore it from 1.0
            self._content_length,
            False if te is None else self._chunked(te),
            self._host,
        )
        self._upgrade = head.upgrade
        self._fields = []  # trailers, if any, go here
        self._sink.append(head)

    def _check_head(self, version: bytes | None) -> None:
        if version is None:
            text = self._parser.get_http_version()
            raise RequestError(f"HTTP/{text} is not supported", 505)
        if self._head_size + len(self._url) > self.max_head:
            raise RequestError("request header section too large", 431)
        if self._host is None and version is _HTTP11 and self._url[:1] in (b"/", b"*"):
            raise RequestError("HTTP/1.1 request without Host")  # RFC 9112 3.2


# -- responses ------------------------------------------------------------------------------

_BODYLESS_METHODS: Final = frozenset({b"HEAD", b"CONNECT"})


class ResponseParser(_Parser[ResponseEvent]):
    """Responses from an upstream. Call next_message(method) before each request
    is sent: a response to HEAD has no body and a 2xx to CONNECT opens a tunnel,
    and the response's bytes alone do not say so."""

    _error = ResponseError
    _watch = _RESPONSE_WATCH
    _parser: httptools.HttpResponseParser

    def __init__(self, max_head: int = DEFAULT_MAX_HEAD) -> None:
        super().__init__(max_head)
        self._method = b"GET"
        self._cut = False
        self._reason = b""
        self._until_eof = False

    def _new_parser(self) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(self)

    def next_message(self, method: bytes = b"GET") -> list[ResponseEvent]:
        """Release held events, and say which request the next response answers."""
        self._method = method
        return super().next_message()

    def _ends_at_eof(self) -> bool:
        return self._until_eof

    def _closed_error(self) -> ProtocolError:
        return ResponseError("upstream closed the connection mid-response", flag="UC")

    def on_message_begin(self) -> None:
        state = _TRANSITIONS.get((self._state, _BEGIN))
        self._state = _next_state(self._state, _BEGIN) if state is None else state
        self._fields = []
        self._head_size = 0
        self._content_length = self._transfer_encoding = None
        self._upgrade = self._until_eof = False
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        if len(self._reason) > self.max_head:
            raise ResponseError("upstream reason phrase too long")

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        interim = status < 200 and status != 101
        event = _INTERIM_HEADERS if interim else _HEADERS
        self._state = _next_state(self._state, event)
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            raise ResponseError(f"upstream spoke HTTP/{parser.get_http_version()}")
        if self._head_size > self.max_head:
            raise ResponseError("upstream response header section too large")
        method = self._method
        switch = status == 101 or (method == b"CONNECT" and 200 <= status < 300)
        te = self._transfer_encoding
        chunked = False if te is None else self._chunked(te)
        head = ResponseHead(
            status, self._reason, version, self._fields, parser.should_keep_alive(), switch,
            self._content_length, chunked,
        )  # fmt: skip
        self._fields = []
        self._sink.append(head)
        if not interim:
            self._final_head(head, method)

    def _final_head(self, head: ResponseHead, method: bytes) -> None:
        self._method = b"GET"
        self._upgrade = head.upgrade
        self._until_eof = (
            not head.chunked and head.content_length is None and head.status not in (204, 304)
        )
        if method in _BODYLESS_METHODS and (head.upgrade or method == b"HEAD"):
            self.on_message_complete()
            raise _Cut

    def on_message_complete(self) -> None:
        if self._state == _INTERIM:
            self._state = _next_state(self._state, _END)  # 1xx: no END, the final head follows
        else:
            super().on_message_complete()

    def _run(self, data: bytes) -> None:
        if self._method in _BODYLESS_METHODS and self._state <= _HEAD:
            self._run_until_cut(data)
        else:
            super()._run(data)

    def _run_until_cut(self, data: bytes) -> None:
        """Feed line by line, so that when on_headers_complete cuts llhttp short
        (always at the end of a line) we know exactly where the head ended."""
        start, size = 0, len(data)
        while start < size:
            stop = data.find(b"\n", start) + 1 or size
            super()._run(data[start:stop])
            start = stop
            if self._cut:
                self._cut = False
                self._parser = self._new_parser()  # llhttp stays failed after a callback error
                rest = data[start:]
                if self._upgrade:
                    self._switch(rest)
                elif rest:
                    super()._run(rest)
                return
            if self._state == _BODY:
                super()._run(data[start:])  # a CONNECT refused, with a body
                return
            if self._state >= _TUNNEL:
                return

    def _on_parser_error(self, exc: httptools.HttpParserError) -> None:
        if isinstance(exc.__context__, _Cut):
            self._cut = True
        else:
            super()._on_parser_error(exc)


# -- writing --------------------------------------------------------------------------------

# Indexed by status, b"" where HTTPStatus has none: compiled, a list item
# read (about 20 instructions) where a dict's get hashed a new int object
# (about 200), once per response.
_STATUS_LINES: Final[list[bytes]] = [b""] * 600
for _known in HTTPStatus:
    _STATUS_LINES[_known.value] = b"HTTP/1.1 %d %s" % (_known.value, _known.phrase.encode())
_CHUNKED_END_OF_HEAD: Final = b"transfer-encoding: chunked\r\n\r\n"


def status_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def status_line(status: int) -> bytes:
    """`HTTP/1.1 200 OK`, with the standard reason phrase and without CRLF."""
    if 0 <= status < 600 and _STATUS_LINES[status]:
        return _STATUS_LINES[status]
    return b"HTTP/1.1 %d %s" % (status, status_phrase(status))


def serialize_request_head(
    method: bytes, target: bytes, headers: Headers, *, chunked: bool = False
) -> bytes:
    """An HTTP/1.1 request head. Headers go out as given: strip hop-by-hop ones
    first; `chunked` adds the framing header for a body sent with encode_chunk."""
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(_CHUNKED_END_OF_HEAD if chunked else b"\r\n")
    return b"".join(parts)


def serialize_response_head(status: int, headers: Headers, *, chunked: bool = False) -> bytes:
    """An HTTP/1.1 response head with the standard reason phrase."""
    parts = [status_line(status), b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(_CHUNKED_END_OF_HEAD if chunked else b"\r\n")
    return b"".join(parts)


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; empty data gives nothing, since an empty
    chunk would end the body."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


def encode_last_chunk(trailers: tuple[Header, ...] | Headers = ()) -> bytes:
    """The end of a chunked body, with trailer fields if there are any."""
    if not trailers:
        return LAST_CHUNK
    parts = [b"0\r\n"]
    for name, value in trailers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def error_response(
    status: int, body: bytes = b"", headers: Headers | None = None, *, close: bool = True
) -> bytes:
    """A complete response the proxy answers by itself (bad request, no route,
    upstream failure...), e.g. with x-pilotfish-flags among `headers`."""
    parts = [
        status_line(status),
        b"\r\ncontent-length: %d\r\n" % len(body),
    ]
    if body:
        parts.append(b"content-type: text/plain\r\n")
    for name, value in headers or ():
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"connection: close\r\n\r\n" if close else b"\r\n")
    parts.append(body)
    return b"".join(parts)


# -- helpers for forwarding -----------------------------------------------------------------

_HOP_BY_HOP: Final = frozenset(
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
_HOP_LENGTHS: Final = frozenset(map(len, _HOP_BY_HOP))
_CONNECTION_UPGRADE: Final = (b"connection", b"upgrade")


def strip_hop_by_hop(headers: Headers, *, tunnel: bool = False) -> Headers:
    """The headers to forward: without hop-by-hop ones and those Connection names,
    except the protected ones (requests nominating those were refused; an
    upstream's response keeps its Content-Length, or the client could not
    tell where the response ends).

    With `tunnel` (forwarding an Upgrade), Upgrade is kept and `connection:
    upgrade` added, so the next hop sees the upgrade request too. Returns
    `headers` itself when there is nothing to drop."""
    named: set[bytes] = set()
    found = False
    for name, value in headers:
        if len(name) in _HOP_LENGTHS and name.lower() in _HOP_BY_HOP:
            found = True
            if len(name) == 10 and name.lower() == b"connection":
                named.update(token.strip().lower() for token in value.split(b","))
    if not found:
        return headers
    drop = _HOP_BY_HOP | (named - PROTECTED_FROM_CONNECTION)
    if tunnel:
        drop = drop - {b"upgrade"}
    kept = [header for header in headers if header[0].lower() not in drop]
    if tunnel and any(name.lower() == b"upgrade" for name, _ in kept):
        kept.append(_CONNECTION_UPGRADE)
    return kept


def get_header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header `name`, which must be given in lowercase."""
    size = len(name)
    for key, value in headers:
        if len(key) == size and key.lower() == name:
            return value
    return None


_SCHEMES: Final = (b"http://", b"https://")


def split_target(target: bytes) -> tuple[bytes | None, bytes]:
    """(authority, origin-form target): `http://reviews:9080/p?q` gives
    (b"reviews:9080", b"/p?q"); an origin-form target gives (None, target)."""
    if target[:1] == b"/":
        return None, target
    lowered = target[:8].lower()
    for scheme in _SCHEMES:
        if lowered.startswith(scheme):
            rest = target[len(scheme) :]
            break
    else:
        return None, target
    end = len(rest)
    for mark in (b"/", b"?", b"#"):
        found = rest.find(mark)
        if 0 <= found < end:
            end = found
    authority = rest[:end].rpartition(b"@")[2]  # userinfo is never forwarded
    path = rest[end:].partition(b"#")[0]
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority, path


class RequestLine(Protocol):
    """What says where a request goes: a RequestHead, or the express way's request."""

    method: bytes
    target: bytes
    host: bytes | None


def request_authority(head: RequestLine) -> tuple[bytes | None, bytes]:
    """Where a request goes, (authority, path): an absolute-form target wins over
    Host (RFC 9112 3.2.2); CONNECT's target is the authority itself."""
    return target_authority(head.method, head.target, head.host)


def target_authority(
    method: bytes, target: bytes, host: bytes | None
) -> tuple[bytes | None, bytes]:
    """request_authority from the head's fields, for a caller that reads them
    natively (through the RequestLine protocol, each read is a generic getattr)."""
    if method == b"CONNECT":
        return target, b""
    authority, path = split_target(target)
    return (host if authority is None else authority), path
