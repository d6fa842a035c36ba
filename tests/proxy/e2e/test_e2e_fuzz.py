"""Hostile bytes against a running proxy: whatever arrives, the proxy answers
or closes, keeps serving, and does not grow."""

from __future__ import annotations

import socket
import threading

from harness import curl, free_port, listener, route, static_cluster, vhost
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

VALID = b"GET /ok HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc"
TOKENS = [
    b"GET ", b"POST ", b"/", b" HTTP/1.1", b" HTTP/1.0", b"\r\n", b"\n", b"\r\n\r\n",
    b"Host: x", b"Content-Length: ", b"Transfer-Encoding: chunked", b"Upgrade: websocket",
    b"Connection: upgrade", b"Expect: 100-continue", b"0", b"5", b"-1", b"ffffffffffffffff",
    b"\x00", b"\xff", b":", b" ", b"\t", b"a" * 100, b"0\r\n\r\n", b"3\r\nabc\r\n",
]  # fmt: skip


def send(port: int, data: bytes) -> bytes:
    """Send `data`, half-close, read what comes back until the proxy closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
        return received


def test_hostile_bytes_never_break_the_proxy(start_proxy, make_backend) -> None:
    backend = make_backend("svc")
    port = free_port()
    proxy = start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("svc")])])],
        [static_cluster("svc", [backend.port])],
    )
    assert curl(f"http://127.0.0.1:{port}/ok").status == 200
    errors = proxy.stderr_path.read_text()
    assert "Traceback" not in errors and "Exception" not in errors, errors[-3000:]
    seen: list[bytes] = []

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        st.one_of(
            st.lists(st.sampled_from(TOKENS), max_size=30).map(b"".join),
            st.binary(max_size=2000),
            st.builds(
                lambda cut, junk: VALID[:cut] + junk + VALID[cut:],
                st.integers(0, len(VALID)),
                st.binary(min_size=1, max_size=20),
            ),
        )
    )
    def hostile(data: bytes) -> None:
        answer = send(port, data)
        seen.append(answer[:12])
        # Either nothing (the client left before a whole request) or HTTP responses.
        assert answer == b"" or answer.startswith(b"HTTP/1.1 "), (data, answer[:200])

    hostile()
    baseline = proxy.rss_kb()
    hostile()  # a second round must not grow the process
    assert proxy.rss_kb() - baseline < 8 * 1024, (baseline, proxy.rss_kb())
    assert any(s.startswith(b"HTTP/1.1 400") for s in seen)
    assert curl(f"http://127.0.0.1:{port}/ok").status == 200
    errors = proxy.stderr_path.read_text()
    assert "Traceback" not in errors and "Exception" not in errors, errors[-3000:]


class RawBackend:
    """Answers every connection with the bytes in `answer`, then closes."""

    def __init__(self) -> None:
        self.answer = b""
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(self.answer)


def test_hostile_upstream_answers_are_503_upe(start_proxy) -> None:
    raw = RawBackend()
    port = free_port()
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("raw")])])],
        [static_cluster("raw", [raw.port])],
    )
    for answer in (
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"",
    ):
        raw.answer = answer
        response = curl(f"http://127.0.0.1:{port}/")
        assert response.status == 503, (answer, response.status)
        assert response.headers.get("x-pilotfish-flags") in ("UPE", "UC"), (
            answer,
            response.headers,
        )
    raw.sock.close()


def test_local_answers_keep_the_connection(start_proxy, make_backend) -> None:
    """404s (no route) answered by the proxy itself, pipelined on one
    connection: both answered, the connection stays usable, nothing logged."""
    backend = make_backend("svc")
    port = free_port()
    proxy = start_proxy(
        [listener("in", port, [vhost("svc", ["svc"], [route("svc")])])],
        [static_cluster("svc", [backend.port])],
    )
    miss = b"GET /x HTTP/1.1\r\nHost: other\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(miss + miss)
        received = b""
        while received.count(b"HTTP/1.1 404") < 2:
            received += s.recv(65536)
        s.sendall(b"GET /ok HTTP/1.1\r\nHost: svc\r\n\r\n")
        received = s.recv(65536)
        assert received.startswith(b"HTTP/1.1 200"), received
    errors = proxy.stderr_path.read_text()
    assert "Traceback" not in errors, errors[-3000:]
