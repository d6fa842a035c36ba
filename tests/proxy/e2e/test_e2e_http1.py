"""HTTP/1.1 through a real proxy: connections, bodies, bad input, forwarding
headers and Upgrade tunnels."""

from __future__ import annotations

import hashlib
import http.client
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from harness import (
    Backend,
    Proxy,
    curl,
    free_port,
    listener,
    parse_head,
    pattern,
    raw_exchange,
    route,
    static_cluster,
    status_of,
    timed_curl,
    vhost,
)


@dataclass
class Served:
    proxy: Proxy
    port: int
    backend: Backend
    limited_port: int  # a listener with per-connection limits, to a limited cluster
    limited_backend: Backend

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def served(start_module_proxy, module_backends) -> Served:
    backend, limited_backend = module_backends("app"), module_backends("limited")
    port, limited_port = free_port(), free_port()
    proxy = start_module_proxy(
        [
            listener(
                "in",
                port,
                [vhost("all", ["*"], [route("app")])],
                request_headers_timeout="1s",
                upgrade_configs=[{"upgrade_type": "websocket"}],
            ),
            listener(
                "limited",
                limited_port,
                [vhost("all", ["*"], [route("limited")])],
                common_http_protocol_options={
                    "idle_timeout": "1s",
                    "max_requests_per_connection": 2,
                },
            ),
        ],
        [
            static_cluster("app", [backend.port]),
            static_cluster("limited", [limited_backend.port], max_requests_per_connection=2),
        ],
    )
    return Served(proxy, port, backend, limited_port, limited_backend)


@pytest.fixture
def app(served: Served) -> Iterator[Backend]:
    served.backend.reset()
    yield served.backend


def test_keep_alive_reuses_connections(served: Served, app: Backend) -> None:
    url = served.url("/")
    r = curl(url, "-v", url, url, url, url)
    assert r.status == 200
    assert r.stderr.count("Re-using existing connection") == 4, r.stderr
    assert app.count == 5
    # Upstream side: the pool keeps its connection (one at most was opened).
    assert app.connections <= 1


def test_chunked_request_body(served: Served, app: Backend) -> None:
    body = pattern(300_000)
    r = curl(served.url("/upload"), "-H", "Transfer-Encoding: chunked", data=body)
    assert r.status == 200
    assert r.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_chunked_response_body(served: Served, app: Backend) -> None:
    size = 3_000_000
    r = curl(served.url(f"/big?size={size}"))
    assert r.status == 200
    assert len(r.body) == size
    assert r.body == pattern(size)


def test_large_upload_streams_with_bounded_memory(served: Served, app: Backend) -> None:
    size, block = 50 * 1024 * 1024, pattern(1 << 16)
    baseline = served.proxy.rss_kb()
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], served.proxy.rss_kb())
            time.sleep(0.02)

    def body() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        connection.request("POST", "/upload", body=body(), headers={"Content-Length": str(size)})
        response = connection.getresponse()
        answer = response.read()
        connection.close()
    finally:
        done.set()
        sampler.join()
    assert response.status == 200
    digest = hashlib.sha256()
    for piece in body():
        digest.update(piece)
    assert answer == f'{{"size": {size}, "sha256": "{digest.hexdigest()}"}}'.encode()
    growth_mb = (peak[0] - baseline) / 1024
    assert growth_mb < 20, f"proxy RSS grew {growth_mb:.1f} MB for a 50 MB upload"


def test_expect_100_continue(served: Served, app: Backend) -> None:
    body = pattern(4096)
    r, elapsed = timed_curl(
        served.url("/upload"),
        "-v",
        "--expect100-timeout",
        "5",
        "-H",
        "Expect: 100-continue",
        data=body,
    )
    assert r.status == 200
    assert r.json()["size"] == len(body)
    assert "HTTP/1.1 100 Continue" in r.stderr
    assert elapsed < 2  # curl did not have to give up waiting for the 100


def test_bad_request_line_is_400_and_close(served: Served, app: Backend) -> None:
    raw = raw_exchange(served.port, b"THIS IS NOT HTTP\r\n\r\n")
    assert status_of(raw) == 400
    assert app.count == 0


def test_oversized_headers_are_431(served: Served, app: Backend) -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    raw = raw_exchange(served.port, request)
    assert status_of(raw) == 431
    assert app.count == 0


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
    ],
    ids=["cl-and-te", "differing-cl"],
)
def test_ambiguous_framing_is_400(served: Served, app: Backend, framing: bytes) -> None:
    request = (
        b"POST /upload HTTP/1.1\r\nHost: x\r\n"
        + framing
        + b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    raw = raw_exchange(served.port, request)
    assert status_of(raw) == 400
    assert raw.count(b"HTTP/1.1 ") == 1  # and the connection is closed: nothing smuggled
    assert app.count == 0


def test_slow_headers_are_408(served: Served, app: Backend) -> None:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the end of the head
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    elapsed = time.monotonic() - start
    assert status_of(data) == 408
    assert 0.9 <= elapsed < 3
    assert app.count == 0


def test_forwarding_headers_added(served: Served, app: Backend) -> None:
    seen = curl(served.url("/echo")).json()["headers"]
    assert "127.0.0.1" in seen["x-forwarded-for"]
    assert seen["x-forwarded-proto"] == "http"
    assert uuid.UUID(seen["x-request-id"])
    # A request id the caller chose is kept.
    kept = curl(served.url("/echo"), headers={"x-request-id": "my-id-1"}).json()["headers"]
    assert kept["x-request-id"] == "my-id-1"


def test_trace_headers_pass_through_untouched(served: Served, app: Backend) -> None:
    trace = {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "congo=t61rcWkgMzE",
        "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
        "x-b3-spanid": "e457b5a2e4d86bd1",
        "x-b3-sampled": "1",
    }
    seen = curl(served.url("/echo"), headers=trace).json()["headers"]
    assert {k: seen.get(k) for k in trace} == trace


def test_hop_by_hop_headers_removed(served: Served, app: Backend) -> None:
    r = curl(
        served.url("/echo"),
        headers={
            "Connection": "keep-alive, x-hop",
            "x-hop": "private",
            "Keep-Alive": "timeout=5",
            "Proxy-Connection": "keep-alive",
            "x-end-to-end": "kept",
        },
    )
    seen = r.json()["headers"]
    assert seen["x-end-to-end"] == "kept"
    for name in ("x-hop", "keep-alive", "proxy-connection"):
        assert name not in seen, seen


def test_websocket_upgrade_tunnelled(served: Served, app: Backend) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(
            b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(65536)
            assert chunk, head
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        status, headers = parse_head(head)
        assert status == 101
        assert headers["upgrade"].lower() == "websocket"
        assert headers["x-backend"] == "app"
        for message in (b"hello", b"\x00\x01binary\xff"):
            s.sendall(message)
            expected = b"echo:" + message
            got = rest
            while len(got) < len(expected):
                chunk = s.recv(65536)
                assert chunk, got
                got += chunk
            assert got == expected
            rest = b""
    assert [s.path for s in app.requests] == ["/chat"]


def test_pipelined_requests_answered_in_order(served: Served, app: Backend) -> None:
    raw = raw_exchange(
        served.port,
        b"GET /echo?n=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /echo?n=2 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /echo?n=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert raw.count(b"HTTP/1.1 200 ") == 3, raw[:500]
    assert re.findall(rb'"path": "(/echo\?n=\d)"', raw) == [
        b"/echo?n=1",
        b"/echo?n=2",
        b"/echo?n=3",
    ]


def test_head_response_has_no_body(served: Served, app: Backend) -> None:
    raw = raw_exchange(
        served.port,
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    first, _, rest = raw.partition(b"\r\n\r\n")
    status, headers = parse_head(first)
    assert (status, headers["content-length"]) == (200, "4")
    # The next bytes are the second response, not a body for the HEAD.
    assert rest.startswith(b"HTTP/1.1 200 "), rest[:100]
    assert rest.endswith(b"\r\n\r\napp\n")


def test_downstream_max_requests_per_connection(served: Served) -> None:
    url = f"http://127.0.0.1:{served.limited_port}/"
    r = curl(url, "-v", url, url, url)
    assert r.status == 200
    # Two requests per connection: requests 2 and 4 reuse, 3 needs a new one.
    assert r.stderr.count("Re-using existing connection") == 2, r.stderr
    assert r.stderr.count("Connected to") == 2, r.stderr


def test_upstream_max_requests_per_connection(served: Served) -> None:
    served.limited_backend.reset()
    url = f"http://127.0.0.1:{served.limited_port}/"
    for _ in range(3):
        assert curl(url, url).status == 200
    assert served.limited_backend.count == 6
    assert served.limited_backend.connections >= 3  # at most two requests each


def test_downstream_idle_timeout_closes(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.limited_port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        start = time.monotonic()
        rest = b""
        while chunk := s.recv(65536):  # the proxy closes an idle connection
            rest += chunk
        elapsed = time.monotonic() - start
    assert 0.8 <= elapsed < 3, elapsed


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nno-colon-here\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    ],
    ids=["space-before-colon", "control-char-in-name", "no-colon", "bad-chunk-size", "bad-version"],
)
def test_malformed_request_is_400_and_close(
    served: Served, app: Backend, request_bytes: bytes
) -> None:
    raw = raw_exchange(served.port, request_bytes)
    allowed = {400, 505} if b"HTTP/9.9" in request_bytes else {400}
    assert status_of(raw) in allowed
    assert raw.count(b"HTTP/1.1 ") == 1
    assert app.count == 0


def test_slow_reader_download_is_backpressured(served: Served, app: Backend) -> None:
    size = 100 * 1024 * 1024
    baseline = served.proxy.rss_kb()
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(f"GET /big?size={size} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        received = len(s.recv(65536))
        time.sleep(1.0)  # the backend could push all 100 MB in this time
        growth_mb = (served.proxy.rss_kb() - baseline) / 1024
        while chunk := s.recv(1 << 20):
            received += len(chunk)
    assert growth_mb < 20, f"proxy RSS grew {growth_mb:.1f} MB behind a slow reader"
    assert received > size  # head, chunk framing and the whole body arrived
