"""What a hostile client or a hostile peer tries against a running sidecar:
smuggling past the proxy with Connection, a duplicate Content-Length, a
forged workload identity in the metadata-exchange headers, and slow bodies
that would hold every upstream slot. Raw sockets, curl and real backends."""

from __future__ import annotations

import socket
import threading
import time
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
    raw_exchange,
    route,
    static_cluster,
    vhost,
)

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass
class Served:
    proxy: Proxy
    port: int
    backend: Backend

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def served(start_module_proxy, module_backends) -> Served:
    backend = module_backends("app")
    port = free_port()
    proxy = start_module_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("app")])])],
        [static_cluster("app", [backend.port])],
    )
    return Served(proxy, port, backend)


@pytest.fixture
def app(served: Served) -> Iterator[Backend]:
    served.backend.reset()
    yield served.backend


def paths_seen(backend: Backend, settle: float = 0.3) -> list[str]:
    time.sleep(settle)  # a smuggled request would reach the backend just after the first
    with backend._lock:
        return [seen.path for seen in backend.requests]


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    return parse_head(raw.partition(b"\r\n\r\n")[0])[0]


# -- Connection may not remove framing (or what the proxy relies on) -------------------------


def test_connection_content_length_smuggle_is_refused(served: Served, app: Backend) -> None:
    """The issue's attack on the raw socket: without the fix the proxy drops
    Content-Length (Connection names it) but forwards the body, so the
    backend serves the body as a second request, /smuggled."""
    request = (
        b"POST /attacker HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\n"
        b"Content-Length: %d\r\n\r\n" % len(SMUGGLED)
    ) + SMUGGLED
    raw = raw_exchange(served.port, request, timeout=2)
    assert status_of(raw) == 400
    assert raw.count(b"HTTP/1.1 ") == 1
    assert paths_seen(app) == []


def test_connection_content_length_smuggle_with_curl(served: Served, app: Backend) -> None:
    """The issue's reproduction, with curl."""
    response = curl(
        served.url("/attacker"), headers={"Connection": "Content-Length"}, data=SMUGGLED
    )
    assert response.status == 400
    assert response.headers.get("x-pilotfish-flags") == "DPE"
    assert paths_seen(app) == []


@pytest.mark.parametrize(
    "nominated",
    ["Host", "Transfer-Encoding", "x-forwarded-for", "X-Forwarded-Proto", "x-envoy-peer-metadata"],
)
def test_connection_naming_a_protected_header_is_400(
    served: Served, app: Backend, nominated: str
) -> None:
    assert curl(served.url("/echo"), headers={"Connection": nominated}).status == 400
    assert paths_seen(app, settle=0) == []


def test_connection_may_still_remove_other_headers(served: Served, app: Backend) -> None:
    seen = curl(
        served.url("/echo"), headers={"Connection": "x-hop, x-request-id", "x-hop": "1"}
    ).json()["headers"]
    assert "x-hop" not in seen
    assert seen["x-request-id"]  # removed, so the proxy made its own, as Envoy does


def test_duplicate_identical_content_length_is_400(served: Served, app: Backend) -> None:
    request = (
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
    )
    raw = raw_exchange(served.port, request, timeout=2)
    assert status_of(raw) == 400
    assert raw.count(b"HTTP/1.1 ") == 1
    assert paths_seen(app, settle=0) == []


class NominatingBackend:
    """Answers every request with a Content-Length response whose Connection
    header nominates Content-Length, and keeps the connection open."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn: socket.socket) -> None:
        with conn:
            while conn.recv(65536):
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nConnection: content-length\r\n"
                    b"Content-Length: 5\r\n\r\nhello"
                )


def test_a_response_keeps_its_content_length_whatever_connection_says(start_proxy) -> None:
    """Without the fix the client got neither Content-Length nor chunked on a
    kept-alive connection: it cannot tell where the response ends."""
    nominating = NominatingBackend()
    port = free_port()
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("raw")])])],
        [static_cluster("raw", [nominating.port])],
    )
    url = f"http://127.0.0.1:{port}/"
    response = curl(url, timeout=3)
    assert response.status == 200
    assert response.headers.get("content-length") == "5"
    assert response.body == b"hello"
    nominating.sock.close()
