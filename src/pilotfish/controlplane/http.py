"""The HTTP/1.1 shell around Api: sockets, bodies, chunked watch streams, shutdown.

The stdlib's ThreadingHTTPServer: one thread per connection suits an API that
is called a few times a second and whose store is synchronous (the data
plane has its own asyncio stack). Nothing here decides what a request means.
"""

from __future__ import annotations

import contextlib
import logging
import re
import select
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pilotfish import __version__
from pilotfish.api.errors import ApiError, BadRequest, MethodNotAllowed
from pilotfish.controlplane.api import (
    MAX_BODY,
    Api,
    EventStream,
    Request,
    RequestEntityTooLarge,
    Response,
    encode,
    status_response,
)

log = logging.getLogger(__name__)

STREAM_TICK_S = 0.25  # how often an idle watch checks for shutdown and a departed client
IDLE_TIMEOUT_S = 120.0  # a keep-alive connection with no request for this long is closed


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (every interface) as (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f'invalid listen address "{listen}": expected HOST:PORT')
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port_text)


def client_url(host: str, port: int) -> str:
    """The URL a client on this host should use for a server bound to (host, port)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ApiServer:
    """Binds on construction, so a port in use fails before anything else starts;
    connections wait in the backlog until `serve_forever` or `start`, by which
    time `api` must be set. `stop` ends it all, watch streams included."""

    def __init__(self, listen: str, api: Api | None = None) -> None:
        host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = _HttpServer6 if family == socket.AF_INET6 else _HttpServer
        self._http = server_class((host, port), _Handler)
        self._api = api
        self._serving = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"ApiServer({self.url})"

    @property
    def host(self) -> str:
        return str(self._http.server_address[0])

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        return client_url(self.host, self.port)

    @property
    def api(self) -> Api:
        if self._api is None:
            raise RuntimeError("ApiServer.api must be set before serving")
        return self._api

    @api.setter
    def api(self, api: Api) -> None:
        self._api = api

    def serve_forever(self) -> None:
        self._http.api = self.api
        self._serving.set()
        self._http.serve_forever(poll_interval=0.2)

    def start(self) -> threading.Thread:
        """Serve on a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="api-server", daemon=True)
        self._thread.start()
        self._serving.wait()
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, end watch streams and idle keep-alive connections, wait
        for requests in flight (up to `timeout`), then close the socket."""
        if self._serving.is_set():
            self._http.shutdown()
        self._http.stopping.set()
        self._http.wake_idle_connections()
        self._http.wait_connections(timeout)
        self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    api: Api

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._changed = threading.Condition()

    def track(self, connection: socket.socket) -> None:
        with self._changed:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._changed:
            self._connections.discard(connection)
            self._changed.notify_all()

    def wake_idle_connections(self) -> None:
        """Shut the read side: a thread waiting for the next request sees EOF, while
        a response being written still goes out whole."""
        with self._changed:
            for connection in self._connections:
                with contextlib.suppress(OSError):  # already gone
                    connection.shutdown(socket.SHUT_RD)

    def wait_connections(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._connections and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
            if self._connections:
                log.warning("%d connections still open at shutdown", len(self._connections))


class _HttpServer6(_HttpServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The stdlib answers a request line it cannot parse as HTTP/0.9: a body with no
    # status line, which no client can tell from an answer. Nobody speaks 0.9.
    default_request_version = "HTTP/1.1"
    server_version = f"pilotfish/{__version__}"
    timeout = IDLE_TIMEOUT_S
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own refusals (a bad request line, headers or URI too long,
        a method it has no do_ for) as Status objects, as every other error here:
        clients read `reason` and `message`, not an HTML page."""
        self.log_error("code %d, message %s", code, message)
        if code == HTTPStatus.NOT_IMPLEMENTED:
            error = MethodNotAllowed(f"{self.command} is not supported")
            status = error.to_status()
        else:
            phrase = HTTPStatus(code).phrase
            reason = "".join(w[:1].upper() + w[1:] for w in re.split(r"[ -]", phrase))
            status = {**ApiError(message or phrase).to_status(), "reason": reason, "code": code}
        self.close_connection = True  # what follows on the connection cannot be trusted
        self._send(Response(status["code"], encode(status), headers=[("Connection", "close")]))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except ApiError as e:
            self.close_connection = True  # the unread body would be taken for the next request
            self._send(status_response(e))
            return
        method = "GET" if self.command == "HEAD" else self.command
        request = Request.of(method, self.path, dict(self.headers), body, self.client_address[0])
        response = self.server.api.handle(request)
        if response.stream is not None:
            self._stream(response.stream)
        else:
            self._send(response)
        if self.server.stopping.is_set():
            self.close_connection = True

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_text = self.headers.get("Content-Length") or "0"
        if not length_text.isdigit():
            raise BadRequest(f'invalid Content-Length "{length_text}"')
        length = int(length_text)
        if length > MAX_BODY:
            raise RequestEntityTooLarge(f"the request body is larger than {MAX_BODY} bytes")
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                chunk = int(line, 16)
            except ValueError:
                raise BadRequest("malformed chunked request body") from None
            size += chunk
            if size > MAX_BODY:
                raise RequestEntityTooLarge(f"the request body is larger than {MAX_BODY} bytes")
            if chunk == 0:
                while self.rfile.readline(1024).strip():
                    pass  # trailers, which mean nothing here
                return b"".join(parts)
            parts.append(self.rfile.read(chunk))
            self.rfile.readline(1024)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _stream(self, stream: EventStream) -> None:
        """Chunked JSON lines until the watch ends, the client leaves or we stop."""
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            while not stream.done and not self.server.stopping.is_set():
                line = stream.next_line(STREAM_TICK_S)
                if line is not None:
                    self._chunk(line + b"\n")
                elif self._peer_gone():
                    return
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client went away mid-write: nothing to tell it
        finally:
            stream.close()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _peer_gone(self) -> bool:
        """A closed connection reads as EOF; peeking leaves any real bytes in place."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True
