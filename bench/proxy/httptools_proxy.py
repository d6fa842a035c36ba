"""A reference for the proxy benchmark: the issue's "bare uvloop + httptools proxy".

    httptools_proxy.py PORT UPSTREAM_PORT

What a proxy in Python costs when it reads HTTP/1.1 and nothing more: every
request and response is parsed by httptools (llhttp, in C) into its method,
target, status, headers and body, and written again from those parts, over
keep-alive connections (one upstream connection per client). No routing, no
pools, no metrics, no header rules beyond dropping `connection`; bodies are
framed by Content-Length only, as the benchmark's shapes are. Its throughput
is the ceiling of any proxy that parses in Python's reach, before it does
any work of its own.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import httptools
import uvloop

_REFRAMED = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length"})


class Side(asyncio.Protocol):
    """One connection: its messages parsed by httptools and made again as bytes."""

    parser: httptools.HttpRequestParser | httptools.HttpResponseParser

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in _REFRAMED:
            self.parts += (b"\r\n", name, b": ", value)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def take(self) -> bytes:
        body = b"".join(self.body)
        self.parts += (b"\r\ncontent-length: %d\r\n\r\n" % len(body), body)
        data = b"".join(self.parts)
        self.parts, self.body = [], []
        return data


class Upstream(Side):
    parser: httptools.HttpResponseParser

    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client
        self.parser = httptools.HttpResponseParser(self)

    def on_message_complete(self) -> None:
        self.parts.insert(0, b"HTTP/1.1 %d OK" % self.parser.get_status_code())
        self.client.transport.write(self.take())

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class Client(Side):
    parser: httptools.HttpRequestParser

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.upstream: Upstream | None = None
        self.early: list[bytes] = []
        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(
            lambda: Upstream(self), "127.0.0.1", self.upstream_port
        )
        self.upstream = upstream
        for data in self.early:
            upstream.transport.write(data)
        self.early.clear()

    def on_url(self, url: bytes) -> None:
        self.parts += (self.parser.get_method(), b" ", url, b" HTTP/1.1")

    def on_message_complete(self) -> None:
        data = self.take()
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.transport.close()


async def serve(port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Client(upstream_port), "127.0.0.1", port, backlog=4096
    )
    await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("port", type=int)
    p.add_argument("upstream_port", type=int)
    args = p.parse_args()
    uvloop.run(serve(args.port, args.upstream_port))


if __name__ == "__main__":
    main()
