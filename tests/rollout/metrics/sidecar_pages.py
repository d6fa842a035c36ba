"""Sidecar pages for the metrics tests, written by the proxy's own telemetry
(the code that serves /stats/prometheus), and served over real HTTP."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pilotfish.model.types import Instance
from pilotfish.proxy.telemetry import ServiceInfo, Telemetry, WorkloadInfo

PEER = WorkloadInfo(workload="productpage-v1", namespace="shop", app="productpage")
SERVICE = ServiceInfo("reviews.shop.svc.cluster.local", "reviews", "shop")


class Sidecar:
    """One sidecar's telemetry, fed requests by hand; `page()` is what the
    proxy would answer on /stats/prometheus."""

    def __init__(self, workload: str = "reviews", namespace: str = "shop") -> None:
        self.telemetry = Telemetry(WorkloadInfo(workload=workload, namespace=namespace))

    def serve(
        self, code: int, n: int = 1, duration_ms: float = 3.0, outbound: bool = False
    ) -> None:
        reporter = self.telemetry.outbound if outbound else self.telemetry.inbound
        for _ in range(n):
            reporter.record(PEER, SERVICE, code, "", duration_ms, 0, 0)

    def page(self) -> str:
        return self.telemetry.prometheus().decode()

    def restart(self) -> None:
        """A new sidecar process: every counter from zero again."""
        self.telemetry = Telemetry(self.telemetry.own)


def instance(
    name: str, workload: str = "reviews", port: int = 0, namespace: str = "shop"
) -> Instance:
    return Instance(
        name=name,
        namespace=namespace,
        workload=workload,
        address="127.0.0.1",
        ports={"http": 9080},
        metrics_port=port,
    )


@contextlib.contextmanager
def serving(sidecar: Sidecar) -> Iterator[int]:
    """`sidecar`'s page on /stats/prometheus of a real HTTP server; its port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/stats/prometheus":
                self.send_error(404)
                return
            body = sidecar.page().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers:
    a hung sidecar."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
