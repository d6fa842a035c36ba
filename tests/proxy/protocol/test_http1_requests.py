"""The downstream side of the HTTP/1.1 core: requests from clients, as events."""

from __future__ import annotations

import pytest
from http1_support import drain, merge, requests, splits

from pilotfish.proxy.protocol.http1 import (
    END,
    EndOfMessage,
    RequestError,
    RequestHead,
    RequestParser,
    Tunnel,
    request_authority,
    split_target,
)

GET = b"GET /reviews/1?x=y HTTP/1.1\r\nHost: reviews:9080\r\nUser-Agent: curl/8.5\r\nAccept: */*\r\n\r\n"
POST = b"POST /ratings HTTP/1.1\r\nHost: ratings\r\nContent-Length: 11\r\n\r\nhello world"
CHUNKED = (
    b"PUT /upload HTTP/1.1\r\nHost: up\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'5;name=value;quoted="a b"\r\nhello\r\n'
    b"6\r\n world\r\n"
    b"0\r\nX-Checksum: abc123\r\nX-Other: 1\r\n\r\n"
)


def head(
    method: bytes = b"GET",
    target: bytes = b"/",
    headers: list[tuple[bytes, bytes]] | None = None,
    **fields: object,
) -> RequestHead:
    values: dict[str, object] = {
        "version": b"1.1",
        "keep_alive": True,
        "upgrade": False,
        "expect_continue": False,
        "content_length": None,
        "chunked": False,
        "host": None,
    }
    values.update(fields)
    return RequestHead(method, target, headers=headers or [], **values)  # type: ignore[arg-type]


def test_a_get_becomes_a_head_and_an_end() -> None:
    assert RequestParser().feed(GET) == [
        head(
            target=b"/reviews/1?x=y",
            headers=[(b"Host", b"reviews:9080"), (b"User-Agent", b"curl/8.5"), (b"Accept", b"*/*")],
            host=b"reviews:9080",
        ),
        END,
    ]


def test_header_names_keep_their_case_and_values_lose_surrounding_whitespace() -> None:
    events = RequestParser().feed(b"GET / HTTP/1.1\r\nHOST:  a \r\nX-Tab:\tv\t\r\nX-Empty:\r\n\r\n")
    assert events[0].headers == [(b"HOST", b"a"), (b"X-Tab", b"v"), (b"X-Empty", b"")]
    assert events[0].host == b"a"


def test_a_body_with_content_length_is_streamed_as_it_arrives() -> None:
    parser = RequestParser()
    first = parser.feed(POST[:-6])
    assert first[0].content_length == 11 and first[1:] == [b"hello"]
    assert parser.feed(b" wor") == [b" wor"]
    assert parser.feed(b"ld") == [b"ld", END]


@pytest.mark.parametrize("message", [GET, POST, CHUNKED, GET + POST + CHUNKED + GET])
def test_every_split_gives_the_same_events(message: bytes) -> None:
    whole = requests([message])
    for chunks in splits(message):
        assert requests(chunks) == whole


def test_chunked_body_with_extensions_and_trailers() -> None:
    events = RequestParser().feed(CHUNKED)
    assert events[0].chunked and events[0].content_length is None
    assert merge(events[1:]) == [
        b"hello world",
        EndOfMessage(((b"X-Checksum", b"abc123"), (b"X-Other", b"1"))),
    ]


def test_transfer_encoding_chunked_is_case_insensitive() -> None:
    events = RequestParser().feed(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
    )
    assert events[0].chunked and events[1:] == [b"x", END]


class TestPipelining:
    def test_the_next_request_waits_until_the_shell_asks(self) -> None:
        parser = RequestParser()
        events = parser.feed(GET + POST + GET)
        assert events == requests([GET])
        assert parser.paused
        assert parser.feed(b"") == []
        assert parser.next_message() == requests([POST])
        assert parser.paused
        assert parser.next_message() == requests([GET])
        assert parser.paused  # the third request has ended too
        assert parser.next_message() == []
        assert not parser.paused

    def test_a_held_request_keeps_arriving_while_paused(self) -> None:
        parser = RequestParser()
        assert parser.feed(GET + POST[:50]) == requests([GET])
        assert parser.feed(POST[50:]) == []  # a shell should have stopped reading
        assert merge(parser.next_message()) == requests([POST])

    def test_after_release_a_half_received_request_continues_live(self) -> None:
        parser = RequestParser()
        parser.feed(GET + POST[:-3])
        released = parser.next_message()
        assert not parser.paused
        assert parser.feed(b"rld") == [b"rld", END]
        assert merge([*released, b"rld", END]) == requests([POST])

    def test_a_bad_request_behind_a_good_one_fails_only_when_reached(self) -> None:
        parser = RequestParser()
        assert parser.feed(GET + b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n") == requests([GET])
        with pytest.raises(RequestError) as failure:
            parser.next_message()
        assert failure.value.status == 400

    def test_bytes_after_connection_close_are_never_parsed_as_a_request(self) -> None:
        parser = RequestParser()
        events = parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" + GET)
        assert not events[0].keep_alive and events[1] == END
        with pytest.raises(RequestError):
            parser.next_message()


class TestKeepAlive:
    @pytest.mark.parametrize(
        ("request_bytes", "keep_alive"),
        [
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n", False),
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", True),
            (b"GET / HTTP/1.0\r\n\r\n", False),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
            (b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n", False),
        ],
    )
    def test_keep_alive_follows_version_and_connection(
        self, request_bytes: bytes, keep_alive: bool
    ) -> None:
        assert RequestParser().feed(request_bytes)[0].keep_alive is keep_alive

    def test_http10_needs_no_host(self) -> None:
        events = RequestParser().feed(b"GET / HTTP/1.0\r\n\r\n")
        assert events[0].version == b"1.0" and events[0].host is None


class TestExpectContinue:
    def test_exposed_for_http11_so_the_shell_can_answer_or_forward(self) -> None:
        parser = RequestParser()
        events = parser.feed(
            b"PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"
        )
        assert events[0].expect_continue and events[1:] == []
        assert parser.feed(b"abc") == [b"abc", END]

    def test_ignored_from_http10_clients(self) -> None:
        events = RequestParser().feed(
            b"PUT /f HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n"
        )
        assert not events[0].expect_continue


class TestTunnels:
    WEBSOCKET = (
        b"GET /chat HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )

    def test_websocket_upgrade_leaves_the_rest_as_tunnel_bytes(self) -> None:
        parser = RequestParser()
        events = parser.feed(self.WEBSOCKET + b"\x81\x05hello")
        assert events[0].upgrade and events[1:] == [END, Tunnel(b"\x81\x05hello")]
        assert not parser.paused
        assert parser.feed(b"GET / HTTP/1.1\r\n\r\n") == [Tunnel(b"GET / HTTP/1.1\r\n\r\n")]

    def test_upgrade_without_connection_upgrade_is_plain_http(self) -> None:
        events = RequestParser().feed(
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n" + GET
        )
        assert not events[0].upgrade and events[1] == END

    @pytest.mark.parametrize("chunks", list(splits(WEBSOCKET + b"frame")))
    def test_tunnel_bytes_do_not_depend_on_splits(self, chunks: list[bytes]) -> None:
        events = requests(chunks)
        assert events[-1] in (Tunnel(b"frame"),) or events[-2:] == [END, Tunnel(b"frame")]

    def test_connect_is_a_tunnel_to_its_authority(self) -> None:
        parser = RequestParser()
        events = parser.feed(
            b"CONNECT reviews:443 HTTP/1.1\r\nHost: reviews:443\r\n\r\n\x16\x03\x01"
        )
        assert events[0].upgrade and events[0].method == b"CONNECT"
        assert events[1:] == [END, Tunnel(b"\x16\x03\x01")]
        assert request_authority(events[0]) == (b"reviews:443", b"")

    def test_a_pipelined_upgrade_waits_with_its_tunnel_bytes(self) -> None:
        parser = RequestParser()
        assert parser.feed(GET + self.WEBSOCKET + b"ab") == requests([GET])
        assert parser.feed(b"cd") == []
        assert merge(parser.next_message()) == [*requests([self.WEBSOCKET])[:2], Tunnel(b"abcd")]


class TestEndOfStream:
    def test_closing_between_requests_is_clean(self) -> None:
        parser = RequestParser()
        parser.feed(GET)
        drain(parser)
        assert parser.eof() == []

    @pytest.mark.parametrize("cut", [GET[:10], POST[:-1], CHUNKED[:-2]])
    def test_closing_mid_request_is_a_downstream_disconnect(self, cut: bytes) -> None:
        parser = RequestParser()
        parser.feed(cut)
        with pytest.raises(RequestError) as failure:
            parser.eof()
        assert failure.value.flag == "DC"


LONG = b"x" * (61 * 1024)

BAD_REQUESTS = {
    "garbage request line": (b"hello\r\n\r\n", 400),
    "unknown method": (b"BREW /pot HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "lowercase method": (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "space in target": (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "control byte in target": (b"GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "bare LF line ends": (b"GET / HTTP/1.1\nHost: a\n\n", 400),
    "HTTP/1.2": (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400),
    "HTTP/2.0 over HTTP/1": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    "no colon": (b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400),
    "space in header name": (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", 400),
    "space before colon": (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    "tab before colon": (b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400),
    "empty header name": (b"GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400),
    "obs-fold with tab": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", 400),
    "NUL in value": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400),
    "CR in value": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400),
    "LF in value": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\nc: d\r\n\r\n", 400),
    "missing Host": (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
    "two Hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "Content-Length and Transfer-Encoding": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "Transfer-Encoding and Content-Length": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    ),
    "differing Content-Lengths": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    "repeated Content-Length": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    "Content-Length list": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    "negative Content-Length": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    "Content-Length with sign": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx", 400),
    "Content-Length overflow": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        400,
    ),
    "Transfer-Encoding gzip": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nx",
        400,
    ),
    "chunked not last": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
    ),
    "chunked twice": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "coding before chunked": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "chunk size not hex": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n0\r\n\r\n",
        400,
    ),
    "negative chunk size": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n",
        400,
    ),
    "chunk size overflow": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
        400,
    ),
    "space after chunk size": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1 \r\nx\r\n0\r\n\r\n",
        400,
    ),
    "chunk longer than its size": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n0\r\n\r\n",
        400,
    ),
    "framing header in trailers": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n",
        400,
    ),
    "header section over 60 KiB": (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + LONG + b"\r\n\r\n",
        431,
    ),
    "many headers over 60 KiB": (
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Many: 0123456789abcdef\r\n" * 3000 + b"\r\n",
        431,
    ),
    "target over 60 KiB": (b"GET /" + LONG + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    # Connection may not remove what frames the body or what the proxy relies on:
    # forwarding the body without its Content-Length smuggles a second request.
    "Connection nominates Content-Length": (
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    "Connection nominates Transfer-Encoding": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: keep-alive, transfer-encoding\r\n\r\n0\r\n\r\n",
        400,
    ),
    "Connection nominates Host": (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: HOST\r\n\r\n", 400),
    "Connection nominates X-Forwarded-For": (
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: x-forwarded-for\r\n\r\n",
        400,
    ),
    "Connection nominates peer metadata": (
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-envoy-peer-metadata\r\n\r\n",
        400,
    ),
    "Connection nominates a pseudo-header": (
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: :authority\r\n\r\n",
        400,
    ),
    "Connection nominates 10 headers": (
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: a,b,c,d,e\r\nConnection: f,g,h,i,j\r\n\r\n",
        400,
    ),
}


@pytest.mark.parametrize(
    "connection",
    [b"close", b"keep-alive, x-hop", b"Upgrade", b"te, x-request-id", b"a,b,c,d,e,f,g,h,i"],
)
def test_connection_may_nominate_other_headers(connection: bytes) -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: " + connection + b"\r\n\r\n"
    events = RequestParser().feed(data)
    assert isinstance(events[0], RequestHead) and events[-1] == END


@pytest.mark.parametrize(("data", "status"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_requests_get_a_specific_status(data: bytes, status: int) -> None:
    with pytest.raises(RequestError) as failure:
        RequestParser().feed(data)
    assert failure.value.status == status
    assert failure.value.flag == "DPE"
    assert failure.value.response().startswith(b"HTTP/1.1 %d " % status)


@pytest.mark.parametrize(("data", "status"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_requests_fail_the_same_one_byte_at_a_time(data: bytes, status: int) -> None:
    parser = RequestParser()
    with pytest.raises(RequestError) as failure:
        for i in range(len(data)):
            parser.feed(data[i : i + 1])
        parser.eof()
    assert failure.value.status == status


def test_a_failed_parser_keeps_failing() -> None:
    parser = RequestParser()
    with pytest.raises(RequestError):
        parser.feed(b"hello\r\n\r\n")
    with pytest.raises(RequestError):
        parser.feed(GET)


def test_endless_chunk_extensions_are_refused() -> None:
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=")
    with pytest.raises(RequestError) as failure:
        for _ in range(100):
            parser.feed(b"a" * 1024)
    assert failure.value.status == 400


def test_the_header_limit_is_configurable() -> None:
    request = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + b"a" * 200 + b"\r\n\r\n"
    assert RequestParser().feed(request)[1] == END
    with pytest.raises(RequestError) as failure:
        RequestParser(max_head=100).feed(request)
    assert failure.value.status == 431


class TestTargets:
    @pytest.mark.parametrize(
        ("target", "split"),
        [
            (b"/path?q=1", (None, b"/path?q=1")),
            (b"http://reviews:9080/path?q=1", (b"reviews:9080", b"/path?q=1")),
            (b"HTTP://Reviews:9080/p", (b"Reviews:9080", b"/p")),
            (b"http://reviews:9080", (b"reviews:9080", b"/")),
            (b"http://reviews?q=1", (b"reviews", b"/?q=1")),
            (b"http://user:secret@reviews/p", (b"reviews", b"/p")),
            (b"https://reviews/p#frag", (b"reviews", b"/p")),
            (b"*", (None, b"*")),
        ],
    )
    def test_split_target(self, target: bytes, split: tuple[bytes | None, bytes]) -> None:
        assert split_target(target) == split

    def test_absolute_form_wins_over_host(self) -> None:
        events = RequestParser().feed(b"GET http://reviews:9080/r HTTP/1.1\r\nHost: other\r\n\r\n")
        assert request_authority(events[0]) == (b"reviews:9080", b"/r")

    def test_absolute_form_needs_no_host(self) -> None:
        events = RequestParser().feed(b"GET http://reviews:9080/r HTTP/1.1\r\n\r\n")
        assert request_authority(events[0]) == (b"reviews:9080", b"/r")

    def test_origin_form_goes_to_host(self) -> None:
        events = RequestParser().feed(GET)
        assert request_authority(events[0]) == (b"reviews:9080", b"/reviews/1?x=y")
