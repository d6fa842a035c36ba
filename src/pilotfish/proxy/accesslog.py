"""Access log: one JSON object per request, with the fields of Istio's JSON
access log (Envoy's default fields under snake_case names), in the same
types: numbers for codes, sizes and durations, `null` for what is unknown,
"-" for no response flags. Off unless the proxy is told where to write (as in
Istio, whose default is no access log).

Formatting is pure; `AccessLogWriter` is the asyncio shell: lines collect in
memory and go to the file from one worker thread, every second or at 64 KiB
(Envoy's file logger flushes on the same schedule), so a slow disk never
stalls the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from pilotfish.proxy import response_flags
from pilotfish.proxy.grpc import camel_name

log = logging.getLogger("pilotfish.proxy.accesslog")

FLUSH_INTERVAL = 1.0
FLUSH_SIZE = 64 * 1024
MAX_PENDING = 8 * 1024 * 1024


@dataclass(slots=True)
class AccessRecord:
    """What the proxy knows about one finished request; None is unknown.

    `path` is the path as the client sent it (before any rewrite, Envoy's
    `X-ENVOY-ORIGINAL-PATH?:PATH`); `start_time` is wall-clock seconds;
    `upstream_service_time` the milliseconds the upstream took to answer.
    """

    start_time: float
    method: str | None = None
    path: str | None = None
    protocol: str | None = "HTTP/1.1"
    response_code: int = 0
    response_flags: str = ""
    response_code_details: str | None = None
    connection_termination_details: str | None = None
    bytes_received: int = 0
    bytes_sent: int = 0
    duration: int = 0
    upstream_service_time: int | None = None
    x_forwarded_for: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    authority: str | None = None
    upstream_host: str | None = None
    upstream_cluster: str | None = None
    upstream_local_address: str | None = None
    upstream_transport_failure_reason: str | None = None
    downstream_local_address: str | None = None
    downstream_remote_address: str | None = None
    downstream_peer_uri_san: str | None = None
    requested_server_name: str | None = None
    route_name: str | None = None
    grpc_status: int | None = None  # None unless the request was gRPC


def format_start_time(seconds: float) -> str:
    """Envoy's `%START_TIME%`: UTC, milliseconds, `2016-04-15T20:17:00.310Z`."""
    whole = int(seconds)
    millis = int((seconds - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def to_json(record: AccessRecord) -> dict[str, object]:
    """The JSON object of one line, keys sorted as Envoy prints a Struct:
    Istio's default JSON format, and under mutual TLS the caller's SPIFFE ID
    (Envoy's %DOWNSTREAM_PEER_URI_SAN%), and for a gRPC request its status
    (%GRPC_STATUS% and %GRPC_STATUS(NUMBER)%), so other lines keep Istio's shape."""
    line = _istio_fields(record)
    extra: dict[str, object] = {}
    if record.downstream_peer_uri_san is not None:
        extra["downstream_peer_uri_san"] = record.downstream_peer_uri_san
    if record.grpc_status is not None:
        extra["grpc_status"] = camel_name(record.grpc_status)
        extra["grpc_status_number"] = record.grpc_status
    if extra:
        line = dict(sorted({**line, **extra}.items()))
    return line


def _istio_fields(record: AccessRecord) -> dict[str, object]:
    return {
        "authority": record.authority,
        "bytes_received": record.bytes_received,
        "bytes_sent": record.bytes_sent,
        "connection_termination_details": record.connection_termination_details,
        "downstream_local_address": record.downstream_local_address,
        "downstream_remote_address": record.downstream_remote_address,
        "duration": record.duration,
        "method": record.method,
        "path": record.path,
        "protocol": record.protocol,
        "request_id": record.request_id,
        "requested_server_name": record.requested_server_name,
        "response_code": record.response_code,
        "response_code_details": record.response_code_details,
        "response_flags": response_flags.label(record.response_flags),
        "route_name": record.route_name,
        "start_time": format_start_time(record.start_time),
        "upstream_cluster": record.upstream_cluster,
        "upstream_host": record.upstream_host,
        "upstream_local_address": record.upstream_local_address,
        # A header's value in Envoy (x-envoy-upstream-service-time), so a string.
        "upstream_service_time": None
        if record.upstream_service_time is None
        else str(record.upstream_service_time),
        "upstream_transport_failure_reason": record.upstream_transport_failure_reason,
        "user_agent": record.user_agent,
        "x_forwarded_for": record.x_forwarded_for,
    }


def format_line(record: AccessRecord) -> bytes:
    """One access log line: compact JSON and a newline. Non-ASCII and control
    characters from the request are escaped, so a line is always one line."""
    return json.dumps(to_json(record), separators=(",", ":")).encode() + b"\n"


class LineBuffer:
    """Lines waiting to be written; sans-I/O, so the policy is testable."""

    def __init__(self, flush_size: int = FLUSH_SIZE) -> None:
        self.flush_size = flush_size
        self.lines: list[bytes] = []
        self.size = 0

    def __repr__(self) -> str:
        return f"<LineBuffer lines={len(self.lines)} bytes={self.size}>"

    def append(self, line: bytes) -> bool:
        """Keep a line; True when the buffer is full and should be flushed now."""
        self.lines.append(line)
        self.size += len(line)
        return self.size >= self.flush_size

    def take(self) -> bytes:
        chunk = b"".join(self.lines)
        self.lines.clear()
        self.size = 0
        return chunk


class BinaryFile(Protocol):
    def write(self, data: bytes, /) -> object: ...
    def flush(self) -> object: ...


class AccessLogWriter:
    """Writes access log lines to a file the shell opened, off the event loop.

    Lines written while the file lags more than `max_pending` bytes behind are
    dropped and counted (`dropped`) instead of growing memory without bound.
    """

    def __init__(
        self,
        file: BinaryFile,
        flush_interval: float = FLUSH_INTERVAL,
        flush_size: int = FLUSH_SIZE,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.file = file
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.buffer = LineBuffer(flush_size)
        self.pending = 0  # bytes handed to the thread and not yet written
        self.dropped = 0
        self.errors = 0
        # One thread, so chunks reach the file in the order they were logged.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pilotfish-accesslog")
        self._ticker: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        return f"<AccessLogWriter {self.buffer!r} pending={self.pending} dropped={self.dropped}>"

    def start(self) -> None:
        """Begin the periodic flush; call from the event loop."""
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def log(self, record: AccessRecord) -> None:
        self.write_line(format_line(record))

    def write_line(self, line: bytes) -> None:
        if self.pending + self.buffer.size + len(line) > self.max_pending:
            self.dropped += 1
            return
        if self.buffer.append(line):
            self.flush()

    def flush(self) -> None:
        """Hand what is buffered to the writer thread; returns at once."""
        if not self.buffer.size:
            return
        chunk = self.buffer.take()
        self.pending += len(chunk)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._write, chunk)
        self._writes.add(future)
        future.add_done_callback(functools.partial(self._written, len(chunk)))

    async def aclose(self) -> None:
        """Stop the ticker, write everything logged so far, release the thread."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self.flush()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            self.flush()

    def _write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.file.flush()

    def _written(self, size: int, future: asyncio.Future[None]) -> None:
        self._writes.discard(future)
        self.pending -= size
        if not future.cancelled() and future.exception() is not None:
            self.errors += 1
            log.warning("access log write failed: %s", future.exception())
