"""The tunnel of a CONNECT request (connect.py): a TcpRelay answered
`HTTP/1.1 200 OK` once its upstream is connected, or an HTTP error if it
cannot be. A module of its own, imported with the first tunnel, so that an
HTTP-only sidecar does not load the TCP relay."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pilotfish.proxy.exchange import FAILURE_BODIES
from pilotfish.proxy.protocol.http1 import RequestHead, error_response
from pilotfish.proxy.tcp.listener import TcpListener
from pilotfish.proxy.tcp.relay import TcpRelay
from pilotfish.proxy.upstream.cluster import Cluster
from pilotfish.proxy.upstream.host import Host

if TYPE_CHECKING:
    from pilotfish.proxy.server import Downstream, Runtime
    from pilotfish.proxy.tcp.relay import _Side, _Upstream

ESTABLISHED = b"HTTP/1.1 200 OK\r\n\r\n"


class ConnectRelay(TcpRelay):
    """A TcpRelay whose downstream asked by CONNECT: it is answered 200 once
    the upstream is connected, or an HTTP error if it cannot be."""

    def __init__(
        self,
        runtime: Runtime,
        listener: TcpListener,
        down: Downstream,
        head: RequestHead,
        early: list[bytes],
    ) -> None:
        super().__init__(runtime, listener)
        self.down, self.target = down, head.target
        self.answered = False  # the 200 went out
        self.early.extend(early)
        self.report.moved(sum(len(data) for data in early), 0)

    def __repr__(self) -> str:
        return f"<ConnectRelay {self.target.decode(errors='replace')} {super().__repr__()}>"

    async def _connect(self, cluster: Cluster) -> None:
        if not cluster.spec.original_dst:
            await super()._connect(cluster)
            return
        found = target_address(self.target)
        if found is None:
            self.report.flags = "UH"
        elif not await self._attempt(cluster, Host(*found)):
            self.report.flags = "UF"
        if self.upstream is None:
            self.close_all()

    def _start(self, upstream: _Upstream, host: Host) -> bool:
        self._answer()
        return super()._start(upstream, host)

    def moved(self, side: _Side, data: bytes) -> None:
        if side is not self:  # a server that speaks first may be heard before _start
            self._answer()
        super().moved(side, data)

    def _answer(self) -> None:
        if not self.answered:
            self.answered = True
            self.write(ESTABLISHED)

    def close_all(self) -> None:
        if self.done:
            return
        if not self.answered and self.report.flags:
            # never connected: the client is told why, as Envoy's router would
            status, body = FAILURE_BODIES.get(self.report.flags, (503, b""))
            flags = [(b"x-pilotfish-flags", self.report.flags.encode())]
            self.write(error_response(status, body, flags))
        super().close_all()
        self.down.connection_lost(None)  # the HTTP connection's counters end with it


def target_address(target: bytes) -> tuple[str, int] | None:
    """A CONNECT target's (host, port): `host:port` or `[v6]:port`, the port required."""
    host, colon, port = target.rpartition(b":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith(b"[") and host.endswith(b"]"):
        host = host[1:-1]
    try:
        return host.decode("ascii"), int(port)
    except UnicodeDecodeError:
        return None
