"""Issue 14: what a hostile client finds on the REST API's wire, as raw sockets.

Each test sends bytes a real client (or attacker) could send and asserts the
answer a user would see: a Status with a 4xx, sent promptly, never a dropped
connection or a server that reads without bound.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from pilotfish.controlplane.api import Api
from pilotfish.controlplane.api_tls import ApiTls
from pilotfish.controlplane.http import ApiServer
from pilotfish.controlplane.main import ControlPlane
from pilotfish.store.resources import ResourceStore
from pilotfish.store.sqlite import SqliteBackend

from .cp_testkit import TOKEN, VS_PATH, virtual_service

APPLY_PATH = f"{VS_PATH}/reviews?fieldManager=raw"


def token_of(plane: ControlPlane) -> str:
    return (plane.data_dir / "token").read_text().strip()


def exchange(plane: ControlPlane, data: bytes, *, timeout: float = 5.0) -> tuple[int, dict]:
    """Send `data`, read until the server closes or its answer is whole."""
    with socket.create_connection((plane.server.host, plane.server.port), timeout=timeout) as s:
        s.sendall(data)
        return read_answer(s)


def read_answer(s: socket.socket) -> tuple[int, dict]:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = s.recv(65536)
        assert chunk, f"the connection closed without an answer: {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "the connection closed inside the answer"
        body += chunk
    return int(head.split(b" ")[1]), json.loads(body[:length])


def chunked_head(token: str | None, path: str = APPLY_PATH) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"PATCH {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: application/apply-patch+yaml\r\n{auth}\r\n"
    ).encode()


@pytest.mark.parametrize("size", [b"-1", b"+5", b" 5", b"0x5", b"5 5", b"", b"g", b"1" * 17])
def test_chunk_sizes_are_hex_digits_only(plane: ControlPlane, size: bytes) -> None:
    # int(x, 16) took "-1", and then the server read until the client closed.
    body = json.dumps(virtual_service()).encode()
    code, status = exchange(
        plane, chunked_head(token_of(plane)) + size + b"\r\n" + body + b"\r\n0\r\n\r\n"
    )
    assert code == 400 and status["kind"] == "Status" and status["reason"] == "BadRequest"
    assert "invalid chunk size" in status["message"]


def test_a_well_formed_chunked_body_with_an_extension_still_works(plane: ControlPlane) -> None:
    body = json.dumps(virtual_service()).encode()
    data = chunked_head(token_of(plane)) + b"%X ;ext=1\r\n%s\r\n0\r\nX-Trailer: y\r\n\r\n" % (
        len(body),
        body,
    )
    code, obj = exchange(plane, data)
    assert code == 201 and obj["metadata"]["name"] == "reviews"


def test_a_chunked_body_over_the_limit_is_413_with_the_limit(plane: ControlPlane) -> None:
    code, status = exchange(plane, chunked_head(token_of(plane)) + b"400000\r\n")  # 4 MiB
    assert code == 413 and status["reason"] == "RequestEntityTooLarge"
    assert status["message"] == "Request entity too large: limit is 3145728"


@pytest.mark.parametrize(
    ("token", "code"), [(None, 403), ("not-the-token", 401)], ids=["anonymous", "bad-token"]
)
def test_a_write_without_a_valid_token_is_refused_before_its_body(
    plane: ControlPlane, token: str | None, code: int
) -> None:
    # The head promises a body that never comes: an answer proves the server
    # did not wait to read it (before, it read until the client closed).
    for framing in (b"Transfer-Encoding: chunked\r\n", b"Content-Length: 3000000\r\n"):
        auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
        head = b"POST " + VS_PATH.encode() + b" HTTP/1.1\r\nHost: localhost\r\n" + framing + auth + b"\r\n"
        started = time.monotonic()
        status_code, status = exchange(plane, head + b"5\r\nhello", timeout=3)
        assert status_code == code and time.monotonic() - started < 2
        assert status["reason"] == ("Forbidden" if code == 403 else "Unauthorized")


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "12a", "-1", "1 2", ""])
def test_a_malformed_content_length_is_a_400_status(plane: ControlPlane, value: str) -> None:
    head = (
        f"POST {VS_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {value}\r\n"
        f"Authorization: Bearer {token_of(plane)}\r\n\r\n"
    )
    code, status = exchange(plane, head.encode("utf-8"))
    assert code == 400 and status["reason"] == "BadRequest"
    assert "invalid Content-Length" in status["message"]


def test_conflicting_content_lengths_are_refused(plane: ControlPlane) -> None:
    head = (
        f"POST {VS_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nContent-Length: 3\r\n"
        f"Authorization: Bearer {token_of(plane)}\r\n\r\n{{}}"
    )
    code, status = exchange(plane, head.encode())
    assert code == 400 and "conflicting Content-Length" in status["message"]


def test_a_bad_request_line_gets_a_status_too(plane: ControlPlane) -> None:
    code, status = exchange(plane, b"BREW / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert code == 405 and status["kind"] == "Status" and status["reason"] == "MethodNotAllowed"


def test_a_hundred_back_to_back_connections_are_all_accepted_at_once(tmp_path: Path) -> None:
    # The stdlib's backlog of 5 made the kernel drop the 7th SYN until it was
    # resent a second later. Nothing accepts until all 100 are queued.
    store = ResourceStore(SqliteBackend(tmp_path / "store.db"))
    server = ApiServer("127.0.0.1:0", Api(store, TOKEN))
    sockets: list[socket.socket] = []
    try:
        for _ in range(100):
            s = socket.socket()
            s.settimeout(0.5)  # the SYN retry comes after 1 s
            s.connect((server.host, server.port))
            sockets.append(s)
        server.start()
        for s in sockets:
            s.settimeout(5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        for s in sockets:
            assert s.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        for s in sockets:
            s.close()
        server.stop()
        store.close()


def _outbound_address() -> str | None:
    """This host's address on a non-loopback interface, if it has one."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


def test_anonymous_reads_are_never_served_off_loopback(tmp_path: Path) -> None:
    address = _outbound_address()
    if address is None:
        pytest.skip("no non-loopback interface to call from")
    # Plaintext by name (HTTPS is the default off loopback): the raw requests are the subject.
    plaintext = ApiTls(plaintext_off_loopback=True)
    plane = ControlPlane.open(tmp_path / "data", "0.0.0.0:0", tmp_path / "c.yaml", api_tls=plaintext)
    plane.server.start()
    try:
        request = f"GET {VS_PATH} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
        for source in (address, "127.0.0.2"):
            with socket.create_connection(
                (source, plane.server.port), timeout=5, source_address=(source, 0)
            ) as s:
                s.sendall(request)
                code, status = read_answer(s)
            if source == address:
                assert code == 401 and status["message"] == "Unauthorized"
            else:
                assert code == 200 and status["kind"] == "VirtualServiceList"
    finally:
        plane.close()


def test_the_server_keeps_serving_after_every_attack(plane: ControlPlane) -> None:
    attacks = [
        chunked_head(token_of(plane)) + b"-1\r\n",
        chunked_head(None) + b"ffffffff\r\n",
        f"POST {VS_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Length: \u00b2\r\n\r\n".encode(),
    ]
    threads = [threading.Thread(target=exchange, args=(plane, a)) for a in attacks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    code, status = exchange(plane, f"GET {VS_PATH} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    assert code == 200 and status["items"] == []


def test_a_body_trickled_past_the_deadline_is_408(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One byte now and then kept a thread reading for ever: every recv reset
    # the idle timeout. The deadline is for the whole body.
    monkeypatch.setattr("pilotfish.controlplane.http.BODY_TIMEOUT_S", 1.0)
    for framing, first in (
        (b"Content-Length: 100\r\n", b"{"),
        (b"Transfer-Encoding: chunked\r\n", b"64\r\n{"),
    ):
        head = (
            b"POST "
            + VS_PATH.encode()
            + b" HTTP/1.1\r\nHost: localhost\r\n"
            + framing
            + f"Authorization: Bearer {token_of(plane)}\r\n\r\n".encode()
        )
        with socket.create_connection((plane.server.host, plane.server.port), timeout=5) as s:
            s.sendall(head + first)
            started = time.monotonic()
            for _ in range(4):  # each byte well within the idle timeout, then silence
                time.sleep(0.2)
                s.sendall(b" ")
            code, status = read_answer(s)
        assert code == 408 and status["reason"] == "Timeout"
        assert status["message"] == "the request body did not arrive within 1 seconds"
        assert time.monotonic() - started < 3


def test_expect_100_continue_is_refused_before_the_body_is_invited(plane: ControlPlane) -> None:
    head = (
        f"POST {VS_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2000\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()
    with socket.create_connection((plane.server.host, plane.server.port), timeout=5) as s:
        s.sendall(head)
        first = s.recv(12)
    assert first == b"HTTP/1.1 403"  # not "HTTP/1.1 100": no body is invited


def test_too_many_headers_get_a_status(plane: ControlPlane) -> None:
    headers = "".join(f"X-{i}: y\r\n" for i in range(101))
    code, status = exchange(plane, f"GET {VS_PATH} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n".encode())
    assert code == 431 and status["kind"] == "Status" and status["code"] == 431


def test_connections_over_the_limit_get_429_and_free_slots_serve_again(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each connection was a thread, without bound: idle sockets from anyone
    # who can connect grew the process until it failed.
    monkeypatch.setattr("pilotfish.controlplane.http.MAX_CONNECTIONS", 3)
    address = (plane.server.host, plane.server.port)
    idle = [socket.create_connection(address, timeout=5) for _ in range(3)]
    try:
        time.sleep(0.2)  # accepted and counted
        code, status = exchange(plane, f"GET {VS_PATH} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        assert code == 429 and status["reason"] == "TooManyRequests"
        assert status["message"] == "Too many requests, please try again later."
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 5
    while True:  # the server notices the closed connections within a moment
        code, status = exchange(plane, f"GET {VS_PATH} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        if code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert code == 200 and status["items"] == []


def test_a_request_head_trickled_past_the_deadline_is_dropped(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A header line now and then kept the connection (and its thread) for
    # ever: the idle timeout restarted with every byte.
    monkeypatch.setattr("pilotfish.controlplane.http.IDLE_TIMEOUT_S", 1.0)
    with socket.create_connection((plane.server.host, plane.server.port), timeout=5) as s:
        s.sendall(f"GET {VS_PATH} HTTP/1.1\r\n".encode())
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the server may close while we send
            for i in range(4):
                time.sleep(0.3)
                s.sendall(f"X-{i}: y\r\n".encode())
        assert s.recv(65536) == b""  # closed, no request served
        assert time.monotonic() - started < 3
