"""Bytes the proxy writes, and the helpers it forwards with."""

from __future__ import annotations

import pytest
from http1_support import merge

from pilotfish.proxy.protocol.http1 import (
    CONTINUE_RESPONSE,
    END,
    EndOfMessage,
    RequestParser,
    ResponseParser,
    encode_chunk,
    encode_last_chunk,
    error_response,
    get_header,
    serialize_request_head,
    serialize_response_head,
    strip_hop_by_hop,
)


def test_request_head() -> None:
    head = serialize_request_head(
        b"GET", b"/r?x=1", [(b"host", b"reviews"), (b"x-b3-sampled", b"1")]
    )
    assert head == b"GET /r?x=1 HTTP/1.1\r\nhost: reviews\r\nx-b3-sampled: 1\r\n\r\n"


def test_request_head_for_a_chunked_body() -> None:
    head = serialize_request_head(b"POST", b"/", [(b"host", b"a")], chunked=True)
    assert head == b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"


def test_response_head() -> None:
    assert serialize_response_head(404, [(b"content-length", b"0")]) == (
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
    )
    assert serialize_response_head(599, []) == b"HTTP/1.1 599 Unknown\r\n\r\n"
    assert serialize_response_head(200, [], chunked=True) == (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    )


def test_chunks() -> None:
    assert encode_chunk(b"hello world, 26 bytes long") == b"1a\r\nhello world, 26 bytes long\r\n"
    assert encode_chunk(b"") == b""  # an empty chunk would end the body
    assert encode_last_chunk() == b"0\r\n\r\n"
    assert encode_last_chunk([(b"grpc-status", b"0")]) == b"0\r\ngrpc-status: 0\r\n\r\n"


def test_continue() -> None:
    assert CONTINUE_RESPONSE == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_error_response_closes_by_default() -> None:
    assert error_response(503, b"no healthy upstream", [(b"x-pilotfish-flags", b"UH")]) == (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 19\r\ncontent-type: text/plain\r\n"
        b"x-pilotfish-flags: UH\r\nconnection: close\r\n\r\nno healthy upstream"
    )


def test_error_response_on_a_kept_connection_parses_back() -> None:
    data = error_response(429, b"", [(b"x-pilotfish-flags", b"RL")], close=False)
    events = ResponseParser().feed(data)
    assert events[0].status == 429 and events[0].keep_alive and events[1:] == [END]


class TestHopByHop:
    def test_drops_the_hop_by_hop_set(self) -> None:
        headers = [
            (b"Host", b"a"),
            (b"Connection", b"keep-alive"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"TE", b"trailers"),
            (b"Trailer", b"x-checksum"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Upgrade", b"websocket"),
            (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ]
        assert strip_hop_by_hop(headers) == [headers[0], headers[-1]]

    def test_drops_what_connection_names(self) -> None:
        headers = [
            (b"X-Hop", b"1"),
            (b"Connection", b"close, X-Hop ,x-other"),
            (b"X-Other", b"2"),
            (b"X-End", b"3"),
        ]
        assert strip_hop_by_hop(headers) == [(b"X-End", b"3")]

    def test_keeps_upgrade_when_tunnelling(self) -> None:
        headers = [(b"Host", b"a"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
        assert strip_hop_by_hop(headers, tunnel=True) == [
            (b"Host", b"a"),
            (b"Upgrade", b"websocket"),
            (b"connection", b"upgrade"),
        ]

    def test_nothing_to_drop_returns_the_same_list(self) -> None:
        headers = [(b"Host", b"a"), (b"Content-Length", b"3")]
        assert strip_hop_by_hop(headers) is headers


@pytest.mark.parametrize("name", [b"host", b"content-type"])
def test_get_header_ignores_case(name: bytes) -> None:
    headers = [(b"Host", b"a"), (b"CONTENT-TYPE", b"text/plain"), (b"host", b"b")]
    assert get_header(headers, name) == {b"host": b"a", b"content-type": b"text/plain"}[name]
    assert get_header(headers, b"accept") is None


class TestRoundTrips:
    def test_request_with_content_length(self) -> None:
        headers = [(b"Host", b"ratings"), (b"Content-Length", b"3"), (b"X-Request-Id", b"r1")]
        events = RequestParser().feed(serialize_request_head(b"PUT", b"/r/1", headers) + b"abc")
        assert (events[0].method, events[0].target, events[0].headers) == (b"PUT", b"/r/1", headers)
        assert events[1:] == [b"abc", END]

    def test_streamed_chunked_request(self) -> None:
        pieces = [b"first", b"", b"second" * 100]
        data = serialize_request_head(b"POST", b"/", [(b"host", b"a")], chunked=True)
        data += b"".join(map(encode_chunk, pieces)) + encode_last_chunk([(b"x-sum", b"9")])
        events = merge(RequestParser().feed(data))
        assert events[0].chunked
        assert events[1:] == [b"".join(pieces), EndOfMessage(((b"x-sum", b"9"),))]

    def test_forwarded_request_keeps_end_to_end_headers(self) -> None:
        client = (
            b"GET /p HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
            b"traceparent: 00-aa-bb-01\r\n\r\n"
        )
        head = RequestParser().feed(client)[0]
        upstream = serialize_request_head(head.method, head.target, strip_hop_by_hop(head.headers))
        assert RequestParser().feed(upstream)[0].headers == [
            (b"Host", b"a"),
            (b"traceparent", b"00-aa-bb-01"),
        ]

    def test_chunked_response(self) -> None:
        data = serialize_response_head(200, [(b"content-type", b"a/b")], chunked=True)
        data += encode_chunk(b"x" * 5000) + encode_last_chunk()
        events = merge(ResponseParser().feed(data))
        assert events[0].status == 200 and events[0].chunked
        assert events[1:] == [b"x" * 5000, END]
