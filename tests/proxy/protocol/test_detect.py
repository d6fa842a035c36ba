"""Envoy's http_inspector as a pure function: first bytes in, the
application protocol out (or NEED_MORE), without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotfish.proxy.protocol.detect import (
    H2_PREFACE,
    MAX_INSPECT,
    NEED_MORE,
    NOT_HTTP,
    detect,
)


@pytest.mark.parametrize(
    ("data", "verdict"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "http/1.1"),
        (b"POST /x?y=1 HTTP/1.0\r\n", "http/1.0"),
        (b"GET / HTTP/1.1\n", "http/1.1"),  # a bare LF ends a line too
        (b"OPTIONS * HTTP/1.1\r\n", "http/1.1"),
        (b"CONNECT db:5432 HTTP/1.1\r\n", "http/1.1"),
        (b"M-SEARCH * HTTP/1.1\r\n", "http/1.1"),  # any token is a method
        (H2_PREFACE, "h2c"),
        (H2_PREFACE + b"\x00\x00\x12\x04", "h2c"),
        # not HTTP: plain TCP
        (b"*1\r\n$4\r\nPING\r\n", NOT_HTTP),  # redis RESP
        (b"PING\r\n", NOT_HTTP),  # redis inline: no target, no version
        (b"\x16\x03\x01\x02\x00", NOT_HTTP),  # a TLS ClientHello
        (b"\x00\x00\x00\x08\x04\xd2\x16/", NOT_HTTP),  # postgres SSLRequest
        (b"GET / HTTP/2.0\r\n", NOT_HTTP),
        (b"GET / HTTP/1.2\r\n", NOT_HTTP),
        (b"GET /a b HTTP/1.1\r\n", NOT_HTTP),
        (b"GET  / HTTP/1.1\r\n", NOT_HTTP),
        (b"GET / HTTPS/1.1", NOT_HTTP),  # no line end yet, but it cannot become HTTP
        (b"G(T / HTTP/1.1\r\n", NOT_HTTP),
        (b" GET / HTTP/1.1\r\n", NOT_HTTP),
        (b"\r\n", NOT_HTTP),
        (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", NOT_HTTP),
        # too soon to tell
        (b"", NEED_MORE),
        (b"G", NEED_MORE),
        (b"GET", NEED_MORE),
        (b"GET /index", NEED_MORE),
        (b"GET / HTTP/1.", NEED_MORE),
        (b"GET / HTTP/1.1\r", NEED_MORE),
        (b"PRI * HTTP/2", NEED_MORE),
        (b"P", NEED_MORE),
    ],
)
def test_first_bytes(data: bytes, verdict: str | None) -> None:
    assert detect(data) == verdict


def test_a_request_line_longer_than_envoy_inspects_is_not_http() -> None:
    assert detect(b"GET /" + b"a" * MAX_INSPECT) == NOT_HTTP
    assert detect(b"GET /" + b"a" * (MAX_INSPECT - 100)) is NEED_MORE


REQUESTS = st.builds(
    lambda method, path, version: b"%s /%s HTTP/1.%d\r\nHost: x\r\n\r\n" % (method, path, version),
    st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD"]),
    st.binary(max_size=64).map(lambda b: bytes(c for c in b if 0x20 < c < 0x7F)),
    st.integers(0, 1),
)


@given(REQUESTS)
def test_every_prefix_of_a_request_waits_or_says_http(request: bytes) -> None:
    final = detect(request)
    assert final in ("http/1.0", "http/1.1")
    for end in range(len(request)):
        assert detect(request[:end]) in (NEED_MORE, final)


@given(st.binary(min_size=1, max_size=256))
def test_any_bytes_get_an_answer_that_more_bytes_keep(data: bytes) -> None:
    """A verdict, once given, never changes with what follows: the shell
    decides on the bytes it has."""
    verdict = detect(data)
    if verdict is not NEED_MORE:
        assert detect(data + b"GET / HTTP/1.1\r\n") == verdict
