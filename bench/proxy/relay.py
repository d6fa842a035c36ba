"""A reference for the proxy benchmark: the least a Python proxy can do.

    relay.py PORT UPSTREAM_PORT [--work-us N]

uvloop, and nothing else: each client connection gets its own connection to
the upstream, and bytes go through as they come, both ways, unparsed. What it
costs per request is what CPython, uvloop and the kernel cost a proxy before
it does any work of its own. `--work-us N` adds N µs of busy CPU per request
(half on the request, half on the response): the harness's `relay+N` targets,
which show what each microsecond of a proxy's own Python work costs in
throughput on the machine at hand.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import cast

import uvloop


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.client.work:
            busy(self.client.work)
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class Client(asyncio.Protocol):
    def __init__(self, upstream_port: int, work: float) -> None:
        self.upstream_port, self.work = upstream_port, work
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(
            lambda: Upstream(self), "127.0.0.1", self.upstream_port
        )
        self.upstream = transport
        for data in self.early:
            transport.write(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.work:
            busy(self.work)
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def serve(port: int, upstream_port: int, work: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Client(upstream_port, work), "127.0.0.1", port, backlog=4096
    )
    await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("port", type=int)
    p.add_argument("upstream_port", type=int)
    p.add_argument("--work-us", type=float, default=0.0)
    args = p.parse_args()
    uvloop.run(serve(args.port, args.upstream_port, args.work_us / 2 * 1e-6))


if __name__ == "__main__":
    main()
