"""tcp_proxy end to end from static bootstraps: a real redis-server behind
the proxy (redis-cli as the client), a weighted shift between two redis
instances, half-close, a client that never reads, idle timeout, connect
attempts, and TCP inside mutual TLS between two proxies."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import RawServer, closed_port, free_port, static_cluster, wait_for
from test_e2e_tls import TLS_CONTEXT, issue, sds

from pilotfish.ca.cacerts import self_signed
from pilotfish.ca.workload import pem

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs redis-server (scripts/setup --test)"
)


def tcp_listener(name: str, port: int, **proxy: Any) -> dict[str, Any]:
    config = {"@type": TCP_PROXY, "stat_prefix": name, **proxy}
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": config}]}
        ],
    }


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Any]:
    """`redis("a")`: a started redis-server whose key `who` is "a"; its port."""
    started: list[subprocess.Popen[bytes]] = []

    def start(who: str) -> int:
        port = free_port()
        process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
        )
        started.append(process)
        assert wait_for(lambda: _redis(port, "PING") == "PONG", timeout=10)
        assert _redis(port, "SET", "who", who) == "OK"
        return port

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def _redis(port: int, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return done.stdout.decode().strip()


def _exchange(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send, half-close, and read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return _read_all(s)


def _answer_or_closed(port: int, payload: bytes) -> bytes:
    """What comes back, or b"" for a connection the proxy closed (FIN or reset)."""
    try:
        return _exchange(port, payload)
    except OSError:  # ECONNRESET, or ENOTCONN on shutdown after the close
        return b""


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@needs_redis
def test_redis_cli_through_a_tcp_proxy(start_proxy: Any, redis: Any) -> None:
    backend, port = redis("a"), free_port()
    start_proxy(
        [tcp_listener("redis", port, cluster="redis")], [static_cluster("redis", [backend])]
    )
    assert _redis(port, "SET", "greeting", "hello") == "OK", proxy_stderr(start_proxy)
    assert _redis(port, "GET", "greeting") == "hello"
    assert _redis(backend, "GET", "greeting") == "hello"  # it reached the real server


@needs_redis
def test_weighted_clusters_split_connections_80_20(start_proxy: Any, redis: Any) -> None:
    a, b, port = redis("a"), redis("b"), free_port()
    weighted = {"clusters": [{"name": "a", "weight": 80}, {"name": "b", "weight": 20}]}
    start_proxy(
        [tcp_listener("redis", port, weighted_clusters=weighted)],
        [static_cluster("a", [a]), static_cluster("b", [b])],
    )
    n = 300
    seen = [_exchange(port, b"GET who\r\n") for _ in range(n)]
    share = seen.count(b"$1\r\na\r\n") / n
    assert seen.count(b"$1\r\na\r\n") + seen.count(b"$1\r\nb\r\n") == n, set(seen)
    # binomial(300, 0.8): sigma is 2.3 points; 4.5 sigma either way
    assert 0.70 <= share <= 0.90, share


class _EofServer(RawServer):
    """Reads to the client's FIN, then answers how much it got and closes:
    the answer only arrives if the proxy passes the FIN on and keeps the
    other direction open."""

    def converse(self, conn: socket.socket) -> None:
        got = _read_all(conn)
        conn.sendall(b"got %d" % len(got))


def test_half_close_keeps_the_other_direction_open(start_proxy: Any) -> None:
    backend, port = _EofServer(), free_port()
    start_proxy([tcp_listener("eof", port, cluster="eof")], [static_cluster("eof", [backend.port])])
    payload = b"x" * 300_000
    assert _exchange(port, payload) == b"got 300000"
    backend.close()


class _Firehose(RawServer):
    """Writes for as long as the peer takes it."""

    def converse(self, conn: socket.socket) -> None:
        block = b"y" * 65536
        while True:
            conn.sendall(block)


def test_a_client_that_never_reads_holds_bounded_memory(start_proxy: Any) -> None:
    firehose, echo, port, other = _Firehose(), _EofServer(), free_port(), free_port()
    proxy = start_proxy(
        [tcp_listener("hose", port, cluster="hose"), tcp_listener("eof", other, cluster="eof")],
        [static_cluster("hose", [firehose.port]), static_cluster("eof", [echo.port])],
    )
    before = proxy.rss_kb()
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    time.sleep(3)  # unbounded buffering would take in hundreds of MB meanwhile
    assert _exchange(other, b"still served") == b"got 12"  # other clients are served
    grown = proxy.rss_kb() - before
    assert grown < 40_000, f"proxy grew {grown} kB while its clients did not read"
    for s in stalled:
        s.close()
    firehose.close()
    echo.close()


def test_idle_timeout_closes_a_silent_connection(start_proxy: Any) -> None:
    backend, port = _EofServer(), free_port()
    start_proxy(
        [tcp_listener("idle", port, cluster="idle", idle_timeout="0.5s")],
        [static_cluster("idle", [backend.port])],
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        started = time.monotonic()
        s.sendall(b"abc")
        # the backend waits for a FIN that never comes; the proxy's idle timer closes both
        assert s.recv(100) == b""
        assert 0.4 <= time.monotonic() - started < 4
    backend.close()


def test_max_connect_attempts_tries_another_host(start_proxy: Any) -> None:
    backend, dead, port, once = _EofServer(), closed_port(), free_port(), free_port()
    cluster = static_cluster("two", [dead, backend.port])  # round robin: every other is dead
    start_proxy(
        [
            tcp_listener("retrying", port, cluster="two", max_connect_attempts=2),
            tcp_listener("once", once, cluster="two"),
        ],
        [cluster],
    )
    assert all(_exchange(port, b"hi") == b"got 2" for _ in range(20))
    # with one attempt, every other connection picks the dead host and is closed
    answers = [_answer_or_closed(once, b"hi") for _ in range(20)]
    assert answers.count(b"") == 10 and answers.count(b"got 2") == 10
    backend.close()


@needs_redis
def test_tcp_inside_mutual_tls_between_two_proxies(
    tmp_path: Path, start_proxy: Any, redis: Any
) -> None:
    ca = self_signed(tmp_path / "ca", "cluster.local")
    root = tmp_path / "root.pem"
    root.write_text(pem(ca.root))
    server, client = issue(ca, tmp_path, "redis"), issue(ca, tmp_path, "app")
    backend, inbound, outbound = redis("a"), free_port(), free_port()
    secure = tcp_listener("inbound", inbound, cluster="redis")
    chain = secure["filter_chains"][0]
    chain["filter_chain_match"] = {"transport_protocol": "tls", "application_protocols": ["istio"]}
    chain["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS_CONTEXT,
            "require_client_certificate": True,
            "common_tls_context": _common(server, root),
        },
    }
    secure["listener_filters"] = [
        {
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
            },
        }
    ]
    start_proxy([secure], [static_cluster("redis", [backend])])
    mesh = static_cluster("mesh", [inbound])
    upstream = {"common_tls_context": _common(client, root)}
    upstream["common_tls_context"]["alpn_protocols"] = ["istio"]
    san = "spiffe://cluster.local/ns/default/sa/redis"
    upstream["common_tls_context"]["combined_validation_context"]["default_validation_context"] = {
        "match_subject_alt_names": [{"exact": san}]
    }
    mesh["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": UPSTREAM_TLS, **upstream},
    }
    start_proxy([tcp_listener("outbound", outbound, cluster="mesh")], [mesh])
    assert _redis(outbound, "GET", "who") == "a"
    # plaintext straight to the inbound port has no chain: closed without an answer
    assert _answer_or_closed(inbound, b"GET who\r\n") == b""


def _common(identity: tuple[Path, Path], root: Path) -> dict[str, Any]:
    return {
        "tls_certificate_sds_secret_configs": [sds(f"file-cert:{identity[0]}~{identity[1]}")],
        "combined_validation_context": {
            "default_validation_context": {},
            "validation_context_sds_secret_config": sds(f"file-root:{root}"),
        },
    }


def proxy_stderr(starter: Any) -> str:
    return "\n".join(p.stderr() for p in starter.proxies)


def _file_log(path: Path) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path),
        },
    }


def _samples(proxy: Any, family: str) -> dict[str, float]:
    """`{labels: value}` of one family on the Prometheus page."""
    status, page = proxy.admin_get("/stats/prometheus")
    assert status == 200
    out = {}
    for line in page.splitlines():
        if line.startswith(family + "{"):
            labels, _, value = line[len(family) + 1 :].rpartition("} ")
            out[labels] = float(value)
    return out


def test_istio_tcp_metrics_and_an_access_log_line_per_connection(
    tmp_path: Path, start_proxy: Any
) -> None:
    backend, port, dead = _EofServer(), free_port(), free_port()
    log = tmp_path / "tcp.log"
    file_log = _file_log(log)
    proxy = start_proxy(
        [
            tcp_listener("ok", port, cluster="outbound|9000||echo.default.svc.cluster.local",
                         access_log=[file_log]),
            tcp_listener("dead", dead, cluster="gone", access_log=[file_log]),
        ],
        [
            static_cluster("outbound|9000||echo.default.svc.cluster.local", [backend.port]),
            static_cluster("gone", [closed_port()]),
        ],
    )  # fmt: skip
    assert _exchange(port, b"x" * 1000) == b"got 1000"
    assert _exchange(port, b"y" * 10) == b"got 10"
    assert _answer_or_closed(dead, b"z") == b""

    def closed() -> dict[str, float]:
        return _samples(proxy, "istio_tcp_connections_closed_total")

    assert wait_for(lambda: sum(closed().values()) == 3)
    echo = 'destination_service="echo.default.svc.cluster.local"'
    opened = _samples(proxy, "istio_tcp_connections_opened_total")
    [(labels, count)] = [(k, v) for k, v in opened.items() if echo in k]
    assert count == 2 and 'reporter="source"' in labels and 'request_protocol="tcp"' in labels
    assert 'response_flags="-"' in labels and "response_code" not in labels
    assert _samples(proxy, "istio_tcp_received_bytes_total")[labels] == 1010
    assert _samples(proxy, "istio_tcp_sent_bytes_total")[labels] == len(b"got 1000got 10")
    assert any('response_flags="UF"' in k for k in closed())
    assert wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 3, 10)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    ok = [x for x in lines if x["response_flags"] == "-"]
    assert sorted(x["bytes_received"] for x in ok) == [10, 1000]
    assert {x["upstream_cluster"] for x in ok} == {"outbound|9000||echo.default.svc.cluster.local"}
    assert all(x["method"] is None and x["response_code"] == 0 for x in lines)
    assert {x["upstream_host"] for x in ok} == {f"127.0.0.1:{backend.port}"}
    assert [x["response_flags"] for x in lines if x not in ok] == ["UF"]
    backend.close()


NETWORK_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"


def _rbac(stat_prefix: str, action: str, policy: str) -> dict[str, Any]:
    local = {"direct_remote_ip": {"address_prefix": "127.0.0.1", "prefix_len": 32}}
    return {
        "name": "envoy.filters.network.rbac",
        "typed_config": {
            "@type": NETWORK_RBAC,
            "stat_prefix": stat_prefix,
            "rules": {
                "action": action,
                "policies": {policy: {"permissions": [{"any": True}], "principals": [local]}},
            },
        },
    }


def test_network_rbac_closes_denied_connections(tmp_path: Path, start_proxy: Any) -> None:
    backend, denied, allowed = _EofServer(), free_port(), free_port()
    log = tmp_path / "tcp.log"
    file_log = _file_log(log)
    deny = tcp_listener("deny", denied, cluster="echo", access_log=[file_log])
    deny["filter_chains"][0]["filters"].insert(0, _rbac("tcp.", "DENY", "no-local"))
    allow = tcp_listener("allow", allowed, cluster="echo")
    allow["filter_chains"][0]["filters"].insert(0, _rbac("tcp.", "ALLOW", "local"))
    proxy = start_proxy([deny, allow], [static_cluster("echo", [backend.port])])
    assert _answer_or_closed(denied, b"let me in") == b""
    assert _exchange(allowed, b"hello") == b"got 5"
    _, stats = proxy.admin_get("/stats")
    assert "tcp.rbac.denied: 1" in stats.splitlines()
    assert "tcp.rbac.allowed: 1" in stats.splitlines()
    _, page = proxy.admin_get("/stats/prometheus")
    assert "envoy_tcp_rbac_denied 1" in page.splitlines()
    assert wait_for(lambda: log.exists() and log.read_text().strip() != "", 10)
    [line] = [json.loads(x) for x in log.read_text().splitlines()]
    details = "rbac_access_denied_matched_policy[no-local]"
    assert (line["connection_termination_details"], line["upstream_host"]) == (details, None)
    backend.close()


def _chain_by_sni(names: list[str], cluster: str) -> dict[str, Any]:
    config = {"@type": TCP_PROXY, "stat_prefix": cluster, "cluster": cluster}
    return {
        "filter_chain_match": {"server_names": names, "transport_protocol": "tls"},
        "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": config}],
    }


class _FirstBytes(RawServer):
    """Keeps the first bytes a connection brings, then closes it."""

    first = b""

    def converse(self, conn: socket.socket) -> None:
        self.first = conn.recv(65536)


@pytest.fixture
def tls_backend(tmp_path: Path) -> Iterator[int]:
    """`openssl s_server` with its own certificate for backend.example.com."""
    key, cert, port = tmp_path / "backend.key", tmp_path / "backend.pem", free_port()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=backend.example.com"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", str(port), "-cert", str(cert), "-key", str(key),
         "-www", "-quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_for(lambda: _listening(port), 10)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _s_client(port: int, servername: str) -> str:
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", servername],
        input=b"", capture_output=True, timeout=20,
    )  # fmt: skip
    return done.stdout.decode(errors="replace")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_tls_passthrough_by_sni_reaches_the_backends_own_certificate(
    start_proxy: Any, tls_backend: int
) -> None:
    port, other = free_port(), _FirstBytes()
    listener = tcp_listener("passthrough", port, cluster="unused")
    listener["filter_chains"] = [
        _chain_by_sni(["backend.example.com"], "backend"),
        _chain_by_sni(["*.other.test"], "other"),
    ]
    listener["listener_filters"] = [
        {
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
            },
        }
    ]
    proxy = start_proxy(
        [listener],
        [static_cluster("backend", [tls_backend]), static_cluster("other", [other.port])],
    )
    seen = _s_client(port, "backend.example.com")
    assert "subject=CN" in seen and "backend.example.com" in seen.partition("subject=")[2], seen
    # a wildcard chain gets the ClientHello untouched
    assert "backend.example.com" not in _s_client(port, "a.other.test")
    assert other.first[:1] == b"\x16" and b"a.other.test" in other.first
    assert "no peer certificate" in _s_client(port, "unknown.test")  # no chain: closed
    _, stats = proxy.admin_get("/stats")
    assert f"listener.127.0.0.1_{port}.no_filter_chain_match: 1" in stats.splitlines()
    other.close()


def test_max_connections_closes_what_goes_over(start_proxy: Any) -> None:
    """DestinationRule connectionPool.tcp.maxConnections, as Envoy's circuit breaker."""
    backend, port = _EofServer(), free_port()
    breakers = {"thresholds": [{"max_connections": 1}]}
    proxy = start_proxy(
        [tcp_listener("limited", port, cluster="one")],
        [static_cluster("one", [backend.port], circuit_breakers=breakers)],
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as held:
        held.sendall(b"abc")  # the backend waits for its FIN: the slot stays taken
        assert wait_for(lambda: "cluster.one.upstream_cx_total: 1" in proxy.admin_get("/stats")[1])
        assert _answer_or_closed(port, b"over") == b""
        held.shutdown(socket.SHUT_WR)
        assert _read_all(held) == b"got 3"
    assert "cluster.one.upstream_cx_overflow: 1" in proxy.admin_get("/stats")[1].splitlines()
    assert wait_for(lambda: _answer_or_closed(port, b"again") == b"got 5")  # the slot is back
    backend.close()


def test_outlier_detection_ejects_a_host_that_refuses_connections(start_proxy: Any) -> None:
    backend, dead, port = _EofServer(), closed_port(), free_port()
    outlier = {
        "consecutive_5xx": 2,
        "interval": "60s",
        "base_ejection_time": "60s",
        "max_ejection_percent": 100,
    }
    proxy = start_proxy(
        [tcp_listener("ejecting", port, cluster="two")],
        [static_cluster("two", [dead, backend.port], outlier_detection=outlier)],
    )
    answers = [_answer_or_closed(port, b"hi") for _ in range(30)]
    # round robin: the dead host is tried twice, then ejected; the rest all reach the live one
    assert answers.count(b"") == 2 and answers.count(b"got 2") == 28, answers
    _, clusters = proxy.admin_get("/clusters")
    assert f"two::127.0.0.1:{dead}::health_flags::/failed_outlier_check" in clusters.splitlines()
    backend.close()
