"""gRPC semantics through a real proxy, over HTTP/1.1 (the exchange reads
head and trailer values, so HTTP/2 streams get the same): gRPC-shaped local
replies, retries on gRPC conditions, grpc-timeout, a fault abort with a
grpc_status, and grpc_response_status in the metrics and the access log.

The backend is a raw socket server answering as a gRPC server would:
trailers-only (grpc-status in the headers) or a chunked body with
grpc-status in its trailers."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from harness import (
    RawServer,
    access_log_lines,
    admin_clusters_health,
    closed_port,
    free_port,
    listener,
    parse_head,
    raw_exchange,
    route,
    static_cluster,
    vhost,
)

CLUSTER = "outbound|50051||echo.default.svc.cluster.local"
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
GRPC_FRAME = b"\x00\x00\x00\x00\x02\x08\x01"  # an uncompressed message of 2 bytes


def grpc_call(port: int, path: str = "/echo.Echo/Call", **headers: str) -> bytes:
    head = [
        f"POST {path} HTTP/1.1",
        "host: echo.default.svc.cluster.local:50051",
        "content-type: application/grpc",
        "te: trailers",
        f"content-length: {len(GRPC_FRAME)}",
        *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
    ]
    data = ("\r\n".join(head) + "\r\nconnection: close\r\n\r\n").encode() + GRPC_FRAME
    return raw_exchange(port, data)


def answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (and any chunked trailers, merged in) and body of a response."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    if headers.get("transfer-encoding") != "chunked":
        return status, headers, rest
    body = b""
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            trailers = rest.partition(b"\r\n\r\n")[0]
            for line in trailers.decode().split("\r\n"):
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            return status, headers, body
        body, rest = body + rest[:size], rest[size + 2 :]


class GrpcBackend(RawServer):
    """Answers each call: the first `unavailable_first` trailers-only with
    UNAVAILABLE, then OK with a message and grpc-status 0 in the trailers;
    after `delay` seconds."""

    def __init__(self, unavailable_first: int = 0, delay: float = 0.0) -> None:
        self.unavailable_first, self.delay = unavailable_first, delay
        self.calls: list[dict[str, str]] = []
        self.lock = threading.Lock()
        super().__init__()

    def converse(self, conn: socket.socket) -> None:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            headers = parse_head(b"HTTP/1.1 000 x\r\n" + head.partition(b"\r\n")[2])[1]
            length = int(headers.get("content-length", "0"))
            while len(data) < length:
                data += conn.recv(65536)
            data = data[length:]
            with self.lock:
                self.calls.append(headers)
                number = len(self.calls)
            time.sleep(self.delay)
            conn.sendall(self.reply(number))

    def reply(self, number: int) -> bytes:
        if number <= self.unavailable_first:
            return (
                b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 14\r\n"
                b"grpc-message: going away\r\ncontent-length: 0\r\n\r\n"
            )
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"
            b"transfer-encoding: chunked\r\ntrailer: grpc-status\r\n\r\n"
            + b"%x\r\n%s\r\n" % (len(GRPC_FRAME), GRPC_FRAME)
            + b"0\r\ngrpc-status: 0\r\ngrpc-message: \r\n\r\n"
        )


def grpc_proxy(
    start_proxy: Any,
    backend_port: int,
    action: dict[str, Any] | None = None,
    tmp_path: Path | None = None,
    **route_extra: Any,
) -> tuple[Any, int]:
    port = free_port()
    filters = [{"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT_TYPE}}]
    proxy = start_proxy(
        [
            listener(
                "outbound",
                port,
                [
                    vhost(
                        "echo",
                        ["*"],
                        [route(CLUSTER, prefix="/echo.", action=action, **route_extra)],
                    )
                ],
                http_filters=filters,
                outbound=True,
                access_log=str(tmp_path / "access.log") if tmp_path else None,
            )
        ],
        [static_cluster(CLUSTER, [backend_port], connect_timeout="0.5s")],
    )
    return proxy, port


def metric(proxy: Any, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    _, text = proxy.admin_get("/stats/prometheus")
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "istio_requests_total" and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_no_upstream_is_a_trailers_only_unavailable(start_proxy, tmp_path) -> None:
    proxy, port = grpc_proxy(start_proxy, closed_port(), tmp_path=tmp_path)
    status, headers, body = answer(grpc_call(port))
    assert status == 200 and body == b""
    assert headers["content-type"] == "application/grpc"
    assert headers["grpc-status"] == "14"
    assert headers["grpc-message"].startswith("upstream connect error or disconnect/reset")
    assert headers["x-pilotfish-flags"] == "UF"
    # A plain HTTP caller on the same route still gets Envoy's 503.
    plain = raw_exchange(
        port, b"GET /echo.Echo/Call HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    assert parse_head(plain.partition(b"\r\n\r\n")[0])[0] == 503
    # The access log and the metrics say what Envoy's do: 200, and the gRPC status.
    line = next(x for x in access_log_lines(tmp_path / "access.log", 2) if x["method"] == "POST")
    assert (line["response_code"], line["response_flags"]) == (200, "UF")
    assert (line["grpc_status"], line["grpc_status_number"]) == ("Unavailable", 14)
    assert (
        metric(proxy, request_protocol="grpc", response_code="200", grpc_response_status="14") == 1
    )
    assert metric(proxy, request_protocol="http", response_code="503", grpc_response_status="") == 1


def test_no_route_is_unimplemented(start_proxy) -> None:
    backend = GrpcBackend()
    try:
        _, port = grpc_proxy(start_proxy, backend.port)
        status, headers, body = answer(grpc_call(port, "/other.Svc/Call"))
    finally:
        backend.close()
    assert (status, headers["grpc-status"], body) == (200, "12", b"")
    assert "grpc-message" not in headers  # Envoy's 404 has no body, so no message
    assert headers["x-pilotfish-flags"] == "NR"


def test_retry_on_unavailable_hides_a_trailers_only_failure(start_proxy) -> None:
    backend = GrpcBackend(unavailable_first=1)
    try:
        proxy, port = grpc_proxy(
            start_proxy,
            backend.port,
            {"retry_policy": {"retry_on": "unavailable", "num_retries": 1}},
        )
        status, headers, body = answer(grpc_call(port))
    finally:
        backend.close()
    assert (status, headers["grpc-status"], body) == (200, "0", GRPC_FRAME)
    assert len(backend.calls) == 2
    # TE is hop-by-hop, but gRPC servers want `te: trailers`: Envoy keeps it.
    assert backend.calls[0]["te"] == "trailers"
    # grpc_response_status from the trailers of the answer that went through.
    assert metric(proxy, request_protocol="grpc", grpc_response_status="0") == 1


def test_without_a_grpc_condition_unavailable_goes_through(start_proxy) -> None:
    backend = GrpcBackend(unavailable_first=1)
    try:
        proxy, port = grpc_proxy(
            start_proxy, backend.port, {"retry_policy": {"retry_on": "5xx", "num_retries": 1}}
        )
        status, headers, _ = answer(grpc_call(port))
    finally:
        backend.close()
    assert (status, headers["grpc-status"], headers["grpc-message"]) == (200, "14", "going away")
    assert len(backend.calls) == 1
    assert metric(proxy, request_protocol="grpc", grpc_response_status="14") == 1


def test_fault_abort_grpc_status(start_proxy, tmp_path) -> None:
    backend = GrpcBackend()
    fault = {
        "envoy.filters.http.fault": {
            "@type": FAULT_TYPE,
            "abort": {"grpc_status": 8, "percentage": {"numerator": 100}},
        }
    }
    try:
        _, port = grpc_proxy(
            start_proxy, backend.port, tmp_path=tmp_path, typed_per_filter_config=fault
        )
        status, headers, body = answer(grpc_call(port))
    finally:
        backend.close()
    assert (status, headers["grpc-status"], body) == (200, "8", b"")
    assert headers["grpc-message"] == "fault filter abort"
    assert headers["x-pilotfish-flags"] == "FI"
    assert backend.calls == []
    line = access_log_lines(tmp_path / "access.log", 1)[0]
    assert (line["response_flags"], line["grpc_status"]) == ("FI", "ResourceExhausted")


def test_grpc_timeout_bounds_the_route_timeout(start_proxy) -> None:
    """Istio's outbound routes carry max_grpc_timeout (0: uncapped): the
    router's timeout is the caller's grpc-timeout; hitting it is UT, 504,
    which a gRPC caller gets as UNAVAILABLE."""
    backend = GrpcBackend(delay=2.0)
    try:
        _, port = grpc_proxy(start_proxy, backend.port, {"timeout": "0s", "max_grpc_timeout": "0s"})
        started = time.monotonic()
        status, headers, _ = answer(grpc_call(port, grpc_timeout="300m"))
        took = time.monotonic() - started
    finally:
        backend.close()
    assert (status, headers["grpc-status"]) == (200, "14")
    assert headers["grpc-message"] == "upstream request timeout"
    assert headers["x-pilotfish-flags"] == "UT"
    assert 0.25 < took < 1.5


def test_grpc_timeout_capped_by_max_grpc_timeout(start_proxy) -> None:
    backend = GrpcBackend(delay=2.0)
    try:
        _, port = grpc_proxy(start_proxy, backend.port, {"max_grpc_timeout": "0.3s"})
        started = time.monotonic()
        status, headers, _ = answer(grpc_call(port, grpc_timeout="10S"))
        took = time.monotonic() - started
    finally:
        backend.close()
    assert (status, headers["grpc-status"], headers["x-pilotfish-flags"]) == (200, "14", "UT")
    assert 0.25 < took < 1.5
    # The upstream is told the deadline the proxy keeps, as Envoy rewrites grpc-timeout.
    assert backend.calls[0]["grpc-timeout"] == "300m"


def test_upstream_grpc_timeout_is_a_try_s(start_proxy) -> None:
    backend = GrpcBackend()
    retry = {"retry_on": "unavailable", "num_retries": 1, "per_try_timeout": "0.2s"}
    try:
        _, port = grpc_proxy(
            start_proxy, backend.port, {"max_grpc_timeout": "0s", "retry_policy": retry}
        )
        status, headers, _ = answer(grpc_call(port, grpc_timeout="5S"))
    finally:
        backend.close()
    assert (status, headers["grpc-status"]) == (200, "0")
    assert backend.calls[0]["grpc-timeout"] == "200m"


def test_grpc_timeout_as_stream_duration_is_deadline_exceeded(start_proxy, tmp_path) -> None:
    """Where the route says max_stream_duration.grpc_timeout_header_max (Istio's
    inbound routes), grpc-timeout is the stream's duration: Envoy's local
    reply for it is DEADLINE_EXCEEDED, flag DT."""
    backend = GrpcBackend(delay=2.0)
    action = {"timeout": "0s", "max_stream_duration": {"grpc_timeout_header_max": "0s"}}
    try:
        _, port = grpc_proxy(start_proxy, backend.port, action, tmp_path=tmp_path)
        status, headers, _ = answer(grpc_call(port, grpc_timeout="300m"))
    finally:
        backend.close()
    assert (status, headers["grpc-status"]) == (200, "4")
    assert headers["grpc-message"] == "downstream duration timeout"
    assert headers["x-pilotfish-flags"] == "DT"
    line = access_log_lines(tmp_path / "access.log", 1)[0]
    assert line["response_code_details"] == "max_duration_timeout"
    assert line["grpc_status"] == "DeadlineExceeded"


def test_without_grpc_timeout_an_ok_call_passes(start_proxy) -> None:
    backend = GrpcBackend(delay=0.3)
    try:
        _, port = grpc_proxy(start_proxy, backend.port, {"timeout": "0s", "max_grpc_timeout": "0s"})
        status, headers, body = answer(grpc_call(port))
    finally:
        backend.close()
    assert (status, headers["grpc-status"], body) == (200, "0", GRPC_FRAME)


def test_outlier_detection_counts_trailers_only_unavailable(start_proxy) -> None:
    """Envoy's router gives outlier detection a gRPC call's trailers-only
    status as its HTTP equivalent: UNAVAILABLE counts as a 503, although the
    HTTP status is 200."""
    good, bad = GrpcBackend(), GrpcBackend(unavailable_first=1000)
    port = free_port()
    cluster = static_cluster(
        CLUSTER,
        [good.port, bad.port],
        outlier_detection={
            "consecutive_5xx": 2,
            "interval": "0.1s",
            "base_ejection_time": "30s",
            "max_ejection_percent": 50,
        },
    )
    proxy = start_proxy(
        [listener("outbound", port, [vhost("echo", ["*"], [route(CLUSTER)])], outbound=True)],
        [cluster],
    )
    try:
        statuses = [answer(grpc_call(port))[1]["grpc-status"] for _ in range(12)]
    finally:
        good.close()
        bad.close()
    assert len(bad.calls) == 2  # round robin: its second UNAVAILABLE in a row ejects it
    assert statuses[4:] == ["0"] * 8
    health = admin_clusters_health(proxy.admin_get("/clusters")[1], CLUSTER)
    assert "failed_outlier_check" in health[f"127.0.0.1:{bad.port}"]
    # The status code stats keep the HTTP status, as Envoy's.
    stats = proxy.admin_get("/stats")[1]
    assert f"cluster.{CLUSTER}.upstream_rq_200: 12\n" in stats, stats
