"""The upstream side of the HTTP/1.1 core: responses from backends, as events."""

from __future__ import annotations

import pytest
from http1_support import merge, responses, splits

from pilotfish.proxy.protocol.http1 import (
    END,
    EndOfMessage,
    ResponseError,
    ResponseHead,
    ResponseParser,
    Tunnel,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nGrpc-Status: 0\r\n\r\n"
)
HEAD_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"


def test_a_response_becomes_a_head_body_and_end() -> None:
    assert ResponseParser().feed(OK) == [
        ResponseHead(
            200,
            b"OK",
            b"1.1",
            [(b"Content-Type", b"text/plain"), (b"Content-Length", b"5")],
            True,
            False,
            5,
            False,
        ),
        b"hello",
        END,
    ]


def test_chunked_response_with_trailers() -> None:
    events = ResponseParser().feed(CHUNKED)
    assert events[0].chunked
    assert events[1:] == [b"abc", EndOfMessage(((b"Grpc-Status", b"0"),))]


def test_a_body_without_length_runs_until_the_upstream_closes() -> None:
    parser = ResponseParser()
    events = parser.feed(b"HTTP/1.1 200 OK\r\n\r\nhello")
    assert not events[0].keep_alive and events[1:] == [b"hello"]
    assert parser.feed(b" world") == [b" world"]
    assert parser.eof() == [END]


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_for_204_and_304_whatever_the_length_says(status: int) -> None:
    events = ResponseParser().feed(b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status)
    assert events[0].status == status and events[1:] == [END]


def test_interim_responses_come_before_the_final_one_without_an_end() -> None:
    events = ResponseParser().feed(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    assert events[0].status == 100 and events[1].status == 200
    assert events[2:] == [b"hello", END]


class TestWhatTheRequestSays:
    def test_a_response_to_head_has_no_body(self) -> None:
        assert responses([HEAD_ANSWER + OK], [b"HEAD", b"GET"]) == [
            ResponseHead(
                200, b"OK", b"1.1", [(b"Content-Length", b"1234")], True, False, 1234, False
            ),
            END,
            *responses([OK], [b"GET"]),
        ]

    @pytest.mark.parametrize("chunks", list(splits(HEAD_ANSWER + OK)))
    def test_head_then_get_in_every_split(self, chunks: list[bytes]) -> None:
        assert responses(chunks, [b"HEAD", b"GET"]) == responses([HEAD_ANSWER + OK], [b"HEAD"])

    def test_a_head_response_after_an_interim_one(self) -> None:
        events = responses(
            [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + HEAD_ANSWER], [b"HEAD"]
        )
        assert [e.status for e in events[:2]] == [103, 200] and events[2:] == [END]

    def test_a_2xx_to_connect_opens_a_tunnel(self) -> None:
        parser = ResponseParser()
        parser.next_message(b"CONNECT")
        events = parser.feed(b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03")
        assert events[0].upgrade and events[1:] == [END, Tunnel(b"\x16\x03")]
        assert parser.feed(b"more") == [Tunnel(b"more")]

    @pytest.mark.parametrize(
        "chunks", list(splits(b"HTTP/1.1 200 Connection Established\r\n\r\ntls"))
    )
    def test_connect_tunnel_in_every_split(self, chunks: list[bytes]) -> None:
        events = responses(chunks, [b"CONNECT"])
        assert events[1:] == [END, Tunnel(b"tls")] or events[1:] == [END]

    def test_a_refused_connect_has_a_body(self) -> None:
        body = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 4\r\n\r\ndeny"
        assert responses([body], [b"CONNECT"])[1:] == [b"deny", END]

    def test_101_switches_protocols(self) -> None:
        events = ResponseParser().feed(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00"
        )
        assert events[0].upgrade and events[1:] == [END, Tunnel(b"\x81\x00")]


class TestConnectionReuse:
    def test_keep_alive_responses_in_sequence(self) -> None:
        parser = ResponseParser()
        assert merge(parser.feed(OK)) == responses([OK], [])
        assert parser.paused
        assert parser.next_message(b"GET") == []
        assert merge(parser.feed(CHUNKED)) == responses([CHUNKED], [])

    def test_bytes_nobody_asked_for_are_held_not_delivered(self) -> None:
        parser = ResponseParser()
        assert parser.feed(OK + b"HTTP/1.1 200 OK\r\n") == responses([OK], [])
        assert parser.paused  # the pool must not reuse this connection

    @pytest.mark.parametrize(
        ("response", "keep_alive"),
        [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
            (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
            (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
        ],
    )
    def test_keep_alive(self, response: bytes, keep_alive: bool) -> None:
        assert ResponseParser().feed(response)[0].keep_alive is keep_alive


BAD_RESPONSES = {
    "not HTTP": b"SSH-2.0-OpenSSH_9.6\r\n",
    "status out of range": b"HTTP/1.1 2000 OK\r\n\r\n",
    "HTTP/2.0": b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "space before colon": b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n",
    "NUL in value": b"HTTP/1.1 200 OK\r\nX-A: \x00\r\nContent-Length: 0\r\n\r\n",
    "Content-Length and chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "differing Content-Lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "Transfer-Encoding gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
    "header section over 60 KiB": b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 62000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("data", BAD_RESPONSES.values(), ids=BAD_RESPONSES.keys())
def test_bad_responses_become_503_with_upe(data: bytes) -> None:
    with pytest.raises(ResponseError) as failure:
        ResponseParser().feed(data)
    assert (failure.value.status, failure.value.flag) == (503, "UPE")
    assert failure.value.response().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")


BAD_HEADS = {name: data for name, data in BAD_RESPONSES.items() if "chunk size" not in name}


@pytest.mark.parametrize("data", BAD_HEADS.values(), ids=BAD_HEADS.keys())
def test_bad_responses_to_head_fail_too(data: bytes) -> None:
    parser = ResponseParser()
    parser.next_message(b"HEAD")
    with pytest.raises(ResponseError):
        for i in range(0, len(data), 7):
            parser.feed(data[i : i + 7])
        parser.eof()


@pytest.mark.parametrize("cut", [OK[:10], OK[:-1], CHUNKED[:-2]])
def test_an_upstream_closing_mid_response_is_a_connection_termination(cut: bytes) -> None:
    parser = ResponseParser()
    parser.feed(cut)
    with pytest.raises(ResponseError) as failure:
        parser.eof()
    assert (failure.value.status, failure.value.flag) == (503, "UC")
