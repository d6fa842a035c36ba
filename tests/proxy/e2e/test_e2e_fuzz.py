"""Hostile bytes against a running proxy: whatever arrives, the proxy answers
or closes, keeps serving, and does not grow."""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import threading
import time
from typing import Any

from harness import RawServer, curl, free_port, listener, route, static_cluster, vhost
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pilotfish.proxy.protocol.http1 import (
    EndOfMessage,
    ProtocolError,
    RequestHead,
    RequestParser,
    request_authority,
)

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


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


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
        # Either nothing (the client left before a whole request), HTTP/1.1
        # responses, or after HTTP/2's preface the server's SETTINGS frame
        # (type 4 in the frame header's fourth byte), HTTP/2's first word.
        http2 = data.startswith(H2_PREFACE) and answer[3:4] == b"\x04"
        assert answer == b"" or answer.startswith(b"HTTP/1.1 ") or http2, (data, answer[:200])

    hostile()
    baseline = proxy.rss_kb()
    hostile()  # a second round must not grow the process
    assert proxy.rss_kb() - baseline < 8 * 1024, (baseline, proxy.rss_kb())
    assert any(s.startswith(b"HTTP/1.1 400") for s in seen)
    assert curl(f"http://127.0.0.1:{port}/ok").status == 200
    errors = proxy.stderr_path.read_text()
    assert "Traceback" not in errors and "Exception" not in errors, errors[-3000:]


class RawBackend(RawServer):
    """Answers every connection with the bytes in `answer`, then closes."""

    answer = b""

    def converse(self, conn: socket.socket) -> None:
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
    raw.close()


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


# -- differential: what the backend reads is what the proxy forwarded -------------------------

NAMES = [
    b"Host",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Connection",
    b"Expect",
    b"X-Forwarded-For",
    b"X-Request-Id",
    b"Upgrade",
    b"TE",
    b"Trailer",
    b"Keep-Alive",
    b"X-Hop",
]
VALUES = [
    b"x", b"0", b"3", b"LEN", b"LEN", b"chunked", b"close", b"keep-alive", b"Content-Length",
    b"keep-alive, content-length", b"Transfer-Encoding", b"Host", b"x-hop", b"100-continue",
    b"trailers", b"upgrade", b"websocket", b"gzip, chunked", b" LEN", b"LEN, LEN",
]  # fmt: skip
BODIES = [
    b"",
    b"abc",
    b"0\r\n\r\n",
    b"3\r\nabc\r\n0\r\n\r\n",
    b"GET TAG/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
]
Request = tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]
SMUGGLE: Request = (
    b"POST",
    b"TAG/attacker",
    [(b"Connection", b"Content-Length"), (b"Content-Length", b"LEN")],
    BODIES[-1],
)
Fields = list[tuple[bytes, bytes]]
FRAMINGS: list[Fields] = [
    [(b"Content-Length", b"LEN")],
    [(b"Transfer-Encoding", b"chunked")],
    [],
    [(b"Content-Length", b"3")],
    [(b"Content-Length", b"LEN"), (b"Content-Length", b"LEN")],
    [(b"Content-Length", b"LEN"), (b"Transfer-Encoding", b"chunked")],
]
NOMINATIONS = [
    b"Content-Length", b"keep-alive, content-length", b"Transfer-Encoding", b"Host", b"x-hop",
    b"close", b"upgrade", b"te, x-request-id",
]  # fmt: skip
FIELDS = st.one_of(
    st.tuples(st.just(b"Connection"), st.sampled_from(NOMINATIONS)),
    st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)),
)
REQUESTS = st.lists(
    st.tuples(
        st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD"]),
        st.sampled_from([b"TAG/a", b"TAG/b?q=1", b"http://xTAG/c", b"TAG/slow"]),
        st.builds(
            lambda framing, more: [*framing, *more],
            st.sampled_from(FRAMINGS),
            st.lists(FIELDS, max_size=3),
        ),
        st.sampled_from(BODIES),
    ),
    min_size=1,
    max_size=3,
)


# Ends every example's bytes: the proxy closes once it has answered it, so by
# then every request it forwarded has reached the backend.
LAST: Request = (b"GET", b"TAG/last", [(b"Connection", b"close")], b"")


def converse(port: int, pieces: list[bytes], apart: bool) -> bytes:
    """Send the pieces, in one write or `apart` (a write each, a moment
    between), and read until the proxy closes (or goes quiet for half a second: a
    request left waiting for the rest of its body)."""
    received = b""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=0.5) as s,
        contextlib.suppress(TimeoutError, ConnectionError),  # it may close early: a 400
    ):
        if apart:
            for piece in pieces:
                s.sendall(piece)
                time.sleep(0.005)
        else:
            s.sendall(b"".join(pieces))
        while chunk := s.recv(65536):
            received += chunk
    return received


def request_bytes(requests: list[Request], tag: bytes) -> list[bytes]:
    """Each request on the wire, with `tag` for TAG (the paths start with it);
    LEN in a value is the length of the request's body."""
    out = []
    for method, path, fields, body in requests:
        path, body = path.replace(b"TAG", tag), body.replace(b"TAG", tag)
        size = b"%d" % len(body)
        lines = [b"Host: x"] + [
            name + b": " + value.replace(b"LEN", size) for name, value in fields
        ]
        out.append(
            method + b" " + path + b" HTTP/1.1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n" + body
        )
    return out


def parsed_requests(data: bytes, eof: bool) -> tuple[list[tuple[bytes, bytes, bytes]], bool]:
    """The complete requests in `data` as protocol/http1 reads them, each
    (method, origin-form path, body), and whether the bytes were all valid."""
    parser, events, valid = RequestParser(), [], True
    try:
        events += parser.feed(data)
        while parser.paused:
            events += parser.next_message()
        if eof:
            events += parser.eof()
    except ProtocolError:
        valid = False
    found: list[tuple[bytes, bytes, bytes]] = []
    current: list[bytes] = []
    for event in events:
        if isinstance(event, RequestHead):
            current = [event.method, request_authority(event)[1], b""]
        elif isinstance(event, bytes):
            current[2] += event
        elif isinstance(event, EndOfMessage) and current:
            found.append((current[0], current[1], current[2]))
            current = []
    return found, valid


class RecordingBackend(RawServer):
    """Reads each upstream connection with a parser of its own, as a backend
    would, answers every complete request with an empty 200 naming its path
    (a /slow one after a moment), and records what it read: the requests,
    and the bytes it could not parse."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[bytes, bytes, bytes]] = []
        self.garbled: list[bytes] = []
        super().__init__()

    def converse(self, conn: socket.socket) -> None:
        received, answered = b"", 0
        while chunk := conn.recv(65536):
            received += chunk
            found, valid = parsed_requests(received, eof=False)
            with self.lock:
                self.requests += found[answered:]
                if not valid:
                    self.garbled.append(received)
            if not valid:
                return
            for _, path, _ in found[answered:]:
                if b"/slow" in path:
                    time.sleep(0.02)
                conn.sendall(b"HTTP/1.1 200 OK\r\nx-path: %s\r\nContent-Length: 0\r\n\r\n" % path)
            answered = len(found)


def is_subsequence(part: list[Any], whole: list[Any]) -> bool:
    rest = iter(whole)
    return all(any(item == other for other in rest) for item in part)


def test_the_backend_reads_exactly_what_the_proxy_forwarded(start_proxy) -> None:
    """For any request bytes: every request the backend reads is one the
    proxy read from the client, in order, with the same body; never one more
    (a smuggled request) and never bytes it cannot parse (a desync)."""
    backend = RecordingBackend()
    examples = itertools.count()
    port = free_port()
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("rec")])])],
        [static_cluster("rec", [backend.port])],
    )

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(REQUESTS, st.booleans())
    @example([SMUGGLE], False)
    def differential(requests: list[Request], apart: bool) -> None:
        # Each example's paths carry its own tag: a request the proxy forwarded
        # just before the client left may reach the backend after the next
        # example has begun.
        tag = b"/e%d" % next(examples)
        pieces = request_bytes([*requests, LAST], tag)
        data = b"".join(pieces)
        answers = converse(port, pieces, apart)
        with backend.lock:
            read = [r for r in backend.requests if r[1].startswith(tag + b"/")]
            untagged = [r for r in backend.requests if not r[1].startswith(b"/e")]
            garbled = list(backend.garbled)
        assert not untagged, untagged
        forwarded, _ = parsed_requests(data, eof=True)
        assert not garbled, garbled
        assert is_subsequence(read, forwarded), (data, read, forwarded)
        # And the client gets the backend's answers, each once, in order: a
        # prefix of them, since when the proxy closes on a client still
        # sending, the kernel's reset may discard the last ones unread.
        answered = re.findall(rb"\r\nx-path: ([^\r]*)", answers)
        assert answered == [path for _, path, _ in read][: len(answered)], (data, answered, read)

    differential()
    backend.close()
