"""The HTTP/1.1 shell around Api: sockets, bodies, chunked watch streams, shutdown.

The stdlib's ThreadingHTTPServer: one thread per connection suits an API that
is called a few times a second and whose store is synchronous (the data
plane has its own asyncio stack). Nothing here decides what a request means.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import re
import select
import socket
import ssl
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pilotfish import __version__
from pilotfish.api.errors import ApiError, BadRequest, MethodNotAllowed
from pilotfish.controlplane.api import Api, LineStream, Request, Response, status_response
from pilotfish.controlplane.auth import CertSubject
from pilotfish.controlplane.bodies import MAX_BODY, too_large

log = logging.getLogger(__name__)

STREAM_TICK_S = 0.25  # how often an idle watch checks for shutdown and a departed client
IDLE_TIMEOUT_S = 120.0  # a keep-alive connection with no request for this long is closed
HANDSHAKE_TIMEOUT_S = 10.0  # a TLS client that has not finished its handshake by then is dropped
BODY_TIMEOUT_S = 60.0  # a whole request body, as Kubernetes' default request timeout
BACKLOG = 128  # connections the kernel queues before accept (the stdlib's default is 5)
MAX_CONNECTIONS = 1024  # open at once, watches included; more are refused with 429
MAX_LINE = 1024  # a chunk-size or trailer line
MAX_TRAILERS = 100
# RFC 9112 chunk-size: hex digits only (no sign, prefix or space), as Go's
# parseHexUint, bounded like it: 16 digits.
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")  # ASCII digits: str.isdigit() takes "²"


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (every interface) as (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f'invalid listen address "{listen}": expected HOST:PORT')
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port_text)


class _DeadlineReader(io.RawIOBase):
    """The socket's bytes, each recv given only the time left until `deadline`
    (TimeoutError once it has passed)."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        self.deadline = math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the deadline passed")
        if remaining != math.inf:
            self._connection.settimeout(remaining)
        return self._connection.recv_into(buffer)


class RequestTimeout(ApiError):
    code = 408
    reason = "Timeout"


def _refuse_busy(connection: socket.socket) -> None:
    """apiserver's answer when its in-flight limit is reached, sent without a
    thread: 429, retry after a second. What the client already sent is read
    first, so closing does not reset the connection under the answer."""
    busy = TooManyRequests("Too many requests, please try again later.", {"retryAfterSeconds": 1})
    body = json.dumps(busy.to_status()).encode()
    head = (
        f"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        connection.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while connection.recv(65536):
                pass
        connection.settimeout(1.0)
        connection.sendall(head.encode() + body)
        connection.shutdown(socket.SHUT_WR)


class TooManyRequests(ApiError):
    code = 429
    reason = "TooManyRequests"


def _body_timeout() -> RequestTimeout:
    return RequestTimeout(f"the request body did not arrive within {BODY_TIMEOUT_S:g} seconds")


def _chunk_size(line: bytes) -> int:
    size = line.split(b";", 1)[0].rstrip(b" \t")  # an extension may follow, after optional space
    if not _CHUNK_SIZE.fullmatch(size):
        raise BadRequest(f"malformed chunked request body: invalid chunk size {size[:20]!r}")
    return int(size, 16)


def client_url(host: str, port: int, scheme: str = "http") -> str:
    """The URL a client on this host should use for a server bound to (host, port)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class ApiServer:
    """Binds on construction, so a port in use fails before anything else starts;
    connections wait in the backlog until `serve_forever` or `start`, by which
    time `api` must be set. `stop` ends it all, watch streams included."""

    def __init__(
        self, listen: str, api: Api | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = _HttpServer6 if family == socket.AF_INET6 else _HttpServer
        self._http = server_class((host, port), _Handler)
        self._http.tls = tls
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
        return client_url(self.host, self.port, "https" if self._http.tls else "http")

    def use_tls(self, tls: ssl.SSLContext) -> None:
        """Serve HTTPS from now on (before serving starts): for a certificate
        made once the mesh CA is open, which is after the port is bound."""
        self._http.tls = tls

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


def client_subject(connection: socket.socket) -> CertSubject | None:
    """The subject of the client certificate the handshake verified (the
    context asks for one and checks it against the mesh root), if any."""
    if not isinstance(connection, ssl.SSLSocket):
        return None
    cert = connection.getpeercert()
    if not cert:
        return None
    fields: list[tuple[str, str]] = [
        (str(pair[0]), str(pair[1])) for rdn in cert.get("subject", ()) for pair in rdn
    ]
    names = [v for k, v in fields if k == "commonName"]
    organizations = tuple(v for k, v in fields if k == "organizationName")
    return (names[0], organizations) if len(names) == 1 else None


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = BACKLOG
    api: Api
    tls: ssl.SSLContext | None = None

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._changed = threading.Condition()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Count the connection before its thread starts, so a flood of idle
        connections meets the limit at once, not a thread per connection later."""
        with self._changed:
            busy = len(self._connections) >= MAX_CONNECTIONS
            if not busy:
                self._connections.add(request)
        if busy:
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """With TLS, the handshake happens here, on the connection's own thread
        (not the accepting one), within HANDSHAKE_TIMEOUT_S; the TLS socket then
        takes the plain one's place among the connections a stop wakes."""
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            secure = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as e:
            log.debug("TLS handshake with %s failed: %s", client_address, e)
            return
        with self._changed:
            self._connections.add(secure)
        try:
            super().finish_request(secure, client_address)
        finally:
            self.shutdown_request(secure)

    def shutdown_request(self, request: Any) -> None:
        # Called for every connection, whatever its handler did: the one place to forget it.
        try:
            super().shutdown_request(request)
        finally:
            with self._changed:
                self._connections.discard(request)
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
    _reader: _DeadlineReader

    def setup(self) -> None:
        super().setup()
        # Reads go through a reader with a deadline per phase (the next
        # request's head, then its body): a socket timeout alone restarts with
        # every byte, so a client trickling bytes could hold a thread for ever.
        self.rfile.close()  # the stdlib's, replaced before anything was read through it
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.deadline = time.monotonic() + IDLE_TIMEOUT_S
        super().handle_one_request()

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

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def handle_expect_100(self) -> bool:
        # Refuse before inviting the body (curl sends Expect: 100-continue over 1 KiB).
        try:
            self.server.api.admit(self._head())
        except ApiError as e:
            self._refuse(e)
            return False
        return super().handle_expect_100()

    def _head(self) -> Request:
        method = "GET" if self.command == "HEAD" else self.command
        certificate = client_subject(self.connection)
        return Request.of(
            method, self.path, dict(self.headers), b"", self.client_address[0], certificate
        )

    def _refuse(self, error: ApiError) -> None:
        self.close_connection = True  # the unread body would be taken for the next request
        self._send(status_response(error))

    def _serve(self) -> None:
        head = self._head()
        try:
            # Who is calling is known from the head: a caller who may not do
            # this is refused before a byte of its body is read.
            self.server.api.admit(head)
            body = self._read_body()
        except ApiError as e:
            self._refuse(e)
            return
        finally:
            self._reader.deadline = math.inf
            self.connection.settimeout(self.timeout)  # the reader narrowed it
        response = self.server.api.handle(dataclasses.replace(head, body=body))
        if response.stream is not None:
            self._stream(response.stream, response.content_type)
        else:
            self._send(response)
        if self.server.stopping.is_set():
            self.close_connection = True

    def _read_body(self) -> bytes:
        self._reader.deadline = time.monotonic() + BODY_TIMEOUT_S
        try:
            return self._read_framed()
        except TimeoutError:
            raise _body_timeout() from None

    def _read_framed(self) -> bytes:
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            if encoding.strip().lower() != "chunked":
                raise BadRequest(f'unsupported Transfer-Encoding "{encoding}"')
            return self._read_chunked()
        lengths = set(self.headers.get_all("Content-Length") or ["0"])
        if len(lengths) > 1:
            raise BadRequest(f"conflicting Content-Length headers: {sorted(lengths)}")
        length_text = lengths.pop().strip()
        if not _CONTENT_LENGTH.fullmatch(length_text):
            raise BadRequest(f"invalid Content-Length {json.dumps(length_text)}")
        length = int(length_text)
        if length > MAX_BODY:
            raise too_large()
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            raise BadRequest("the request body ended before its Content-Length")
        return body

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = _chunk_size(self._line())
            size += chunk
            if size > MAX_BODY:
                raise too_large()
            if chunk == 0:
                self._skip_trailers()
                return b"".join(parts)
            data = self.rfile.read(chunk)
            if len(data) < chunk or self._line() != b"":
                raise BadRequest("malformed chunked request body: a chunk is not followed by CRLF")
            parts.append(data)

    def _line(self) -> bytes:
        """One line of chunked framing without its line end; BadRequest if it is
        longer than MAX_LINE or the body ends first."""
        line = self.rfile.readline(MAX_LINE + 1)
        if not line.endswith(b"\n"):
            raise BadRequest("malformed chunked request body: a line is too long or cut short")
        return line.rstrip(b"\r\n") if line.endswith(b"\r\n") else line[:-1]

    def _skip_trailers(self) -> None:
        for _ in range(MAX_TRAILERS):
            if not self._line():
                return
        raise BadRequest(f"malformed chunked request body: more than {MAX_TRAILERS} trailers")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own refusals (a bad request line, too many headers, an
        unknown method) as Status objects too, like every other error."""
        self.close_connection = True
        if code == HTTPStatus.NOT_IMPLEMENTED:  # a method it has no do_ for: Kubernetes' 405
            code = HTTPStatus.METHOD_NOT_ALLOWED
            message = f"{self.command} is not supported"
            status = MethodNotAllowed(message).to_status()
        else:
            phrase = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "Error"
            error = ApiError(message or phrase)
            status = {**error.to_status(), "reason": re.sub(r"[^A-Za-z]", "", phrase), "code": code}
        body = json.dumps(status).encode()
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _stream(self, stream: LineStream, content_type: str) -> None:
        """Chunked lines (JSON, or server-sent events) until the stream ends,
        the client leaves or we stop."""
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Cache-Control", "no-cache")
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
