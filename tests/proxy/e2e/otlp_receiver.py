"""A test's OTLP/HTTP collector: `POST /v1/traces` decoded with the
OpenTelemetry protocol's own classes, spans kept with their service.name."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span


@dataclass
class Received:
    service: str
    span: Span

    def attr(self, key: str) -> str | None:
        for kv in self.span.attributes:
            if kv.key == key:
                return str(kv.value.string_value)
        return None


@dataclass
class OtlpReceiver:
    spans: list[Received] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    port: int = 0

    def start(self) -> OtlpReceiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = ExportTraceServiceRequest.FromString(body)
                with owner.lock:
                    owner.content_types.append(self.headers.get("Content-Type", ""))
                    for rs in request.resource_spans:
                        name = next(
                            (a.value.string_value for a in rs.resource.attributes
                             if a.key == "service.name"),
                            "",
                        )  # fmt: skip
                        for ss in rs.scope_spans:
                            owner.spans.extend(Received(name, s) for s in ss.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.spans)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def blackhole() -> socket.socket:
    """A listening socket that never accepts: connects succeed (the kernel's
    backlog), nothing is ever read or answered."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock
