"""Protocol detection end to end from a static bootstrap: one port whose
listener has Envoy's http_inspector and an HTTP and a TCP chain. curl gets
the HTTP backend, redis-cli the redis-server, a server-first protocol its
greeting once the detection timeout passes."""

from __future__ import annotations

import shutil
import socket
import time
from typing import Any

import pytest
from harness import RawServer, curl, free_port, listener, route, static_cluster, vhost, wait_for
from test_e2e_tcp import _redis, proxy_stderr, redis, tcp_listener  # noqa: F401 (a fixture)

HTTP_INSPECTOR = (
    "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
)


def sniffed(port: int, timeout: str | None = None, go_on: bool = True) -> dict[str, Any]:
    """HTTP to cluster `web`, anything else to cluster `raw`, as Istio's
    inbound listener for a port of no declared protocol."""
    http = listener("sniffed", port, [vhost("web", ["*"], [route("web")])])["filter_chains"][0]
    http["filter_chain_match"] = {"application_protocols": ["http/1.0", "http/1.1", "h2c"]}
    tcp = tcp_listener("sniffed", port, cluster="raw")["filter_chains"][0]
    result: dict[str, Any] = {
        "name": "sniffed",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "listener_filters": [
            {
                "name": "envoy.filters.listener.http_inspector",
                "typed_config": {"@type": HTTP_INSPECTOR},
            }
        ],
        "filter_chains": [http, tcp],
        "continue_on_listener_filters_timeout": go_on,
    }
    if timeout is not None:
        result["listener_filters_timeout"] = timeout
    return result


class Greeter(RawServer):
    """A server-first protocol (as SMTP, MySQL): it speaks first, then echoes lines."""

    def converse(self, conn: socket.socket) -> None:
        conn.sendall(b"220 greeter ready\r\n")
        while data := conn.recv(4096):
            conn.sendall(b"echo " + data)

    def start(self) -> Greeter:
        """Serving already: as a workload's app, for a mesh's `workload`."""
        return self

    def stop(self) -> None:
        self.close()


def first_line(port: int, send: bytes = b"", timeout: float = 3.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if send:
            s.sendall(send)
        data = b""
        try:
            while b"\n" not in data and (chunk := s.recv(4096)):
                data += chunk
        except TimeoutError:
            pass
        return data


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_http_and_redis_on_one_sniffed_port(
    start_proxy: Any,
    make_backend: Any,
    redis: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    web, raw, port = make_backend("web"), redis("r1"), free_port()
    start_proxy([sniffed(port)], [static_cluster("web", [web.port]), static_cluster("raw", [raw])])
    answer = curl(f"http://127.0.0.1:{port}/hello")
    assert (answer.status, answer.header("x-backend")) == (200, "web"), proxy_stderr(start_proxy)
    assert _redis(port, "GET", "who") == "r1"  # RESP is not HTTP: piped to redis
    assert _redis(port, "PING") == "PONG"
    assert web.count == 1
    # Envoy's http_inspector counters say what the first bytes were
    stats = start_proxy.proxies[0].admin_get("/stats")[1]
    assert "http_inspector.http11_found: 1\n" in stats, stats
    assert "http_inspector.http_not_found: 2\n" in stats, stats


def test_a_request_line_in_pieces_is_still_http(start_proxy: Any, make_backend: Any) -> None:
    web, port = make_backend("web"), free_port()
    start_proxy([sniffed(port)], [static_cluster("web", [web.port]), static_cluster("raw", [1])])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for piece in (
            b"G",
            b"ET /pie",
            b"ces HTT",
            b"P/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        ):
            s.sendall(piece)
            time.sleep(0.05)
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert wait_for(lambda: web.count == 1)


def test_a_server_first_protocol_speaks_after_the_detection_timeout(start_proxy: Any) -> None:
    greeter, port = Greeter(), free_port()
    start_proxy(
        [sniffed(port, timeout="0.3s")],
        [static_cluster("web", [1]), static_cluster("raw", [greeter.port])],
    )
    started = time.monotonic()
    assert first_line(port) == b"220 greeter ready\r\n", proxy_stderr(start_proxy)
    assert 0.25 <= time.monotonic() - started < 2.5


def test_without_a_timeout_the_proxy_waits_for_the_client(start_proxy: Any) -> None:
    """Istio's default (0s): a server-first protocol on an undeclared port
    hangs until the client speaks; then it is TCP."""
    greeter, port = Greeter(), free_port()
    start_proxy(
        [sniffed(port, timeout="0s")],
        [static_cluster("web", [1]), static_cluster("raw", [greeter.port])],
    )
    assert first_line(port, timeout=1.0) == b""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        time.sleep(0.3)
        s.sendall(b"EHLO me\r\n")
        data = b""
        while data.count(b"\n") < 2 and (chunk := s.recv(4096)):
            data += chunk
    assert data == b"220 greeter ready\r\necho EHLO me\r\n"


def test_a_listener_that_does_not_continue_closes_a_silent_client(start_proxy: Any) -> None:
    greeter, port = Greeter(), free_port()
    start_proxy(
        [sniffed(port, timeout="0.2s", go_on=False)],
        [static_cluster("web", [1]), static_cluster("raw", [greeter.port])],
    )
    assert first_line(port) == b""
