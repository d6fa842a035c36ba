"""Upstream HTTP/1.1 connections and the keep-alive pool per host.

A connection carries one exchange at a time; its parser callbacks go
straight to that exchange. Connections are reused while both sides keep
them alive, because a new one costs far more than a request (~140 µs here).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import httptools

from pilotfish.proxy.protocol.http1 import Headers
from pilotfish.proxy.upstream import Host

MAX_IDLE_PER_HOST = 128


class ResponseSink(Protocol):
    """What an upstream connection reports to the exchange using it."""

    def on_response_head(self, status: int, headers: Headers, keep_alive: bool) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...
    def on_upstream_lost(self, error: str) -> None: ...
    def pause_reading_downstream(self) -> None: ...
    def resume_reading_downstream(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, host: Host) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: Headers = []
        self.reusable = True

    def __repr__(self) -> str:
        return f"<UpstreamConnection {self.host} busy={self.sink is not None}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail("protocol error")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._fail("connection termination")

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.pause_reading_downstream()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.resume_reading_downstream()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        self.reusable = self.reusable and keep_alive
        if self.sink is not None:
            self.sink.on_response_head(self.parser.get_status_code(), self.headers, keep_alive)

    def on_body(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.on_response_body(data)

    def on_message_complete(self) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.on_response_end()

    def send(self, sink: ResponseSink, data: bytes) -> None:
        self.sink = sink
        assert self.transport is not None
        self.transport.write(data)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _fail(self, reason: str) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.on_upstream_lost(reason)

    @property
    def alive(self) -> bool:
        return self.reusable and self.transport is not None and not self.transport.is_closing()


class Pool:
    """Idle keep-alive connections per upstream host."""

    def __init__(self) -> None:
        self.idle: dict[Host, list[UpstreamConnection]] = {}

    def __repr__(self) -> str:
        return f"<Pool idle={sum(map(len, self.idle.values()))}>"

    async def acquire(self, host: Host, connect_timeout: float) -> UpstreamConnection:
        """An idle connection to `host`, or a new one; raises OSError or
        TimeoutError when it cannot connect."""
        idle = self.idle.get(host)
        while idle:
            conn = idle.pop()
            if conn.alive:
                return conn
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(connect_timeout):
            _, conn = await loop.create_connection(
                lambda: UpstreamConnection(host), host.address, host.port
            )
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        idle = self.idle.setdefault(conn.host, [])
        if conn.alive and conn.sink is None and len(idle) < MAX_IDLE_PER_HOST:
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()
