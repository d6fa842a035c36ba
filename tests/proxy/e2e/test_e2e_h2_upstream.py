"""HTTP/1.1 clients through the proxy to HTTP/2 upstreams: a real grpcio
server (h2c only) behind a cluster whose HttpProtocolOptions say HTTP/2.
curl speaks HTTP/1.1 to the proxy; the proxy speaks HTTP/2 to the server,
many requests on one connection, and the gRPC trailers come back to curl
as chunked trailers."""

from __future__ import annotations

import re
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness import (
    Proxy,
    curl_many,
    env_without_proxy,
    free_port,
    listener,
    route,
    static_cluster,
    vhost,
    wait_for,
)

from pilotfish.ca.cacerts import self_signed
from pilotfish.ca.identity import SpiffeId
from pilotfish.ca.workload import csr_for, key_pem, new_key, pem

SERVICE, METHOD = "pilotfish.test.Echo", "Call"
H2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


class Echo:
    """A grpcio server answering `reply:<request>`; `calls` counts them."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None, **options: Any) -> None:
        self.calls = 0
        self.cancelled = threading.Event()
        self.lock = threading.Lock()
        self.port = free_port()
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                METHOD: grpc.unary_unary_rpc_method_handler(self.call),
                "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
                "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
                "Wait": grpc.unary_unary_rpc_method_handler(self.wait),
            },
        )
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=32), options=list(options.items())
        )
        self.server.add_generic_rpc_handlers((handler,))
        if credentials is None:
            self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        else:
            self.server.add_secure_port(f"127.0.0.1:{self.port}", credentials)
        self.server.start()

    def call(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.calls += 1
        return b"reply:" + request

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        raise AssertionError("unreachable")

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Answers after 3 s, unless the caller cancels first (RST_STREAM)."""
        done = threading.Event()
        context.add_callback(done.set)  # runs when the RPC ends, cancelled or not
        if done.wait(3.0):
            self.cancelled.set()
        return b"late"

    def wait(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        time.sleep(0.3)
        return self.call(request, context)

    def stop(self) -> None:
        self.server.stop(0)


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo()
    yield server
    server.stop()


def frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: not compressed, 4-byte length, bytes."""
    return struct.pack(">BI", 0, len(message)) + message


def grpc_proxy(
    start_proxy: Any, port: int, action: dict[str, Any] | None = None, **cluster: Any
) -> tuple[Proxy, int]:
    listen = free_port()
    proxy = start_proxy(
        [listener("in", listen, [vhost("all", ["*"], [route("grpc", action=action)])])],
        [static_cluster("grpc", [port], typed_extension_protocol_options=H2, **cluster)],
    )
    return proxy, listen


def stat(proxy: Proxy, name: str) -> int:
    text = proxy.admin_get("/stats")[1]
    found = re.search(rf"^{re.escape(name)}: (\d+)$", text, re.M)
    assert found, f"{name} not in /stats"
    return int(found.group(1))


GRPC_HEADERS = ("-H", "content-type: application/grpc", "-H", "te: trailers")


def grpc_call(url: str, message: bytes, tmp: Path) -> tuple[list[str], bytes]:
    """One call with curl over HTTP/1.1: the header and trailer lines it
    received (curl writes trailers with the headers), and the body."""
    heads, body = tmp / "heads", tmp / "body"
    done = subprocess.run(
        ["curl", "-s", "-S", "--http1.1", "--max-time", "10", *GRPC_HEADERS,
         "--data-binary", "@-", "-D", str(heads), "-o", str(body), url],
        input=frame(message), capture_output=True, timeout=20, env=env_without_proxy(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return heads.read_text().splitlines(), body.read_bytes()


def test_an_http1_client_gets_a_grpc_answer_with_its_trailers(
    start_proxy: Any, echo: Echo, tmp_path: Path
) -> None:
    _, listen = grpc_proxy(start_proxy, echo.port)
    lines, body = grpc_call(f"http://127.0.0.1:{listen}/{SERVICE}/{METHOD}", b"hello", tmp_path)
    assert lines[0].startswith("HTTP/1.1 200")
    assert "content-type: application/grpc" in lines
    assert "transfer-encoding: chunked" in lines
    assert body == frame(b"reply:hello")
    # The trailers come after the body's last chunk, where gRPC puts them.
    assert lines.index("grpc-status: 0") > lines.index("")
    lines, body = grpc_call(f"http://127.0.0.1:{listen}/{SERVICE}/Fail", b"x", tmp_path)
    assert lines[0].startswith("HTTP/1.1 200") and body == b""
    assert "grpc-status: 5" in lines
    assert "grpc-message: no such thing" in lines


def many_calls(
    listen: int, n: int, tmp: Path, parallel: int = 20, method: str = METHOD
) -> list[tuple[int, dict[str, str]]]:
    body = tmp / "request"
    body.write_bytes(frame(b"x"))
    url = f"http://127.0.0.1:{listen}/{SERVICE}/{method}"
    return curl_many(
        [url] * n, "--http1.1", *GRPC_HEADERS, "--data-binary", f"@{body}",
        fields=("x-pilotfish-flags",), parallel=parallel,
    )  # fmt: skip


def test_concurrent_requests_share_one_upstream_connection(
    start_proxy: Any, echo: Echo, tmp_path: Path
) -> None:
    proxy, listen = grpc_proxy(start_proxy, echo.port)
    results = many_calls(listen, 40, tmp_path)
    assert [status for status, _ in results] == [200] * 40
    assert echo.calls == 40
    assert stat(proxy, "cluster.grpc.upstream_rq_total") == 40
    assert stat(proxy, "cluster.grpc.upstream_cx_http2_total") == 1
    assert stat(proxy, "cluster.grpc.upstream_cx_total") == 1
    # Every slot the requests took is back: none pending, none active, one connection.
    assert stat(proxy, "cluster.grpc.upstream_rq_pending_active") == 0
    assert stat(proxy, "cluster.grpc.upstream_rq_active") == 0
    assert stat(proxy, "cluster.grpc.upstream_cx_active") == 1


def test_a_backend_that_drains_with_goaway_loses_no_request(
    start_proxy: Any, tmp_path: Path
) -> None:
    """grpcio's max_connection_age: the server sends GOAWAY every 200 ms and
    closes the connection once its streams are done; requests in flight
    finish, later ones go on a new connection, refused ones are retried."""
    server = Echo(**{"grpc.max_connection_age_ms": 200, "grpc.max_connection_age_grace_ms": 5000})
    try:
        retry = {"retry_policy": {"retry_on": "refused-stream,connect-failure", "num_retries": 3}}
        proxy, listen = grpc_proxy(start_proxy, server.port, action=retry)
        results: list[tuple[int, dict[str, str]]] = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            results += many_calls(listen, 30, tmp_path, parallel=10)
        assert [r for r in results if r[0] != 200] == [], proxy.stderr()[-3000:]
        assert server.calls == len(results)
        assert stat(proxy, "cluster.grpc.upstream_cx_http2_total") > 1
        assert stat(proxy, "cluster.grpc.upstream_rq_pending_active") == 0
        assert stat(proxy, "cluster.grpc.upstream_rq_active") == 0
    finally:
        server.stop()


def test_an_idle_connection_closes_after_idle_timeout(
    start_proxy: Any, echo: Echo, tmp_path: Path
) -> None:
    options = {
        name: {**value, "common_http_protocol_options": {"idle_timeout": "0.3s"}}
        for name, value in H2.items()
    }
    listen = free_port()
    proxy = start_proxy(
        [listener("in", listen, [vhost("all", ["*"], [route("grpc")])])],
        [static_cluster("grpc", [echo.port], typed_extension_protocol_options=options)],
    )
    assert [s for s, _ in many_calls(listen, 3, tmp_path)] == [200] * 3
    assert wait_for(lambda: stat(proxy, "cluster.grpc.upstream_cx_idle_timeout") == 1, 3.0)
    assert stat(proxy, "cluster.grpc.upstream_cx_destroy") == 1
    assert [s for s, _ in many_calls(listen, 1, tmp_path)] == [200]
    assert stat(proxy, "cluster.grpc.upstream_cx_http2_total") == 2


def test_a_timed_out_request_resets_its_stream(
    start_proxy: Any, echo: Echo, tmp_path: Path
) -> None:
    proxy, listen = grpc_proxy(start_proxy, echo.port, action={"timeout": "0.3s"})
    lines, _ = grpc_call(f"http://127.0.0.1:{listen}/{SERVICE}/Slow", b"x", tmp_path)
    assert "x-pilotfish-flags: UT" in lines, lines  # a 504, or gRPC-shaped where gRPC's replies are
    assert echo.cancelled.wait(2.0)  # the server saw the RST_STREAM, not the 3 s out
    assert stat(proxy, "cluster.grpc.upstream_rq_tx_reset") == 1
    # The connection carries on for the next call.
    assert grpc_call(f"http://127.0.0.1:{listen}/{SERVICE}/{METHOD}", b"y", tmp_path)[1] == frame(
        b"reply:y"
    )
    assert stat(proxy, "cluster.grpc.upstream_cx_http2_total") == 1


def test_tls_upstreams_speak_http2_when_alpn_selects_h2(start_proxy: Any, tmp_path: Path) -> None:
    ca = self_signed(tmp_path / "ca", "cluster.local")
    root = tmp_path / "root.pem"
    root.write_text(pem(ca.root))
    key = new_key()
    identity = "spiffe://cluster.local/ns/default/sa/echo"
    chain = "".join(ca.sign(csr_for(key, identity), SpiffeId.parse(identity), 3600))
    server = Echo(grpc.ssl_server_credentials([(key_pem(key), chain.encode())]))
    try:
        tls = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "combined_validation_context": {
                        "default_validation_context": {
                            "match_subject_alt_names": [{"exact": identity}]
                        },
                        "validation_context_sds_secret_config": {
                            "name": f"file-root:{root}",
                            "sds_config": {"ads": {}, "resource_api_version": "V3"},
                        },
                    },
                },
            },
        }
        proxy, listen = grpc_proxy(start_proxy, server.port, transport_socket=tls)
        lines, body = grpc_call(f"http://127.0.0.1:{listen}/{SERVICE}/{METHOD}", b"s", tmp_path)
        assert lines[0].startswith("HTTP/1.1 200") and body == frame(b"reply:s")
        assert "grpc-status: 0" in lines
        assert stat(proxy, "cluster.grpc.upstream_cx_http2_total") == 1
        assert stat(proxy, "cluster.grpc.ssl.handshake") == 1
    finally:
        server.stop()


def test_streams_per_connection_are_capped_and_the_pool_opens_more_within_max_connections(
    start_proxy: Any, echo: Echo, tmp_path: Path
) -> None:
    capped = {
        name: {
            **value,
            "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 2}},
        }
        for name, value in H2.items()
    }
    listen = free_port()
    one = free_port()
    breakers = {"thresholds": [{"max_connections": 1}]}
    proxy = start_proxy(
        [
            listener("capped", listen, [vhost("all", ["*"], [route("capped")])]),
            listener("one", one, [vhost("all", ["*"], [route("one")])]),
        ],
        [
            static_cluster("capped", [echo.port], typed_extension_protocol_options=capped),
            static_cluster(
                "one",
                [echo.port],
                typed_extension_protocol_options=capped,
                circuit_breakers=breakers,
            ),
        ],
    )
    results = many_calls(listen, 8, tmp_path, parallel=8, method="Wait")
    assert [status for status, _ in results] == [200] * 8
    # 8 calls at once, 2 streams a connection: more connections, never more than 4.
    assert 2 <= stat(proxy, "cluster.capped.upstream_cx_http2_total") <= 4
    # One connection allowed: the calls beyond its 2 streams wait for room on it.
    results = many_calls(one, 8, tmp_path, parallel=8, method="Wait")
    assert [status for status, _ in results] == [200] * 8
    assert stat(proxy, "cluster.one.upstream_cx_http2_total") == 1
    assert stat(proxy, "cluster.one.upstream_rq_pending_total") >= 6
    assert stat(proxy, "cluster.one.upstream_rq_pending_active") == 0


DOWNSTREAM_PROTOCOL = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "use_downstream_protocol_config": {"http2_protocol_options": {}},
    }
}


def test_use_downstream_protocol_carries_an_http2_client_on_in_http2(
    start_proxy: Any, echo: Echo, tmp_path: Path
) -> None:
    """Istio's useClientProtocol and sniffed ports: a grpcio client (h2c)
    reaches an h2c-only server; an HTTP/1.1 client goes on in HTTP/1.1."""
    listen = free_port()
    proxy = start_proxy(
        [listener("in", listen, [vhost("all", ["*"], [route("grpc")])])],
        [static_cluster("grpc", [echo.port], typed_extension_protocol_options=DOWNSTREAM_PROTOCOL)],
    )
    with grpc.insecure_channel(
        f"127.0.0.1:{listen}", options=[("grpc.enable_http_proxy", 0)]
    ) as ch:
        call = ch.unary_unary(f"/{SERVICE}/{METHOD}")
        assert [call(b"h2-%d" % i, timeout=10) for i in range(3)] == [
            b"reply:h2-%d" % i for i in range(3)
        ]
    assert stat(proxy, "cluster.grpc.upstream_cx_http2_total") == 1
    assert echo.calls == 3
    # curl over HTTP/1.1: the proxy speaks HTTP/1.1 upstream, which the
    # h2c-only grpcio server does not understand: no second HTTP/2 connection.
    subprocess.run(
        ["curl", "-s", "--http1.1", "--max-time", "5", *GRPC_HEADERS, "--data-binary", "x",
         f"http://127.0.0.1:{listen}/{SERVICE}/{METHOD}"],
        capture_output=True, timeout=20, env=env_without_proxy(),
    )  # fmt: skip
    assert stat(proxy, "cluster.grpc.upstream_cx_http2_total") == 1
    assert echo.calls == 3
