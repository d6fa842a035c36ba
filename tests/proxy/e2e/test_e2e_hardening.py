"""What a hostile client or a hostile peer tries against a running sidecar:
smuggling past the proxy with Connection, a duplicate Content-Length, a
forged workload identity in the metadata-exchange headers, and slow bodies
that would hold every upstream slot. Raw sockets, curl and real backends."""

from __future__ import annotations

import base64
import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from google.protobuf import struct_pb2
from harness import (
    Backend,
    Proxy,
    RawServer,
    curl,
    free_port,
    listener,
    raw_exchange,
    route,
    static_cluster,
    status_of,
    vhost,
)
from prometheus_client.parser import text_string_to_metric_families

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass
class Served:
    proxy: Proxy
    port: int
    backend: Backend

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def served(start_module_proxy, module_backends) -> Served:
    backend = module_backends("app")
    port = free_port()
    proxy = start_module_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("app")])])],
        [static_cluster("app", [backend.port])],
    )
    return Served(proxy, port, backend)


@pytest.fixture
def app(served: Served) -> Iterator[Backend]:
    served.backend.reset()
    yield served.backend


def paths_seen(backend: Backend, settle: float = 0.3) -> list[str]:
    time.sleep(settle)  # a smuggled request would reach the backend just after the first
    with backend._lock:
        return [seen.path for seen in backend.requests]


def read_all(s: socket.socket) -> bytes:
    """What comes back until the proxy closes."""
    data = b""
    with contextlib.suppress(OSError):
        while chunk := s.recv(65536):
            data += chunk
    return data


# -- Connection may not remove framing (or what the proxy relies on) -------------------------


def test_connection_content_length_smuggle_is_refused(served: Served, app: Backend) -> None:
    """The issue's attack on the raw socket: without the fix the proxy drops
    Content-Length (Connection names it) but forwards the body, so the
    backend serves the body as a second request, /smuggled."""
    request = (
        b"POST /attacker HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\n"
        b"Content-Length: %d\r\n\r\n" % len(SMUGGLED)
    ) + SMUGGLED
    raw = raw_exchange(served.port, request, timeout=2)
    assert status_of(raw) == 400
    assert raw.count(b"HTTP/1.1 ") == 1
    assert paths_seen(app) == []


def test_connection_content_length_smuggle_with_curl(served: Served, app: Backend) -> None:
    """The issue's reproduction, with curl."""
    response = curl(
        served.url("/attacker"), headers={"Connection": "Content-Length"}, data=SMUGGLED
    )
    assert response.status == 400
    assert response.headers.get("x-pilotfish-flags") == "DPE"
    assert paths_seen(app) == []


@pytest.mark.parametrize(
    "nominated",
    ["Host", "Transfer-Encoding", "x-forwarded-for", "X-Forwarded-Proto", "x-envoy-peer-metadata"],
)
def test_connection_naming_a_protected_header_is_400(
    served: Served, app: Backend, nominated: str
) -> None:
    assert curl(served.url("/echo"), headers={"Connection": nominated}).status == 400
    assert paths_seen(app, settle=0) == []


def test_connection_may_still_remove_other_headers(served: Served, app: Backend) -> None:
    seen = curl(
        served.url("/echo"), headers={"Connection": "x-hop, x-request-id", "x-hop": "1"}
    ).json()["headers"]
    assert "x-hop" not in seen
    assert seen["x-request-id"]  # removed, so the proxy made its own, as Envoy does


def test_duplicate_identical_content_length_is_400(served: Served, app: Backend) -> None:
    request = (
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
    )
    raw = raw_exchange(served.port, request, timeout=2)
    assert status_of(raw) == 400
    assert raw.count(b"HTTP/1.1 ") == 1
    assert paths_seen(app, settle=0) == []


def test_a_request_read_while_another_is_answered_waits_its_turn(
    served: Served, app: Backend
) -> None:
    """HTTP/1.1 answers in order. The second request comes in a read of its
    own while the first (read the express way) waits for its slow answer;
    without the fix it was forwarded at once, and the client got only its
    answer: the first request's answer was lost, and a client pairing
    answers with requests took the second's for the first."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"GET /echo?delay=0.5&n=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        s.sendall(b"GET /echo?n=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = read_all(s)
    assert answers.count(b"HTTP/1.1 200 ") == 2, answers
    first, second = answers.index(b"n=1"), answers.index(b"n=2")
    assert first < second
    assert paths_seen(app, settle=0) == ["/echo?delay=0.5&n=1", "/echo?n=2"]


class ScriptedBackend(RawServer):
    """Answers every request it reads with `answer`, keeping the connection open."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        super().__init__()

    def converse(self, conn: socket.socket) -> None:
        while conn.recv(65536):
            conn.sendall(self.answer)


def test_a_response_keeps_its_content_length_whatever_connection_says(start_proxy) -> None:
    """Without the fix the client got neither Content-Length nor chunked on a
    kept-alive connection: it cannot tell where the response ends."""
    nominating = ScriptedBackend(
        b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello"
    )
    port = free_port()
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("raw")])])],
        [static_cluster("raw", [nominating.port])],
    )
    url = f"http://127.0.0.1:{port}/"
    response = curl(url, timeout=3)
    assert response.status == 200
    assert response.headers.get("content-length") == "5"
    assert response.body == b"hello"
    nominating.close()


def test_a_switch_nobody_asked_for_is_503_upe(start_proxy) -> None:
    """An upstream answering 101 to a request that asked for no upgrade
    cannot be forwarded: the client would believe the protocol switched
    while the proxy still reads it as HTTP (without the fix: a 101 to a
    plain GET, then a connection that went nowhere)."""
    switching = ScriptedBackend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    port = free_port()
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("app")])])],
        [static_cluster("app", [switching.port])],
    )
    response = curl(f"http://127.0.0.1:{port}/", timeout=3)
    assert response.status == 503
    assert response.headers.get("x-pilotfish-flags") == "UPE"
    switching.close()


# -- the metadata exchange: who a caller is, is said by its sidecar --------------------------

CALLER_ID = "sidecar~127.0.0.1~productpage-v1-abc.default~default.svc.cluster.local"
CALLEE = {
    "WORKLOAD_NAME": "reviews-v1",
    "NAMESPACE": "default",
    "LABELS": {"app": "reviews", "version": "v1"},
}


def forged_metadata(workload: str, namespace: str) -> str:
    meta = struct_pb2.Struct()
    meta.update({"WORKLOAD_NAME": workload, "NAMESPACE": namespace, "LABELS": {"app": workload}})
    return base64.b64encode(meta.SerializeToString(deterministic=True)).decode()


FORGED = {
    "x-envoy-peer-metadata": forged_metadata("ratings-v1", "admin"),
    "x-envoy-peer-metadata-id": "sidecar~10.0.0.9~ratings-v1-xyz.admin~admin.svc.cluster.local",
}
# The express way (a plain request), and the long way (Connection naming a header).
WAYS = pytest.mark.parametrize("extra", [{}, {"Connection": "keep-alive, x-hop", "x-hop": "1"}])


def samples(proxy: Proxy, name: str) -> list[dict[str, str]]:
    status, text = proxy.admin_get("/stats/prometheus")
    assert status == 200
    return [
        dict(s.labels)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


@WAYS
def test_outbound_replaces_what_the_app_claims(start_proxy, make_backend, extra) -> None:
    """The upstream gets this sidecar's metadata only, once: not the app's
    forgery in front of it (a peer that reads the first value, as Envoy's
    header map does, would believe the forgery)."""
    app = make_backend("reviews")
    port = free_port()
    start_proxy(
        [listener("out", port, [vhost("all", ["*"], [route("reviews")])], outbound=True)],
        [static_cluster("reviews", [app.port])],
    )
    seen = curl(f"http://127.0.0.1:{port}/echo", headers={**FORGED, **extra}).json()["headers"]
    assert seen["x-envoy-peer-metadata-id"] == CALLER_ID
    assert FORGED["x-envoy-peer-metadata"] not in seen["x-envoy-peer-metadata"]
    assert "," not in seen["x-envoy-peer-metadata"]  # one value: the proxy's own


@WAYS
def test_the_callee_metrics_name_the_real_caller(start_proxy, make_backend, extra) -> None:
    """App -> its sidecar (outbound) -> the callee's sidecar (inbound) -> app:
    the callee's istio_requests_total names productpage-v1, whatever the
    calling app put in the metadata-exchange headers."""
    app = make_backend("reviews")
    inbound_port, outbound_port = free_port(), free_port()
    callee = start_proxy(
        [listener("in", inbound_port, [vhost("all", ["*"], [route("app")])], inbound=True)],
        [static_cluster("app", [app.port])],
        node_metadata=CALLEE,
    )
    start_proxy(
        [listener("out", outbound_port, [vhost("all", ["*"], [route("reviews")])], outbound=True)],
        [static_cluster("reviews", [inbound_port])],
    )
    response = curl(f"http://127.0.0.1:{outbound_port}/echo", headers={**FORGED, **extra})
    assert response.status == 200
    seen = response.json()["headers"]
    assert "x-envoy-peer-metadata" not in seen  # the inbound side keeps them from the app
    sources = {
        (s["source_workload"], s["source_workload_namespace"])
        for s in samples(callee, "istio_requests_total")
        if s["reporter"] == "destination"
    }
    assert sources == {("productpage-v1", "default")}


def test_inbound_replaces_what_the_app_answers(start_proxy) -> None:
    """The callee's app cannot speak for its workload either: the caller's
    sidecar gets the callee sidecar's metadata only."""
    forging = ScriptedBackend(
        b"HTTP/1.1 200 OK\r\nx-envoy-peer-metadata: "
        + FORGED["x-envoy-peer-metadata"].encode()
        + b"\r\nx-envoy-peer-metadata-id: forged\r\nContent-Length: 2\r\n\r\nok"
    )
    port = free_port()
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("app")])], inbound=True)],
        [static_cluster("app", [forging.port])],
        node_metadata=CALLEE,
    )
    for request in (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # the express way
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: x-hop\r\n\r\n",  # the long way
    ):
        raw = raw_exchange(port, request, timeout=2, read_until_close=False)
        head = raw.partition(b"\r\n\r\n")[0].lower()
        assert head.count(b"x-envoy-peer-metadata:") == 1, raw
        assert FORGED["x-envoy-peer-metadata"].lower().encode() not in head
        assert b"x-envoy-peer-metadata-id: forged" not in head
    forging.close()


# -- slow bodies: a request timeout, and slots only for requests ready to go -----------------

LIMITS = {"thresholds": [{"max_connections": 2, "max_pending_requests": 2, "max_requests": 2}]}


def slow_post(port: int, head: bytes) -> socket.socket:
    """A client that sends a head and the start of its body, then stalls."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(head)
    return s


def test_slow_bodies_do_not_starve_other_requests(start_proxy, make_backend) -> None:
    """Many more slow POSTs than the cluster has request slots: a normal
    request still gets through at once (without the fix: 503, overflow, until
    the slow clients finish or time out)."""
    app = make_backend("app")
    port = free_port()
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("app")])], request_timeout="30s")],
        [static_cluster("app", [app.port], circuit_breakers=LIMITS)],
    )
    head = b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1000\r\n\r\n"
    slow = [slow_post(port, head + b"a" * 10) for _ in range(8)]
    try:
        time.sleep(0.3)
        started = time.monotonic()
        for _ in range(3):
            response = curl(f"http://127.0.0.1:{port}/echo", timeout=3)
            assert response.status == 200, (response.status, response.headers)
        assert time.monotonic() - started < 5  # the slow clients wait 30 s for theirs
        # A slow client that finishes is served in full.
        slow[0].sendall(b"b" * 990)
        answer = read_all(slow[0])
        assert status_of(answer) == 200
        assert b"1000" in answer.partition(b"\r\n\r\n")[2]
    finally:
        for s in slow:
            s.close()


@pytest.mark.parametrize(
    "head",
    [
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc",
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    ],
    ids=["buffered", "streamed"],
)
def test_a_request_slower_than_request_timeout_is_408(start_proxy, make_backend, head) -> None:
    app = make_backend("app")
    port = free_port()
    proxy = start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("app")])], request_timeout="1s")],
        [static_cluster("app", [app.port], circuit_breakers=LIMITS)],
    )
    started = time.monotonic()
    with slow_post(port, head) as s:
        answer = read_all(s)
    elapsed = time.monotonic() - started
    assert status_of(answer) == 408
    assert answer.endswith(b"\r\n\r\nrequest timeout")
    assert b"connection: close" in answer.lower()
    assert 0.9 <= elapsed < 3, elapsed
    text = proxy.admin_get("/stats")[1]
    stats = dict(line.split(": ") for line in text.splitlines())
    assert stats["http.in.downstream_rq_timeout"] == "1"
    assert stats["cluster.app.upstream_rq_active"] == "0"  # its slot, if it took one, is back
    assert curl(f"http://127.0.0.1:{port}/echo").status == 200


def test_a_request_with_nothing_moving_for_stream_idle_timeout_ends(
    start_proxy, make_backend
) -> None:
    """Envoy's stream_idle_timeout (accepted before, ignored): no byte either
    way for that long gives 504 `stream timeout`, flag SI, when the request
    was complete, 408 when the client stalled mid-body."""
    app = make_backend("app")
    port = free_port()
    proxy = start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("app")])], stream_idle_timeout="1s")],
        [static_cluster("app", [app.port])],
    )
    started = time.monotonic()
    response = curl(f"http://127.0.0.1:{port}/echo?delay=4", timeout=6)
    assert (response.status, response.body) == (504, b"stream timeout")
    assert response.headers.get("x-pilotfish-flags") == "SI"
    assert time.monotonic() - started < 3
    stalled = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    with slow_post(port, stalled) as s:
        answer = read_all(s)
    assert status_of(answer) == 408
    assert b"x-pilotfish-flags: SI" in answer
    text = proxy.admin_get("/stats")[1]
    stats = dict(line.split(": ") for line in text.splitlines())
    assert stats["http.in.downstream_rq_idle_timeout"] == "2"
