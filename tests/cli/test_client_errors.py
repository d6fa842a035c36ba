"""What the client says when a request goes wrong: the server's own answer
when it gave one (a 413 sent before it read the body), a dropped connection
as such, and `unreachable` only when nothing answered."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from pilotfish.api.errors import ApiError
from pilotfish.client import Client, ConnectionClosed, Unreachable

BIG = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}}
BIG["data"] = {"x": "a" * 20_000_000}
STATUS_413 = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "message": "the request body is larger than 3145728 bytes",
    "reason": "RequestEntityTooLarge",
    "code": 413,
}


def _serve_once(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A server that reads one request's head, then does `answer` and closes
    without reading the body, as a server refusing a large body does."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            answer(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    thread.join(10)
    listener.close()


@pytest.fixture
def refusing() -> Iterator[str]:
    def answer(conn: socket.socket) -> None:
        body = json.dumps(STATUS_413).encode()
        head = b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: application/json\r\n"
        conn.sendall(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)

    yield from _serve_once(answer)


@pytest.fixture
def dropping() -> Iterator[str]:
    yield from _serve_once(lambda conn: None)


def test_a_413_before_the_body_is_read_is_the_servers_answer(refusing: str) -> None:
    with pytest.raises(ApiError) as caught:
        Client(refusing, None).apply(dict(BIG))
    assert caught.value.code == 413 and caught.value.reason == "RequestEntityTooLarge"
    assert caught.value.message == "the request body is larger than 3145728 bytes"
    assert caught.value.from_server


def test_a_connection_dropped_mid_upload_is_not_unreachable(dropping: str) -> None:
    with pytest.raises(ConnectionClosed) as caught:
        Client(dropping, None).apply(dict(BIG))
    assert "closed the connection before it answered a request of 20.0 MB" in str(caught.value)
    assert not caught.value.from_server


def test_nothing_listening_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unreachable):
        Client(f"http://127.0.0.1:{port}", None).apply(dict(BIG))
