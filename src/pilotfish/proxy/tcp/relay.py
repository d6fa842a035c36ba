"""The asyncio shell of tcp_proxy: one downstream connection, one upstream.

The downstream is not read until the upstream is connected (Envoy's tcp_proxy
holds the downstream's bytes back the same way), so a client that speaks
first loses nothing. Bytes are then piped as they arrive, with backpressure
both ways: when one side's transport cannot take more, the other side stops
being read, so a peer that never reads holds at most the transports' buffers,
not an ever-growing queue. A FIN from one side is passed on as a FIN and the
other direction stays open (half-close); the connection ends when both sides
have finished, or either resets, or nothing moves for the idle timeout.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from typing import TYPE_CHECKING, cast

from pilotfish.proxy.tcp.config import TcpProxy
from pilotfish.proxy.tls import check_sans, peer_uri_sans
from pilotfish.proxy.upstream.cluster import Cluster
from pilotfish.proxy.upstream.host import Host, LocalOrigin

if TYPE_CHECKING:
    from pilotfish.proxy.server import Runtime

log = logging.getLogger("pilotfish.proxy")


class _Side(asyncio.Protocol):
    """One end of the pipe; its peer is the other end's transport."""

    def __init__(self, relay: TcpRelay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.eof = False  # this side sent its FIN

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def finish(self) -> None:
        """Pass the other side's FIN on; a TLS transport cannot half-close, so it closes."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()

    def pause_writing(self) -> None:
        self.relay.other(self).pause()

    def resume_writing(self) -> None:
        self.relay.other(self).resume()

    def pause(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.relay.moved(self, data)

    def eof_received(self) -> bool:
        self.eof = True
        self.relay.half_closed(self)
        return True  # keep our write side open for the other direction

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.lost(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Upstream(_Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses


class TcpRelay(_Side):
    """The downstream end: the protocol a TCP listener's connections get."""

    def __init__(self, runtime: Runtime, proxy: TcpProxy) -> None:
        super().__init__(self)
        self.runtime, self.proxy = runtime, proxy
        self.upstream: _Upstream | None = None
        self.cluster: Cluster | None = None
        self.host: Host | None = None
        self.last_moved = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.done = False
        self.early: list[bytes] = []  # bytes read before the upstream connected
        self.sent = self.received = 0  # bytes to and from the downstream

    def __repr__(self) -> str:
        return (
            f"<TcpRelay {self.proxy.stat_prefix} -> {self.host} in={self.received} out={self.sent}>"
        )

    def other(self, side: _Side) -> _Side:
        if side is self:
            return self.upstream if self.upstream is not None else self
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.pause_reading()
        name = self.proxy.choose(random.random())
        cluster = self.runtime.config.snapshot.clusters.get(name)
        if cluster is None:
            log.debug("tcp %s: no cluster %s", self.proxy.stat_prefix, name)
            transport.close()
            return
        if not cluster.breakers.try_acquire_connection():  # counts upstream_cx_overflow
            transport.close()
            return
        self.cluster = cluster
        self.task = asyncio.ensure_future(self._connect(cluster))

    async def _connect(self, cluster: Cluster) -> None:
        for _ in range(self.proxy.max_connect_attempts):
            if self.done:
                return
            host = cluster.pick()
            if host is None:
                break
            if await self._attempt(cluster, host):
                return
        self.close_all()

    async def _attempt(self, cluster: Cluster, host: Host) -> bool:
        """Connect to `host`; True once the pipe runs."""
        stats = self.runtime.stats.cluster(cluster.name)
        tls = cluster.spec.upstream_tls(host.metadata)
        upstream = _Upstream(self)
        try:
            context = self.runtime.tls.client(tls) if tls is not None else None
            async with asyncio.timeout(cluster.spec.connect_timeout):
                await self.runtime.loop.create_connection(
                    lambda: upstream,
                    host.address,
                    host.port,
                    ssl=context,
                    server_hostname=(tls.sni or None) if tls is not None else None,
                )
        except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
            stats.upstream_cx_connect_fail += 1
            stats.upstream_cx_connect_timeout += isinstance(e, TimeoutError)
            cluster.report(host, LocalOrigin.CONNECT_FAILED)
            return False
        if tls is not None and not self._verified(upstream, tls.settings.sans):
            stats.ssl__fail_verify_san += 1
            upstream.close()
            cluster.report(host, LocalOrigin.CONNECT_FAILED)
            return False
        stats.upstream_cx_total += 1
        cluster.report(host, LocalOrigin.CONNECT_SUCCESS)
        return self._start(upstream, host)

    @staticmethod
    def _verified(upstream: _Upstream, sans: tuple[str, ...]) -> bool:
        assert upstream.transport is not None
        obj = upstream.transport.get_extra_info("ssl_object")
        return isinstance(obj, ssl.SSLObject) and check_sans(peer_uri_sans(obj), sans) is None

    def _start(self, upstream: _Upstream, host: Host) -> bool:
        if self.done:  # the downstream left while we connected
            upstream.close()
            return True
        self.upstream, self.host = upstream, host
        for data in self.early:
            upstream.write(data)
        self.early.clear()
        if self.eof:
            upstream.finish()
        host.connection_opened()
        self._arm()
        self.resume()
        return True

    def _arm(self) -> None:
        timeout = self.proxy.idle_timeout
        if timeout > 0:
            delay = self.last_moved + timeout - time.monotonic()
            self.timer = self.runtime.loop.call_later(max(delay, 0.0), self._idle)

    def _idle(self) -> None:
        if time.monotonic() - self.last_moved >= self.proxy.idle_timeout:
            self.close_all()
        else:
            self._arm()

    def moved(self, side: _Side, data: bytes) -> None:
        self.last_moved = time.monotonic()
        if side is not self:
            self.sent += len(data)
            self.write(data)
            return
        self.received += len(data)
        if self.upstream is None:  # early bytes (uvloop reads before connection_made returns)
            self.early.append(data)
            self.pause()
        else:
            self.upstream.write(data)

    def half_closed(self, side: _Side) -> None:
        other = self.other(side)
        if other is side:
            return
        other.finish()
        if side.eof and other.eof:
            self.close_all()

    def lost(self, side: _Side) -> None:
        self.close_all()

    def close_all(self) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.close()
        if self.upstream is not None:
            self.upstream.close()
        if self.host is not None:
            self.host.connection_closed()
        if self.cluster is not None:
            self.cluster.breakers.release_connection()
