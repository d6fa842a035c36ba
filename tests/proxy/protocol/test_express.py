"""The express reading of HTTP/1.1: a subset of what protocol/http1 accepts, with
the same meaning, and None for everything else (the long way then decides)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from http1_support import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfish.proxy.grpc import is_grpc_content_type
from pilotfish.proxy.protocol.express import (
    ExpressRequest,
    ExpressResponse,
    encode_lines,
    express_events,
    parse_request,
    parse_response,
    splice,
)
from pilotfish.proxy.protocol.http1 import (
    DEFAULT_MAX_HEAD,
    END,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    get_header,
)

GET = b"GET /reviews/1?x=y HTTP/1.1\r\nHost: reviews:9080\r\nUser-Agent: curl/8.5\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-A: b\r\n\r\nhello"


def long_way(data: bytes) -> list[object]:
    return requests([data])


class TestRequests:
    def test_a_plain_get(self) -> None:
        req = parse_request(GET)
        assert req is not None
        assert (req.method, req.target, req.host, req.keep_alive) == (
            b"GET",
            b"/reviews/1?x=y",
            b"reviews:9080",
            True,
        )
        assert req.headers() == [(b"host", b"reviews:9080"), (b"user-agent", b"curl/8.5")]
        assert req.cuts == [] and req.body == b"" and req.grpc is False

    def test_a_post_with_its_whole_body(self) -> None:
        req = parse_request(b"POST /r HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
        assert req is not None and (req.content_length, req.body) == (5, b"hello")

    def test_hop_by_hop_lines_are_cut_and_the_rest_kept_verbatim(self) -> None:
        data = (
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n"
            b"X-Forwarded-For: 10.0.0.1\r\nX-Mixed-Case: V \r\n\r\n"
        )
        req = parse_request(data)
        assert req is not None and req.forwarded_for == b"10.0.0.1"
        assert splice(req.lines, req.cuts) == b"\r\nHost: h\r\nX-Mixed-Case: V "

    def test_cuts_are_each_message_s_own(self) -> None:
        """A message with no cuts shares its empty list with every other such
        message: one with cuts must not add them to it."""
        cut = parse_request(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n"
            b"x-envoy-peer-metadata: abc\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
        )
        other = parse_request(b"GET / HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n")
        plain = parse_request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        answer = parse_response(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        )
        plain_answer = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert cut is not None and other is not None and plain is not None
        assert answer is not None and plain_answer is not None
        assert splice(cut.lines, cut.cuts) == b"\r\nHost: h\r\nx-envoy-peer-metadata: abc"
        assert len(cut.peer_cuts) == 1 and len(other.cuts) == 1 and len(answer.cuts) == 1
        assert cut.cuts is not other.cuts
        assert plain.cuts == plain.peer_cuts == plain_answer.cuts == plain_answer.peer_cuts == []

    def test_connection_close_is_understood(self) -> None:
        req = parse_request(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert req is not None and req.keep_alive is False

    def test_istio_peer_metadata_is_set_aside(self) -> None:
        data = b"GET / HTTP/1.1\r\nHost: h\r\nx-envoy-peer-metadata: abc\r\nx-envoy-peer-metadata-id: i\r\n\r\n"
        req = parse_request(data)
        assert req is not None and req.peer == b"abc" and req.cuts == []
        assert splice(req.lines, req.peer_cuts) == b"\r\nHost: h"

    def test_an_absolute_form_target_needs_no_host(self) -> None:
        req = parse_request(b"GET http://reviews:9080/a HTTP/1.1\r\n\r\n")
        assert req is not None and req.host is None and req.target == b"http://reviews:9080/a"

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(GET[:-2], id="partial head"),
            pytest.param(GET + GET, id="pipelined"),
            pytest.param(
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhel", id="partial body"
            ),
            pytest.param(
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", id="chunked"
            ),
            pytest.param(
                b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                id="upgrade",
            ),
            pytest.param(
                b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
                id="expect",
            ),
            pytest.param(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n", id="HTTP/1.0"),
            pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two hosts"),
            pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="no host"),
            pytest.param(
                b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
                id="two lengths",
            ),
            pytest.param(
                b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", id="bad length"
            ),
            pytest.param(
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: x-secret\r\n\r\n",
                id="connection names a header",
            ),
            pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n", id="space in a name"),
            pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", id="obs-fold"),
            pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nA: b\x00c\r\n\r\n", id="NUL in a value"),
            pytest.param(b"GET / HTTP/1.1\nHost: h\n\n", id="bare LF"),
            pytest.param(b"BREW / HTTP/1.1\r\nHost: h\r\n\r\n", id="unknown method"),
            pytest.param(b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n", id="CONNECT"),
            pytest.param(b"GET HTTP/1.1\r\nHost: h\r\n\r\n", id="no target"),
            pytest.param(b"GET /\r\nHost: h\r\n\r\n", id="no version"),
            pytest.param(b"GET \r\n\r\n", id="a method alone"),
        ],
    )
    def test_anything_else_goes_the_long_way(self, data: bytes) -> None:
        assert parse_request(data) is None

    @pytest.mark.parametrize(
        ("data", "body"),
        [
            pytest.param(GET + b"\r\n", None, id="a blank line after the head"),
            pytest.param(
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n\r\n\r\n", b"\r\n\r\n",
                id="a body that is a blank line",
            ),
        ],
    )  # fmt: skip
    def test_a_blank_line_inside_a_read_that_ends_with_one(
        self, data: bytes, body: bytes | None
    ) -> None:
        # A read that ends with a blank line is split whole: a blank line
        # before the last leaves an empty line there, which is no header line.
        req = parse_request(data)
        if body is None:  # bytes after the head: the long way's to read
            assert req is None
        else:
            assert req is None or req.body == body
            assert long_way(data)[1:] == [body, END]

    @pytest.mark.parametrize(
        "spell", [bytes.lower, bytes.title, bytes.upper, bytes.swapcase], ids=lambda f: f.__name__
    )
    def test_special_headers_are_read_however_spelled(
        self, spell: Callable[[bytes], bytes]
    ) -> None:
        lines = [
            b"Host: h", b"X-Forwarded-For: 10.0.0.1", b"X-Forwarded-Proto: http",
            b"X-Request-Id: r", b"Content-Type: application/grpc", b"Content-Length: 2",
            b"Connection: close", b"Keep-Alive: 5", b"TE: trailers",
            b"X-Envoy-Peer-Metadata: m", b"X-Envoy-Peer-Metadata-Id: i", b"X-Other: v",
        ]  # fmt: skip
        names = [line.partition(b":")[0] for line in lines]
        spelled = [spell(name) + line[len(name) :] for name, line in zip(names, lines, strict=True)]
        req = parse_request(b"POST /s/M HTTP/1.1\r\n" + b"\r\n".join(spelled) + b"\r\n\r\nok")
        assert req is not None
        assert (req.host, req.forwarded_for, req.has_proto, req.has_request_id) == (
            b"h", b"10.0.0.1", True, True,
        )  # fmt: skip
        assert (req.content_length, req.body, req.keep_alive, req.grpc, req.peer) == (
            2, b"ok", False, True, b"m",
        )  # fmt: skip
        kept = splice(req.lines, req.cuts + req.peer_cuts)
        assert kept == b"".join(b"\r\n" + spelled[i] for i in (0, 2, 3, 4, 5, 11))

    def test_a_head_over_the_limit_goes_the_long_way(self) -> None:
        assert parse_request(GET, max_head=len(GET) - 1) is None
        assert parse_request(GET, max_head=len(GET)) is not None

    def test_a_long_head_is_read_whole(self) -> None:
        lines = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 100) for i in range(500))
        data = b"GET / HTTP/1.1\r\n" + lines + b"Host: h\r\nContent-Length: 2\r\n\r\nok"
        req = parse_request(data, max_head=len(data))
        assert req is not None and (req.host, req.content_length, req.body) == (b"h", 2, b"ok")
        assert len(req.headers()) == 502
        assert parse_request(data, max_head=len(data) - 3) is None

    def test_a_head_split_across_reads_is_taken_only_whole(self) -> None:
        data = b"POST /r HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        assert all(parse_request(data[:cut]) is None for cut in range(len(data)))
        assert parse_request(data) is not None

    @pytest.mark.parametrize(
        ("lines", "grpc"),
        [
            pytest.param(b"Content-Type: application/grpc", True, id="application/grpc"),
            pytest.param(b"content-type: application/grpc+proto", True, id="+proto"),
            pytest.param(b"CONTENT-TYPE:application/grpc;x=y", True, id="parameters"),
            pytest.param(b"Content-Type: application/grpcx", False, id="another type"),
            pytest.param(b"Content-Type: text/plain", False, id="text"),
            pytest.param(b"X-A: application/grpc", False, id="in another header"),
            pytest.param(
                b"Content-Type: text/plain\r\nContent-Type: application/grpc", False,
                id="the first of two counts",
            ),
            pytest.param(
                b"Content-Type: application/grpc\r\nContent-Type: text/plain", True,
                id="the first of two, gRPC",
            ),
        ],
    )  # fmt: skip
    def test_the_parse_says_whether_a_request_is_grpc(self, lines: bytes, grpc: bool) -> None:
        req = parse_request(b"POST /s/M HTTP/1.1\r\nHost: h\r\n" + lines + b"\r\n\r\n")
        assert req is not None and req.grpc is grpc


class TestResponses:
    def test_upper_case_names_and_tabs_are_read(self) -> None:
        resp = parse_response(b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH:\t2 \r\nCONNECTION: Close\r\n\r\nok")
        assert resp is not None and (resp.content_length, resp.keep_alive) == (2, False)

    def test_a_head_split_across_reads_is_taken_only_whole(self) -> None:
        assert all(parse_response(OK[:cut]) is None for cut in range(OK.index(b"\r\n\r\n") + 4))

    def test_a_whole_response(self) -> None:
        resp = parse_response(OK)
        assert resp is not None
        assert (resp.status, resp.content_length, resp.body, resp.keep_alive) == (
            200,
            5,
            b"hello",
            True,
        )
        assert splice(resp.lines, resp.cuts) == b"\r\nContent-Length: 5\r\nX-A: b"

    def test_the_start_of_a_body(self) -> None:
        resp = parse_response(OK[:-2])
        assert resp is not None and resp.body == b"hel"
        assert express_events(resp)[1:] == [b"hel"]  # no END: the rest is to come

    def test_connection_close(self) -> None:
        resp = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        assert resp is not None and resp.keep_alive is False and resp.status == 503

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(b"HTTP/1.1 200 OK\r\n\r\nbody", id="no length"),
            pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", id="chunked"),
            pytest.param(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", id="204"),
            pytest.param(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", id="304"),
            pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n", id="interim"),
            pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ws\r\n\r\n", id="101"),
            pytest.param(OK + b"extra", id="bytes past the body"),
            pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", id="HTTP/1.0"),
            pytest.param(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
                id="two lengths",
            ),
            pytest.param(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\nx",
                id="two lengths, two spellings",
            ),
            pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\nx", id="space before colon"),
            pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n fold\r\n\r\nx", id="obs-fold"),
            pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nA: \x00\r\n\r\nx", id="NUL"),
            pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1\nA: b\r\n\r\nx", id="bare LF"),
            pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1\rA: b\r\n\r\nx", id="bare CR"),
        ],
    )
    def test_anything_else_goes_the_long_way(self, data: bytes) -> None:
        assert parse_response(data) is None


# -- agreement with protocol/http1 ----------------------------------------------------------

NAMES = st.sampled_from(
    [b"Host", b"host", b"Content-Length", b"Connection", b"Keep-Alive", b"TE", b"Upgrade",
     b"Transfer-Encoding", b"X-Forwarded-For", b"x-request-id", b"Accept", b"X-A", b"Bad Name",
     b"x-envoy-peer-metadata", b"Expect", b"", b"Content-Type", b"content-type"]
)  # fmt: skip
VALUES = st.sampled_from(
    [b"h", b" spaced \t", b"0", b"5", b"-1", b"close", b"keep-alive", b"x-a", b"chunked",
     b"100-continue", b"", b"a\x00b", b"caf\xc3\xa9", b"a\rb", b"application/grpc",
     b"application/grpc+proto", b"application/grpc-web"]
)  # fmt: skip
LINES = st.lists(st.tuples(NAMES, VALUES), max_size=6)
METHODS = st.sampled_from([b"GET", b"POST", b"HEAD", b"DELETE", b"BREW", b"CONNECT", b"get"])
TARGETS = st.sampled_from([b"/", b"/a?b=c", b"http://h:1/p", b"*", b"/a b", b"/%zz", b""])
VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1"])
BODIES = st.sampled_from([b"", b"hello", b"hel", b"GET / HTTP/1.1\r\n\r\n"])


def message(first_line: bytes, lines: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    head = b"".join(b"%s: %s\r\n" % pair for pair in lines)
    return first_line + b"\r\n" + head + b"\r\n" + body


@settings(max_examples=400, deadline=None)
@given(METHODS, TARGETS, VERSIONS, LINES, BODIES)
def test_an_express_request_is_what_the_long_way_reads(
    method: bytes, target: bytes, version: bytes, lines: list[tuple[bytes, bytes]], body: bytes
) -> None:
    data = message(b"%s %s %s" % (method, target, version), lines, body)
    req = parse_request(data)
    if req is not None:
        assert_reads_like_the_long_way(data, req)


# Request lines from parts that may be missing or run together ("GET HTTP/1.1",
# "GET /", "GET"): compiled, a target sliced from "GET HTTP/1.1" had its start
# past its stop and mypyc 2.4.1's bytes slice raised SystemError.
FIRST_LINES = st.tuples(
    st.sampled_from([b"GET", b"POST", b"", b"GET\x00"]),
    st.sampled_from([b" ", b"", b"\t"]),
    st.sampled_from([b"/", b"", b"*", b"/a b"]),
    st.sampled_from([b" ", b""]),
    st.sampled_from([b"HTTP/1.1", b"", b"HTTP/1.0"]),
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(FIRST_LINES, LINES, BODIES)
def test_a_request_line_with_parts_missing_goes_the_long_way_or_reads_the_same(
    first: bytes, lines: list[tuple[bytes, bytes]], body: bytes
) -> None:
    data = message(first, [(b"Host", b"h"), *lines], body)
    req = parse_request(data)
    if req is not None:
        assert_reads_like_the_long_way(data, req)


def assert_reads_like_the_long_way(data: bytes, req: ExpressRequest) -> None:
    events = long_way(data)
    head = events[0]
    assert isinstance(head, RequestHead)
    assert (head.method, head.target, head.host) == (req.method, req.target, req.host)
    # The same head values as the long way's (the express one keeps the raw lines too).
    same = ("method", "target", "version", "keep_alive", "upgrade", "expect_continue",
            "content_length", "chunked", "host")  # fmt: skip
    assert {f: getattr(req, f) for f in same} == {f: getattr(head, f) for f in same}
    assert [(n.lower(), v) for n, v in head.headers] == req.headers()
    assert events[1:] == ([req.body, END] if req.body else [END])
    # What Exchange.is_grpc reads from the long way's headers.
    assert req.grpc is is_grpc_content_type(get_header(req.headers(), b"content-type"))


def test_header_lines_are_encoded_as_the_head_has_them() -> None:
    assert encode_lines([(b"x-a", b"1"), (b"X-B", b"")]) == b"\r\nx-a: 1\r\nX-B: "
    assert encode_lines([]) == b""


STATUSES = st.sampled_from(
    [b"200 OK", b"503 Service Unavailable", b"204 No Content", b"101 X", b"99 X", b"200"]
)


@settings(max_examples=400, deadline=None)
@given(STATUSES, VERSIONS, LINES, BODIES)
def test_an_express_response_is_what_the_long_way_reads(
    status: bytes, version: bytes, lines: list[tuple[bytes, bytes]], body: bytes
) -> None:
    data = message(version + b" " + status, lines, body)
    resp = parse_response(data)
    if resp is None:
        return
    parser = ResponseParser()
    parser.next_message(b"GET")
    events = parser.feed(data)
    assert_same(events, resp)


def assert_same(events: list[object], resp: ExpressResponse) -> None:
    head, express_head = events[0], express_events(resp)[0]
    assert isinstance(head, ResponseHead) and isinstance(express_head, ResponseHead)
    assert (head.status, head.keep_alive, head.content_length) == (
        express_head.status,
        express_head.keep_alive,
        express_head.content_length,
    )
    assert [(n.lower(), v) for n, v in head.headers] == express_head.headers
    assert events[1:] == express_events(resp)[1:]


# -- hostile bytes: the scan never takes what the long way refuses ---------------------------

PIECES = [b"a", b"H", b"-", b"0", b"\r", b"\n", b"\r\n", b"\x00", b"\x01", b"\x0b", b"\x7f",
          b"\x80", b"\xff", b"\t", b" ", b":", b"\r\n "]  # fmt: skip
RAW = st.lists(st.sampled_from(PIECES), max_size=6).map(b"".join)
HOSTILE_LINES = st.lists(
    st.tuples(
        st.one_of(NAMES, RAW, st.sampled_from([b"HOST", b"content-LENGTH", b" folded", b"X\tA"])),
        st.one_of(VALUES, RAW, st.sampled_from([b"\th\t", b"99999999999999999999", b"0" * 15])),
    ),
    max_size=6,
)
MAX_HEADS = st.one_of(st.just(DEFAULT_MAX_HEAD), st.integers(min_value=0, max_value=120))


@settings(max_examples=600, deadline=None)
@given(METHODS, TARGETS, HOSTILE_LINES, BODIES, MAX_HEADS)
def test_a_hostile_request_goes_the_long_way_or_reads_the_same(
    method: bytes, target: bytes, lines: list[tuple[bytes, bytes]], body: bytes, max_head: int
) -> None:
    data = message(b"%s %s HTTP/1.1" % (method, target), lines, body)
    req = parse_request(data, max_head)
    if req is None:
        return
    events = requests([data], RequestParser(max_head))
    head = events[0]
    assert isinstance(head, RequestHead)
    assert (head.method, head.target, head.host, head.content_length, head.keep_alive) == (
        req.method, req.target, req.host, req.content_length, req.keep_alive,
    )  # fmt: skip
    assert [(n.lower(), v) for n, v in head.headers] == req.headers()
    assert events[1:] == ([req.body, END] if req.body else [END])


@settings(max_examples=600, deadline=None)
@given(STATUSES, HOSTILE_LINES, BODIES, MAX_HEADS)
def test_a_hostile_response_goes_the_long_way_or_reads_the_same(
    status: bytes, lines: list[tuple[bytes, bytes]], body: bytes, max_head: int
) -> None:
    data = message(b"HTTP/1.1 " + status, lines, body)
    resp = parse_response(data, max_head)
    if resp is None:
        return
    parser = ResponseParser(max_head)
    parser.next_message(b"GET")
    assert_same(parser.feed(data), resp)


# -- and takes the common message: a scan that refused too much would not show above ---------

TOKENS = st.text(alphabet="abcXYZ019!#$%&'*+-.^_`|~", min_size=1, max_size=8).map(str.encode)
FIELD = st.binary(max_size=12).map(lambda b: bytes(c for c in b if c == 9 or 32 <= c != 127))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(TOKENS, FIELD), max_size=6))
def test_plain_lines_are_taken_as_they_are(lines: list[tuple[bytes, bytes]]) -> None:
    lines = [(b"x-" + name, value) for name, value in lines]  # none the proxy acts on
    data = message(b"GET /p HTTP/1.1", [(b"Host", b"h"), *lines], b"")
    req = parse_request(data)
    assert req is not None and req.host == b"h" and req.cuts == []
    assert req.headers() == [(b"host", b"h")] + [
        (name.lower(), value.strip(b" \t")) for name, value in lines
    ]
    resp = parse_response(message(b"HTTP/1.1 200 OK", [(b"Content-Length", b"0"), *lines], b""))
    assert resp is not None and resp.content_length == 0


@pytest.mark.parametrize(
    ("line", "taken"),
    [
        pytest.param(b"HOST: h", True, id="an upper-case name"),
        pytest.param(b"Host:\t h \t", True, id="tabs around a value"),
        pytest.param(b"Host: h\r\nX-Empty:", True, id="an empty value"),
        pytest.param(b"Host: caf\xc3\xa9", True, id="obs-text in a value"),
        pytest.param(b"Host: h\rX", False, id="a bare CR"),
        pytest.param(b"Host: h\rXX-A: y", False, id="a bare CR before what looks like a line"),
        pytest.param(b"Host: h\nX: y", False, id="a bare LF"),
        pytest.param(b"Host: h\x7f", False, id="DEL in a value"),
        pytest.param(b"Host: h\r\nX\x80: y", False, id="obs-text in a name"),
        pytest.param(b"Host: h\r\nX\t: y", False, id="a tab before the colon"),
        pytest.param(b"Host : h", False, id="a space before the colon"),
        pytest.param(b"Host: h\r\nX-A y", False, id="no colon"),
        pytest.param(b"Host: h\r\nX-A", False, id="a name alone"),
        pytest.param(b"Host: h\r\n: y", False, id="an empty name"),
        pytest.param(b"Host: h\r\nContent-Length: 1234567890123456", False, id="16 digits"),
    ],
)
def test_the_edges_of_a_header_line(line: bytes, taken: bool) -> None:
    assert (parse_request(b"GET / HTTP/1.1\r\n" + line + b"\r\n\r\n") is not None) is taken
