"""Micro-benchmark of the sans-I/O HTTP/1.1 core: what one proxied request costs in
protocol work alone, both sides of the hop.

Per request it does what the proxy does: parse the client's request, strip
hop-by-hop headers and serialize the request head upstream, parse the
upstream's response, serialize the response head downstream. Shapes match
bench/ (issue 3): tiny (a few headers, 6-byte body) and realistic (9 request
headers and a 1 KB body, 11 response headers). Keep-alive connections: one
parser per side is reused for every request.

    .venv/bin/python bench/http1_parse.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import httptools

from pilotfish.proxy.protocol.http1 import (
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    serialize_request_head,
    serialize_response_head,
    strip_hop_by_hop,
)

TINY_REQUEST = b"GET /hello HTTP/1.1\r\nHost: backend:8080\r\nUser-Agent: wrk\r\n\r\n"
TINY_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nContent-Type: text/plain\r\n\r\nhello\n"

BODY = b"x" * 1024
REALISTIC_REQUEST = (
    b"POST /api/v1/reviews/12345?lang=en HTTP/1.1\r\n"
    b"Host: reviews.default.svc.cluster.local:9080\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0\r\n"
    b"Accept: application/json, text/plain, */*\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 1024\r\n"
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    b"x-request-id: 5c2b7a8e-3f0e-4d8b-9c1a-0d4f2e6b7a91\r\n"
    b"\r\n" + BODY
)
REALISTIC_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 1024\r\n"
    b"Date: Sun, 23 Nov 2025 00:00:00 GMT\r\n"
    b"Server: backend\r\n"
    b"Cache-Control: no-cache, no-store, must-revalidate\r\n"
    b"Vary: Accept-Encoding\r\n"
    b'ETag: "33a64df551425fcc55e4d42a148795d9f25f89d4"\r\n'
    b"x-envoy-upstream-service-time: 3\r\n"
    b"x-content-type-options: nosniff\r\n"
    b"strict-transport-security: max-age=31536000\r\n"
    b"x-request-id: 5c2b7a8e-3f0e-4d8b-9c1a-0d4f2e6b7a91\r\n"
    b"\r\n" + BODY
)


class _NoOp:
    """httptools with callbacks that do nothing: the floor any Python parser pays."""

    def on_message_begin(self) -> None: ...
    def on_url(self, url: bytes) -> None: ...
    def on_header(self, name: bytes, value: bytes) -> None: ...
    def on_headers_complete(self) -> None: ...
    def on_body(self, body: bytes) -> None: ...
    def on_message_complete(self) -> None: ...


def bare_httptools(request: bytes) -> Callable[[], None]:
    parser = httptools.HttpRequestParser(_NoOp())

    def once() -> None:
        parser.feed_data(request)

    return once


def parse_requests(request: bytes) -> Callable[[], None]:
    parser = RequestParser()

    def once() -> None:
        parser.feed(request)
        parser.next_message()

    return once


def proxy_round_trip(request: bytes, response: bytes) -> Callable[[], None]:
    """Both parsers and both serializations, as the shell would do them."""
    downstream, upstream = RequestParser(), ResponseParser()

    def once() -> None:
        events = downstream.feed(request)
        head = events[0]
        assert isinstance(head, RequestHead)
        serialize_request_head(head.method, head.target, strip_hop_by_hop(head.headers))
        downstream.next_message()
        upstream.next_message(head.method)
        answer = upstream.feed(response)[0]
        assert isinstance(answer, ResponseHead)
        serialize_response_head(answer.status, strip_hop_by_hop(answer.headers))

    return once


def rate(work: Callable[[], None], seconds: float) -> float:
    for _ in range(2000):  # warm up
        work()
    batch, done = 5000, 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(batch):
            work()
        done += batch
    return done / elapsed


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--seconds", type=float, default=2.0)
    seconds = options.parse_args().seconds
    cases = {
        "bare httptools, tiny (floor)": bare_httptools(TINY_REQUEST),
        "bare httptools, realistic (floor)": bare_httptools(REALISTIC_REQUEST),
        "parse request, tiny": parse_requests(TINY_REQUEST),
        "parse request, realistic": parse_requests(REALISTIC_REQUEST),
        "proxy round trip, tiny": proxy_round_trip(TINY_REQUEST, TINY_RESPONSE),
        "proxy round trip, realistic": proxy_round_trip(REALISTIC_REQUEST, REALISTIC_RESPONSE),
    }
    print(f"{'case':36} {'per second':>12} {'µs each':>9}")
    for name, work in cases.items():
        per_second = rate(work, seconds)
        print(f"{name:36} {per_second:12,.0f} {1e6 / per_second:9.2f}")


if __name__ == "__main__":
    main()
