"""What every Bookinfo app shares: its port, its HTTP server, and how it calls
the others.

Like Istio's Bookinfo, the apps know nothing of the mesh: they call
`http://reviews:9080/...` and let the sidecar (reached through $HTTP_PROXY)
find an instance. What they must do themselves is propagate the request's
trace and user headers, or the mesh cannot stitch a trace or route on the
user (Istio's docs call this out for every application).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The headers Bookinfo's productpage forwards (productpage.py's
# getForwardHeaders), the same list every Bookinfo service propagates.
FORWARD_HEADERS = (
    "x-request-id",
    "x-ot-span-context",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "traceparent",
    "tracestate",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "sw8",
    "user-agent",
    "cookie",
    "authorization",
    "jwt",
    "end-user",
)
SERVICES_PORT = int(os.environ.get("SERVICES_PORT", "9080"))
# details over gRPC: one unary method whose messages are google.protobuf.Struct
DETAILS_GRPC_SERVICE = "bookinfo.Details"
DETAILS_GRPC_METHOD = f"/{DETAILS_GRPC_SERVICE}/GetDetails"


def service_url(service: str, path: str) -> str:
    """The address a caller in the mesh uses: the service name, never an instance."""
    domain = os.environ.get("SERVICES_DOMAIN", "")
    host = f"{service}.{domain}" if domain else service
    return f"http://{host}:{SERVICES_PORT}{path}"


def listen_port(name: str = "http", default: int = 9080) -> int:
    """The node agent gives each instance its own port: PORT, or PILOTFISH_PORT_<NAME>."""
    value = os.environ.get(f"PILOTFISH_PORT_{name.upper()}") or os.environ.get("PORT")
    return int(value) if value else default


def instance_name(fallback: str) -> str:
    """What the page shows as "served by": the instance, as Bookinfo shows the pod."""
    return os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or fallback


def forward_headers(incoming: Mapping[str, str]) -> dict[str, str]:
    lowered = {k.lower(): v for k, v in incoming.items()}
    return {name: lowered[name] for name in FORWARD_HEADERS if name in lowered}


def call_json(url: str, headers: Mapping[str, str], timeout: float) -> tuple[int, Any]:
    """GET a JSON document through the sidecar ($HTTP_PROXY). The status and
    the decoded body; (0, None) when nothing answered in time, as a caller
    only needs to know it got no usable answer."""
    request = urllib.request.Request(url, headers=dict(headers))
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, None
    except (OSError, ValueError):
        return 0, None


def _opener() -> urllib.request.OpenerDirector:
    """Only HTTP_PROXY counts: the app's one way out is its sidecar."""
    proxy = os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy")
    handler = urllib.request.ProxyHandler({"http": proxy} if proxy else {})
    return urllib.request.build_opener(handler)


_OPENER = _opener()


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; subclasses answer through `send`."""

    protocol_version = "HTTP/1.1"
    server_version = "bookinfo"
    # Buffered: an answer's head and body leave in one write when the request
    # ends. An app killed between two writes would send a head whose body
    # never comes, which no proxy can retry (its status is already on the way).
    wbufsize = 1 << 16

    def send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, document: Any) -> None:
        self.send(status, json.dumps(document).encode())

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def serve(handler: type[Handler], name: str) -> None:
    """Serve until SIGTERM or SIGINT; both end cleanly so a drain is quick."""
    server = ThreadingHTTPServer(("127.0.0.1", listen_port()), handler)
    server.daemon_threads = True

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    port = server.server_address[1]
    print(f"{name} listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()
