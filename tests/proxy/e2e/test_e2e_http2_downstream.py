"""HTTP/2 from the client, through a real proxy, to an HTTP/1.1 backend:
curl (prior-knowledge h2c), h2load, and hostile clients written with h2."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from harness import (
    RawServer,
    curl,
    env_without_proxy,
    free_port,
    listener,
    pattern,
    raw_exchange,
    route,
    static_cluster,
    vhost,
)
from test_e2e_hardening import Served
from test_e2e_hardening import served as shared_served  # noqa: F401 - a fixture
from test_e2e_tls import TLS_CONTEXT, issue, sds

from pilotfish.ca.cacerts import self_signed
from pilotfish.ca.workload import pem
from pilotfish.translate.gateway_tls import GATEWAY_ALPN
from pilotfish.translate.mtls import SERVER_ALPN


@pytest.fixture(scope="module")
def served(shared_served: Served) -> Served:  # noqa: F811 - asks for the imported fixture
    return shared_served


def h2c(url: str, *args: str, data: bytes | None = None, timeout: float = 10.0):
    return curl(url, "--http2-prior-knowledge", *args, data=data, timeout=timeout)


def test_curl_prior_knowledge_reaches_an_http1_backend(served: Served) -> None:
    served.backend.reset()
    resp = h2c(served.url("/echo?x=1"), "-H", "Cookie: a=1", "-H", "Cookie: b=2")
    assert resp.status == 200
    assert resp.header("x-backend") == "app"
    seen = resp.json()
    assert seen["method"] == "GET" and seen["path"] == "/echo?x=1"
    # :authority became Host; the split cookies were joined for HTTP/1.1.
    assert seen["headers"]["host"] == f"127.0.0.1:{served.port}"
    assert seen["headers"]["cookie"] == "a=1; b=2"
    assert seen["headers"]["x-forwarded-proto"] == "http"
    assert "HTTP/2 200" in resp.stderr or resp.status == 200
    stats = served.proxy.admin_get("/stats")[1]
    assert re.search(r"http\.in\.downstream_cx_http2_total: [1-9]", stats)


def test_request_and_response_bodies_stream_both_ways(served: Served) -> None:
    body = pattern(3 << 20)  # far beyond the 64 KiB stream window: flow control must work
    resp = h2c(served.url("/upload"), data=body, timeout=20)
    assert resp.status == 200
    assert resp.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    big = h2c(served.url("/big?size=5000000"), timeout=20)
    assert big.status == 200 and big.body == pattern(1 << 16) * (5000000 >> 16) + pattern(
        5000000 % (1 << 16)
    )


def test_no_route_is_the_same_local_reply_as_http1(served: Served, start_proxy) -> None:
    port = free_port()
    proxy = start_proxy(
        [listener("only", port, [vhost("x", ["only.example"], [route("app")])])],
        [static_cluster("app", [served.backend.port])],
    )
    del proxy
    resp = h2c(f"http://127.0.0.1:{port}/")
    assert resp.status == 404
    assert resp.flags == "NR"
    assert resp.header("content-length") == "0"


def test_h2load_many_streams_all_2xx(served: Served) -> None:
    h2load = shutil.which("h2load")
    if h2load is None:
        pytest.fail("h2load is not installed (Debian nghttp2-client; scripts/setup --test)")
    done = subprocess.run(
        [h2load, "-n", "400", "-c", "4", "-m", "10", served.url("/")],
        capture_output=True, timeout=60, text=True,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert re.search(r"requests: 400 total, 400 started, 400 done, 400 succeeded", out), out
    assert re.search(r"status codes: 400 2xx", out), out


# -- hostile clients -----------------------------------------------------------------------


def _client(port: int) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def _request(
    conn: h2.connection.H2Connection, stream_id: int, port: int, path: str = "/",
    authority: bytes | None = None,
) -> None:
    conn.send_headers(
        stream_id,
        [(b":method", b"GET"), (b":path", path.encode()), (b":scheme", b"http"),
         (b":authority", authority or b"127.0.0.1:%d" % port)],
        end_stream=True,
    )  # fmt: skip


def _read_until_goaway(sock: socket.socket, conn: h2.connection.H2Connection) -> int | None:
    """The error code of the server's GOAWAY, reading until it comes or the socket closes."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return None
        if not data:
            return None
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            return None
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                return int(event.error_code)
    return None


def _well_behaved_get(port: int) -> int:
    resp = h2c(f"http://127.0.0.1:{port}/")
    return resp.status


def test_rapid_reset_flood_gets_goaway_and_others_are_served(served: Served) -> None:
    sock, conn = _client(served.port)
    rss_before = served.proxy.rss_kb()
    stream_id = 1
    with sock:
        for _ in range(600):
            _request(conn, stream_id, served.port, "/?delay=0.5")
            conn.reset_stream(stream_id)
            stream_id += 2
            sock.sendall(conn.data_to_send())
        code = _read_until_goaway(sock, conn)
    assert code == 11  # ENHANCE_YOUR_CALM
    assert _well_behaved_get(served.port) == 200
    stats = served.proxy.admin_get("/stats")[1]
    assert re.search(r"http2\.downstream_rq_too_many_premature_resets: [1-9]", stats), stats
    assert served.proxy.rss_kb() - rss_before < 64 * 1024


def test_ping_flood_from_a_client_that_never_reads_gets_goaway(served: Served) -> None:
    sock, _ = _client(served.port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"
    sent = 0
    with sock:
        sock.settimeout(2)
        try:
            # The kernel's buffers take some megabytes of acknowledgements
            # first; past them, the proxy gives up within 1000 PINGs.
            for _ in range(3000):
                sock.sendall(ping * 1000)
                sent += 1000
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert sent < 3_000_000, "the proxy kept acknowledging PINGs nobody read"
    assert _well_behaved_get(served.port) == 200
    stats = served.proxy.admin_get("/stats")[1]
    assert re.search(r"http2\.outbound_control_flood: [1-9]", stats), stats


def test_hpack_bomb_and_continuation_flood_get_goaway(served: Served) -> None:
    # A header list far over 60 KiB, from a small block: one big literal
    # indexed once, then referenced again and again.
    sock, conn = _client(served.port)
    with sock:
        headers = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                   (b":authority", b"x")] + [(b"x-bomb", b"a" * 4000)] * 40  # fmt: skip
        conn.send_headers(1, headers, end_stream=True)
        sock.sendall(conn.data_to_send())
        assert _read_until_goaway(sock, conn) == 11
    sock, conn = _client(served.port)
    with sock:
        # HEADERS without END_HEADERS, then empty CONTINUATION frames forever.
        block = b"\x82\x86\x84"  # :method GET, :scheme http, :path /
        sock.sendall(len(block).to_bytes(3, "big") + b"\x01\x01\x00\x00\x00\x01" + block)
        continuation = b"\x00\x00\x00\x09\x00\x00\x00\x00\x01"
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(1000):
                sock.sendall(continuation * 10)
                time.sleep(0.001)
    assert _well_behaved_get(served.port) == 200
    stats = served.proxy.admin_get("/stats")[1]
    assert re.search(r"http2\.header_overflow: [1-9]", stats), stats
    assert re.search(r"http2\.too_many_header_frames: [1-9]", stats), stats


def test_access_log_protocol_is_http2(start_proxy, make_backend, tmp_path) -> None:
    backend = make_backend("logged")
    port, log = free_port(), tmp_path / "access.log"
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("logged")])], access_log=str(log))],
        [static_cluster("logged", [backend.port])],
    )
    assert h2c(f"http://127.0.0.1:{port}/").status == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (log.exists() and log.read_text().strip()):
        time.sleep(0.05)
    line = log.read_text().strip().splitlines()[-1]
    assert "HTTP/2" in line, line


# -- under TLS: ALPN h2 (the gateway) and istio-h2 (between sidecars) ------------------------


def _tls_listener(port: int, cert: tuple[Path, Path], alpn: tuple[str, ...], root: Path | None):
    config = listener("tls", port, [vhost("all", ["*"], [route("app")])], inbound=root is not None)
    chain = config["filter_chains"][0]
    chain["filter_chain_match"] = {"transport_protocol": "tls"}
    common: dict[str, Any] = {
        "tls_certificate_sds_secret_configs": [sds(f"file-cert:{cert[0]}~{cert[1]}")],
        "alpn_protocols": list(alpn),
    }
    if root is not None:
        common["combined_validation_context"] = {
            "default_validation_context": {},
            "validation_context_sds_secret_config": sds(f"file-root:{root}"),
        }
    chain["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS_CONTEXT, "require_client_certificate": root is not None,
            "common_tls_context": common,
        },
    }  # fmt: skip
    config["listener_filters"] = [
        {
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
            },
        }
    ]
    return config


def test_curl_http2_over_tls_to_the_gateways_alpn(tmp_path: Path, start_proxy, make_backend) -> None:
    ca = self_signed(tmp_path / "ca", "cluster.local")
    backend = make_backend("app")
    port = free_port()
    start_proxy(
        [_tls_listener(port, issue(ca, tmp_path, "gateway"), GATEWAY_ALPN, None)],
        [static_cluster("app", [backend.port])],
    )
    url = f"https://127.0.0.1:{port}/echo"
    for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
        done = subprocess.run(
            ["curl", "-sk", flag, "--max-time", "5", "-w", "\n%{http_code} %{http_version}", url],
            capture_output=True, timeout=15, env=env_without_proxy(), text=True,
        )  # fmt: skip
        body, _, outcome = done.stdout.rpartition("\n")
        assert outcome == f"200 {version}", done.stdout + done.stderr
        assert json.loads(body)["headers"]["host"] == f"127.0.0.1:{port}"


def test_istio_h2_between_sidecars_under_mutual_tls(tmp_path: Path, start_proxy, make_backend) -> None:
    ca = self_signed(tmp_path / "ca", "cluster.local")
    root = tmp_path / "root.pem"
    root.write_text(pem(ca.root))
    backend = make_backend("app")
    port = free_port()
    start_proxy(
        [_tls_listener(port, issue(ca, tmp_path, "server"), SERVER_ALPN, root)],
        [static_cluster("app", [backend.port])],
    )
    cert, key = issue(ca, tmp_path, "client")
    context = ssl.create_default_context(cafile=str(root))
    context.check_hostname = False
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols(["istio-h2"])
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5)) as sock:
        assert sock.selected_alpn_protocol() == "istio-h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
        conn.initiate_connection()
        _request(conn, 1, port, "/echo")
        sock.sendall(conn.data_to_send())
        status, body, ended = None, b"", False
        while not ended:
            data = sock.recv(65536)
            assert data, "the proxy closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                ended = ended or isinstance(event, h2.events.StreamEnded)
            sock.sendall(conn.data_to_send())
    assert status == b"200"
    assert b'"backend": "app"' in body


# -- trailers, resets and drain ----------------------------------------------------------------


class _TrailersBackend(RawServer):
    """An HTTP/1.1 backend that keeps the request it read and answers with a
    chunked body and a trailer, or (`cut`) with half a body and a close."""

    def __init__(self, cut: bool = False) -> None:
        super().__init__()
        self.cut, self.seen = cut, b""

    def converse(self, conn: socket.socket) -> None:
        data = b""
        while not data.endswith(b"\r\n\r\n") or b"0\r\n" not in data.partition(b"\r\n\r\n")[2]:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        self.seen = data
        head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: grpc-status\r\n\r\n"
        if self.cut:
            conn.sendall(head + b"5\r\nhel")
            return
        conn.sendall(head + b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n")


def _converse(sock: socket.socket, conn: h2.connection.H2Connection, until: type) -> list[Any]:
    """Events until one of type `until` (or the socket closes)."""
    seen: list[Any] = []
    sock.sendall(conn.data_to_send())
    while not any(isinstance(e, until) for e in seen):
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            seen.append(event)
            if isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        sock.sendall(conn.data_to_send())
    return seen


def _post_with_trailers(conn: h2.connection.H2Connection, stream_id: int, port: int) -> None:
    conn.send_headers(stream_id, [(b":method", b"POST"), (b":path", b"/t"), (b":scheme", b"http"),
                                  (b":authority", b"127.0.0.1:%d" % port)])  # fmt: skip
    conn.send_data(stream_id, b"abc")
    conn.send_headers(stream_id, [(b"x-checksum", b"900150983cd24fb0")], end_stream=True)


def test_trailers_go_both_ways_through_an_http1_backend(start_proxy) -> None:
    backend = _TrailersBackend()
    port = free_port()
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("raw")])])],
        [static_cluster("raw", [backend.port])],
    )
    sock, conn = _client(port)
    with sock:
        _post_with_trailers(conn, 1, port)
        events = _converse(sock, conn, h2.events.StreamEnded)
    backend.close()
    # HTTP/2's request trailers became the HTTP/1.1 chunked body's trailer section.
    assert b"transfer-encoding: chunked" in backend.seen.lower()
    assert backend.seen.endswith(b"3\r\nabc\r\n0\r\nx-checksum: 900150983cd24fb0\r\n\r\n")
    head = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert dict(head.headers)[b":status"] == b"200"
    assert b"transfer-encoding" not in dict(head.headers)
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"hello"
    trailers = next(e for e in events if isinstance(e, h2.events.TrailersReceived))
    assert trailers.headers == [(b"grpc-status", b"0")]


def test_an_upstream_cut_resets_the_stream_and_a_client_reset_is_dc(
    start_proxy, make_backend, tmp_path: Path
) -> None:
    cut, slow = _TrailersBackend(cut=True), make_backend("slow")
    port, log = free_port(), tmp_path / "access.log"
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("raw", prefix="/t"), route("slow")])],
                  access_log=str(log))],
        [static_cluster("raw", [cut.port]), static_cluster("slow", [slow.port])],
    )  # fmt: skip
    sock, conn = _client(port)
    with sock:
        _post_with_trailers(conn, 1, port)
        events = _converse(sock, conn, h2.events.StreamReset)
        reset = next(e for e in events if isinstance(e, h2.events.StreamReset))
        assert reset.stream_id == 1
        # The connection goes on: a client reset of a slow request is the
        # client's doing (DC), and the next stream is served.
        _request(conn, 3, port, "/?delay=1")
        sock.sendall(conn.data_to_send())
        time.sleep(0.2)
        conn.reset_stream(3, 8)
        _request(conn, 5, port, "/")
        events = _converse(sock, conn, h2.events.StreamEnded)
        assert any(isinstance(e, h2.events.ResponseReceived) and e.stream_id == 5 for e in events)
    cut.close()
    lines = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(lines) < 3:
        lines = log.read_text().splitlines() if log.exists() else []
        time.sleep(0.05)
    flags = {json.loads(line)["path"]: json.loads(line)["response_flags"] for line in lines}
    assert flags == {"/t": "UC", "/?delay=1": "DC", "/": "-"}, lines


def test_drain_sends_goaway_and_closes(start_proxy, make_backend) -> None:
    backend = make_backend("app")
    port = free_port()
    proxy = start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("app")])])],
        [static_cluster("app", [backend.port])],
    )
    sock, conn = _client(port)
    with sock:
        _request(conn, 1, port)
        _converse(sock, conn, h2.events.StreamEnded)
        _request(conn, 3, port, "/?delay=1")  # in flight when the drain starts
        sock.sendall(conn.data_to_send())
        time.sleep(0.2)
        assert proxy.admin_post("/drain_listeners")[0] == 200
        events = _converse(sock, conn, h2.events.ConnectionTerminated)
        goaway = next(e for e in events if isinstance(e, h2.events.ConnectionTerminated))
        assert goaway.error_code == 0 and goaway.last_stream_id == 3
        # The stream in flight is still answered, then the connection closes.
        conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN  # h2 reads on
        events = _converse(sock, conn, h2.events.StreamEnded)
        head = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
        assert head.stream_id == 3 and dict(head.headers)[b":status"] == b"200"
        sock.settimeout(3)
        assert sock.recv(100) == b""


def test_http1_request_trailers_read_before_the_upstream_connects_are_kept(start_proxy) -> None:
    # A defect the HTTP/2 work found: a chunked request whose end (with its
    # trailers) was read before the upstream connection opened lost them.
    backend = _TrailersBackend()
    port = free_port()
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("raw")])])],
        [static_cluster("raw", [backend.port])],
    )
    raw_exchange(
        port,
        b"POST /t HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        b"3\r\nabc\r\n0\r\nx-checksum: 1\r\n\r\n",
    )
    backend.close()
    assert backend.seen.endswith(b"3\r\nabc\r\n0\r\nx-checksum: 1\r\n\r\n"), backend.seen


def test_codec_type_http1_takes_no_http2_and_the_header_limit_is_the_listeners(
    start_proxy, make_backend
) -> None:
    backend = make_backend("app")
    h1_only, small = free_port(), free_port()
    start_proxy(
        [listener("h1", h1_only, [vhost("all", ["*"], [route("app")])], codec_type="HTTP1"),
         listener("small", small, [vhost("all", ["*"], [route("app")])],
                  max_request_headers_kb=2)],
        [static_cluster("app", [backend.port])],
    )  # fmt: skip
    done = subprocess.run(
        ["curl", "-s", "--http2-prior-knowledge", "--max-time", "5", f"http://127.0.0.1:{h1_only}/"],
        capture_output=True, timeout=15, env=env_without_proxy(),
    )  # fmt: skip
    assert done.returncode != 0  # the preface is not HTTP/1.1: no HTTP/2 answer comes
    assert curl(f"http://127.0.0.1:{h1_only}/").status == 200
    sock, conn = _client(small)
    with sock:
        conn.send_headers(1, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                              (b":authority", b"x"), (b"x-big", b"a" * 3000)], end_stream=True)
        sock.sendall(conn.data_to_send())
        assert _read_until_goaway(sock, conn) == 11  # ENHANCE_YOUR_CALM
    assert h2c(f"http://127.0.0.1:{small}/", "-H", "x-small: " + "a" * 1000).status == 200


def test_a_stream_idle_too_long_gets_408_and_the_connection_goes_on(
    start_proxy, make_backend
) -> None:
    backend = make_backend("app")
    port = free_port()
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("app")])], stream_idle_timeout="1s")],
        [static_cluster("app", [backend.port])],
    )
    sock, conn = _client(port)
    with sock:
        conn.send_headers(1, [(b":method", b"POST"), (b":path", b"/upload"), (b":scheme", b"http"),
                              (b":authority", b"x")])  # a body that never comes  # fmt: skip
        started = time.monotonic()
        events = _converse(sock, conn, h2.events.StreamEnded)
        waited = time.monotonic() - started
        head = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
        assert dict(head.headers)[b":status"] == b"408"
        body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        assert body == b"stream timeout"
        assert 0.9 < waited < 3
        # The proxy asks the client to stop sending the body it no longer wants.
        if not any(isinstance(e, h2.events.StreamReset) for e in events):
            events = _converse(sock, conn, h2.events.StreamReset)
        reset = next(e for e in events if isinstance(e, h2.events.StreamReset))
        assert (reset.stream_id, reset.error_code) == (1, 0)
        _request(conn, 3, port)
        events = _converse(sock, conn, h2.events.StreamEnded)
        assert any(isinstance(e, h2.events.ResponseReceived) for e in events)


def _rapid_reset_flood(port: int) -> int | None:
    sock, conn = _client(port)
    with sock:
        for stream_id in range(1, 1201, 2):
            _request(conn, stream_id, port, "/?delay=0.2", b"flood.example")
            conn.reset_stream(stream_id)
            sock.sendall(conn.data_to_send())
        return _read_until_goaway(sock, conn)


def test_floods_side_by_side_while_a_good_client_is_served(start_proxy, make_backend) -> None:
    """Several hostile connections at once; a well-behaved HTTP/2 client on
    its own connection gets every answer meanwhile, and the proxy's memory
    stays bounded. The floods go to a service of their own: what reaches the
    upstream before the GOAWAY (500 streams a connection, as Envoy lets
    through) would otherwise meet the same circuit breakers (503 UO)."""
    app, flooded, port = make_backend("app"), make_backend("flooded"), free_port()
    proxy = start_proxy(
        [listener("in", port, [vhost("flood", ["flood.example"], [route("flooded")]),
                               vhost("all", ["*"], [route("app")])])],
        [static_cluster("app", [app.port]), static_cluster("flooded", [flooded.port])],
    )  # fmt: skip
    served = Served(proxy, port, app)
    rss_before = served.proxy.rss_kb()
    codes: list[int | None] = []
    floods = [threading.Thread(target=lambda: codes.append(_rapid_reset_flood(served.port)))
              for _ in range(4)]  # fmt: skip
    for flood in floods:
        flood.start()
    statuses = []
    sock, conn = _client(served.port)
    with sock:
        for stream_id in range(1, 41, 2):
            _request(conn, stream_id, served.port, f"/echo?n={stream_id}")
            events = _converse(sock, conn, h2.events.StreamEnded)
            statuses += [dict(e.headers)[b":status"] for e in events
                         if isinstance(e, h2.events.ResponseReceived)]  # fmt: skip
    for flood in floods:
        flood.join(timeout=30)
    assert statuses == [b"200"] * 20
    # Each flood read its GOAWAY: the proxy's close waits a moment after it
    # (Envoy's delayed close), so it cannot reach a client still writing as a
    # reset that overtakes the frame.
    assert codes == [11, 11, 11, 11]
    stats = proxy.admin_get("/stats")[1]
    assert "http2.downstream_rq_too_many_premature_resets: 4" in stats, stats
    assert served.proxy.rss_kb() - rss_before < 32 * 1024


def test_head_and_a_small_post(served: Served) -> None:
    head = h2c(served.url("/"), "-I")
    assert head.status == 200 and head.body.strip() == b""  # curl -I: the head only
    assert head.header("content-length") == "4"  # the GET's, as HTTP/1.1 says it
    posted = h2c(served.url("/upload"), "-H", "content-type: application/octet-stream", data=b"x" * 10)
    assert posted.json()["size"] == 10


class _BodyOn204Backend(RawServer):
    """A keep-alive backend that wrongly sends a body after its 204, once."""

    once = True

    def converse(self, conn: socket.socket) -> None:
        while True:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            if self.once:
                self.once = False
                conn.sendall(b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nstray")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


def test_a_stream_that_meets_a_defect_fails_alone(start_proxy) -> None:
    backend = _BodyOn204Backend()
    port = free_port()
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("raw")])])],
        [static_cluster("raw", [backend.port])],
    )
    statuses: dict[int, bytes] = {}
    sock, conn = _client(port)
    with sock:
        for stream_id in (1, 3, 5):
            _request(conn, stream_id, port)
            events = _converse(sock, conn, (h2.events.StreamEnded, h2.events.StreamReset))
            for event in events:
                if isinstance(event, h2.events.ResponseReceived):
                    statuses[event.stream_id] = dict(event.headers)[b":status"]
                elif isinstance(event, h2.events.StreamReset):
                    statuses[event.stream_id] = b"reset"
    backend.close()
    assert statuses[1] == b"204"
    assert statuses[5] == b"200"  # the connection lived on
