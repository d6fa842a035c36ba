"""Properties of the HTTP/1.1 core over generated input: splits never change the
events, serialization round-trips, and no input escapes as anything but the
core's own error."""

from __future__ import annotations

import itertools
from typing import Any

from http1_support import merge, requests, responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilotfish.proxy.protocol.http1 import (
    END,
    ProtocolError,
    RequestParser,
    ResponseParser,
    encode_chunk,
    encode_last_chunk,
    serialize_request_head,
    serialize_response_head,
)

TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~",
    min_size=1,
    max_size=20,
)
VALUE = st.binary(max_size=40).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c < 127 or c >= 128).strip(b" \t")
)
FRAMING = {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade"}
HEADER = st.tuples(TOKEN.filter(lambda t: t.lower() not in FRAMING).map(str.encode), VALUE)
PATH = st.text("abcdefghijklmnopqrstuvwxyz0123456789/-._~%?=&", max_size=30).map(
    lambda p: b"/" + p.encode()
)
METHOD = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"])


@st.composite
def valid_request(draw: st.DrawFn) -> tuple[bytes, tuple[bytes, bytes, list[Any], bytes]]:
    method, target = draw(METHOD), draw(PATH)
    headers = [(b"Host", b"svc:9080"), *draw(st.lists(HEADER, max_size=8))]
    body = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        pieces = draw(st.lists(st.binary(min_size=1, max_size=100), max_size=4))
        data = serialize_request_head(method, target, headers, chunked=True)
        data += b"".join(map(encode_chunk, pieces)) + encode_last_chunk()
        body = b"".join(pieces)
    else:
        headers.append((b"Content-Length", b"%d" % len(body)))
        data = serialize_request_head(method, target, headers) + body
    return data, (method, target, headers, body)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(
    st.lists(valid_request(), min_size=1, max_size=3), st.lists(st.integers(0, 10_000), max_size=12)
)
def test_random_splits_of_pipelined_requests_parse_like_the_whole(
    messages: list[tuple[bytes, Any]], points: list[int]
) -> None:
    data = b"".join(m[0] for m in messages)
    assert requests(cut(data, points)) == requests([data])


@given(valid_request())
def test_serialized_requests_parse_back_to_what_was_serialized(message: tuple[bytes, Any]) -> None:
    data, (method, target, headers, body) = message
    events = requests([data])
    head = events[0]
    assert (head.method, head.target) == (method, target)
    framing = [(b"transfer-encoding", b"chunked")] if head.chunked else []
    assert head.headers == headers + framing
    assert events[1:] == ([body, END] if body else [END])


@given(
    st.integers(100, 599).filter(lambda s: s >= 200 or s == 100),
    st.lists(HEADER, max_size=8),
    st.binary(max_size=300),
    st.lists(st.integers(0, 10_000), max_size=8),
)
def test_serialized_responses_parse_back_in_any_split(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, points: list[int]
) -> None:
    if status in (100, 204, 304):
        body = b""
    framed = [*headers, (b"content-length", b"%d" % len(body))]
    data = serialize_response_head(status, framed) + body
    if status == 100:
        data += serialize_response_head(200, [(b"content-length", b"0")])
    events = responses(cut(data, points), [b"GET"])
    assert (events[0].status, events[0].headers) == (status, framed)
    assert merge(events) == responses([data], [b"GET"])


GARBAGE = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.sampled_from(
            [
                b"GET / HTTP/1.1\r\n",
                b"Host: a\r\n",
                b"Content-Length: 3\r\n",
                b"Transfer-Encoding: chunked\r\n",
                b"HTTP/1.1 200 OK\r\n",
                b"\r\n",
                b"3\r\nabc\r\n",
                b"0\r\n\r\n",
                b"Connection: upgrade\r\n",
                b"Upgrade: x\r\n",
                b" ",
                b":",
                b"\x00",
                b"\n",
                b"\r",
                b"CONNECT a:1 HTTP/1.1\r\n",
                b"zz\r\n",
                b"HEAD / HTTP/1.0\r\n",
                b"Expect: 100-continue\r\n",
                b"X: \xff\r\n",
            ]
        ),
        max_size=30,
    ).map(b"".join),
)


def exercise(parser: RequestParser | ResponseParser, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while parser.paused:
                parser.next_message()
        parser.eof()
    except ProtocolError:
        pass


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(GARBAGE, st.lists(st.integers(0, 10_000), max_size=10))
def test_garbage_requests_only_ever_raise_the_cores_error(data: bytes, points: list[int]) -> None:
    exercise(RequestParser(max_head=64), cut(data, points))
    exercise(RequestParser(), cut(data, points))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    GARBAGE,
    st.lists(st.integers(0, 10_000), max_size=10),
    st.sampled_from([b"GET", b"HEAD", b"CONNECT"]),
)
def test_garbage_responses_only_ever_raise_the_cores_error(
    data: bytes, points: list[int], method: bytes
) -> None:
    parser = ResponseParser(max_head=64)
    parser.next_message(method)
    exercise(parser, cut(data, points))
