"""Credentials never follow a redirect to another host: the CLI's token, a
metric provider's Secret, an alert provider's token. Go's http.Client (what
kubectl and Flagger use) drops Authorization and Cookie on a redirect to a
host that is neither the same nor a subdomain; urllib forwards them."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pilotfish.api.errors import ApiError
from pilotfish.api.kinds import registry
from pilotfish.client import Client
from pilotfish.rollout import alerts
from pilotfish.rollout.metrics.prometheus import Provider, QueryError, instant_query

PROMETHEUS_ANSWER = {"status": "success", "data": {"resultType": "scalar", "result": [0, "1"]}}


class Recorder(ThreadingHTTPServer):
    """Answers every request as `answer(path)` says and keeps what it was sent."""

    daemon_threads = True

    def __init__(self, answer: Any) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer
        self.seen: list[dict[str, str]] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def _any(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append({k.lower(): v for k, v in self.headers.items()})
        code, headers, body = self.server.answer(self.path)
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _any

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(answer: Any) -> Iterator[Recorder]:
    server = Recorder(answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def elsewhere() -> Iterator[Recorder]:
    """Another host (`localhost` is not `127.0.0.1` by name) that answers 200."""
    yield from _serve(lambda path: (200, [], json.dumps(PROMETHEUS_ANSWER).encode()))


@pytest.fixture
def redirector(elsewhere: Recorder) -> Iterator[Recorder]:
    """Redirects /away to the other host and /here to itself (/final)."""

    def answer(path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        if path.startswith("/away"):
            return 302, [("Location", f"http://localhost:{elsewhere.port}/final")], b""
        if path.startswith("/here"):
            return 302, [("Location", "/final")], b""
        return 200, [], json.dumps(PROMETHEUS_ANSWER).encode()

    yield from _serve(answer)


def test_the_cli_token_does_not_follow_a_redirect_to_another_host(
    redirector: Recorder, elsewhere: Recorder
) -> None:
    client = Client(f"http://127.0.0.1:{redirector.port}/away", "s3cret")
    client.get(registry().resolve("namespace"), "default", None)
    assert redirector.seen[0]["authorization"] == "Bearer s3cret"
    assert "authorization" not in elsewhere.seen[0]


def test_the_same_host_keeps_the_token_as_go_does(redirector: Recorder) -> None:
    client = Client(f"http://127.0.0.1:{redirector.port}/here", "s3cret")
    client.get(registry().resolve("namespace"), "default", None)
    assert [seen["authorization"] for seen in redirector.seen] == ["Bearer s3cret"] * 2


def test_a_metric_provider_secret_does_not_follow_a_redirect(
    redirector: Recorder, elsewhere: Recorder
) -> None:
    for credentials in ({"token": "t0ken"}, {"username": "u", "password": "p"}):
        provider = Provider(f"http://127.0.0.1:{redirector.port}/away", credentials)
        assert instant_query(provider, "vector(1)") == 1.0
        assert redirector.seen[-1]["authorization"].split()[0] in ("Bearer", "Basic")
        assert "authorization" not in elsewhere.seen[-1]


def test_an_alert_token_does_not_follow_a_redirect(
    redirector: Recorder, elsewhere: Recorder
) -> None:
    alerts.post(f"http://127.0.0.1:{redirector.port}/away", {"text": "hi"}, token="t0ken")
    assert redirector.seen[0]["authorization"] == "Bearer t0ken"
    assert "authorization" not in elsewhere.seen[0]


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, list[bytes]]]:
    """A bare TCP port that records whether anyone connected (an FTP server would)."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.5)
    seen: list[bytes] = []
    yield sock, seen
    sock.close()


def _connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


def test_a_redirect_to_another_scheme_is_refused(
    listener: tuple[socket.socket, list[bytes]],
) -> None:
    sock, _ = listener
    port = sock.getsockname()[1]
    target = {"ftp": f"ftp://127.0.0.1:{port}/x", "file": "file:///etc/hostname"}
    for scheme, location in target.items():
        for server in _serve(lambda path, loc=location: (302, [("Location", loc)], b"")):
            client = Client(f"http://127.0.0.1:{server.port}", "s3cret")
            with pytest.raises(ApiError):
                client.get(registry().resolve("namespace"), "default", None)
            provider = Provider(f"http://127.0.0.1:{server.port}", {"token": "t"})
            with pytest.raises(QueryError, match="answered 302"):
                instant_query(provider, "vector(1)")
        assert not _connected(sock), scheme


def test_a_metric_provider_address_is_http() -> None:
    for address in ("file:///etc/passwd", "ftp://127.0.0.1/"):
        with pytest.raises(QueryError, match="is not a valid URL"):
            instant_query(Provider(address), "vector(1)")
