"""CONNECT terminated by the proxy, from a static bootstrap (no control
plane): Envoy's config (HCM upgrade_configs CONNECT, connect_matcher routes
with connect_config), raw sockets as the client. The tunnel pipes bytes
(those sent with the CONNECT too), counts Istio's TCP metrics and writes the
listener's access log line; refusals are Envoy's."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from harness import RawServer, closed_port, free_port, listener, static_cluster, vhost, wait_for

CONNECT_ROUTE = {
    "match": {"connect_matcher": {}},
    "route": {"upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]},
}


def connect_route(cluster: str) -> dict[str, Any]:
    return {**CONNECT_ROUTE, "route": {**CONNECT_ROUTE["route"], "cluster": cluster}}


class _Echo(RawServer):
    """Answers each read with `echo:` and what it read."""

    def converse(self, conn: socket.socket) -> None:
        while data := conn.recv(65536):
            conn.sendall(b"echo:" + data)


def _ask(port: int, head: bytes, then: bytes = b"") -> tuple[bytes, bytes]:
    """The response head to `head` (+ `then` in the same write), and what the
    tunnel answers `then` with (b"" when there is no tunnel)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head + then)
        got = b""
        while b"\r\n\r\n" not in got and (chunk := s.recv(65536)):
            got += chunk
        answer, _, rest = got.partition(b"\r\n\r\n")
        if not answer.startswith(b"HTTP/1.1 200 ") or not then:
            return answer, rest
        while len(rest) < len(then) + 5 and (chunk := s.recv(65536)):
            rest += chunk
        return answer, rest


def _connect(target: str) -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


def test_connect_tunnels_to_the_routes_cluster_and_is_measured(
    tmp_path: Path, start_proxy: Any
) -> None:
    echo, port, plain = _Echo(), free_port(), free_port()
    log = tmp_path / "access.log"
    cluster = "outbound|9000||echo.default.svc.cluster.local"
    proxy = start_proxy(
        [
            listener(
                "out",
                port,
                [
                    vhost("echo", ["echo:9000"], [connect_route(cluster)]),
                    vhost("nc", ["gone:1"], [connect_route("no-such-cluster")]),
                    vhost("dead", ["dead:1"], [connect_route("dead")]),
                    vhost("any", ["*"], [connect_route("PassthroughCluster")]),
                ],
                outbound=True,
                access_log=str(log),
                upgrade_configs=[{"upgrade_type": "CONNECT"}],
            ),
            listener("plain", plain, [vhost("all", ["*"], [connect_route(cluster)])]),
        ],
        [
            static_cluster(cluster, [echo.port]),
            static_cluster("dead", [closed_port()]),
            {
                "name": "PassthroughCluster",
                "type": "ORIGINAL_DST",
                "lb_policy": "CLUSTER_PROVIDED",
                "connect_timeout": "1s",
            },
        ],
    )
    # bytes sent with the CONNECT, before its answer, belong to the tunnel
    assert _ask(port, _connect("echo:9000"), b"ping") == (b"HTTP/1.1 200 OK", b"echo:ping")
    head, _ = _ask(port, _connect(f"127.0.0.1:{echo.port}"), b"hi")  # ALLOW_ANY's way
    assert head == b"HTTP/1.1 200 OK"
    head, _ = _ask(port, _connect("gone:1"))
    assert head.startswith(b"HTTP/1.1 503 ") and b"x-pilotfish-flags: NC" in head
    head, _ = _ask(port, _connect("dead:1"))
    assert head.startswith(b"HTTP/1.1 503 ") and b"x-pilotfish-flags: UF" in head
    head, _ = _ask(port, b"GET / HTTP/1.1\r\nHost: echo:9000\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 ")  # a plain request takes no CONNECT route
    head, _ = _ask(plain, _connect("echo:9000"))
    assert head.startswith(b"HTTP/1.1 403 ")  # this listener does not allow CONNECT

    status, page = proxy.admin_get("/stats/prometheus")
    opened = [
        line
        for line in page.splitlines()
        if line.startswith("istio_tcp_connections_opened_total{")
        and 'destination_service="echo.default.svc.cluster.local"' in line
    ]
    assert status == 200 and opened and 'reporter="source"' in opened[0], page
    assert wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 4, 10)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    tunnel = next(x for x in lines if x.get("upstream_cluster") == cluster)
    assert tunnel["bytes_received"] == 4 and tunnel["bytes_sent"] == len(b"echo:ping")


class _Greeter(RawServer):
    """Speaks first, as an HTTP/2 server's SETTINGS or an SMTP banner do."""

    def converse(self, conn: socket.socket) -> None:
        conn.sendall(b"hello from the server\r\n")
        conn.recv(1)


def test_the_answer_comes_before_a_server_that_speaks_first(start_proxy: Any) -> None:
    """grpcio caught this: the server's first bytes must not overtake the 200."""
    greeter, port = _Greeter(), free_port()
    start_proxy(
        [
            listener(
                "out",
                port,
                [vhost("greeter", ["greeter:25"], [connect_route("greeter")])],
                outbound=True,
                upgrade_configs=[{"upgrade_type": "CONNECT"}],
            )
        ],
        [static_cluster("greeter", [greeter.port])],
    )
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(_connect("greeter:25"))
            got = b""
            while len(got) < len(b"HTTP/1.1 200 OK\r\n\r\nhello") and (chunk := s.recv(65536)):
                got += chunk
            assert got.startswith(b"HTTP/1.1 200 OK\r\n\r\nhello from the server"), got
