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

from pilotfish.proxy.accept import LISTENER_FILTERS_TIMEOUT_S
from pilotfish.proxy.filters.base import Connection
from pilotfish.proxy.stats import listener_stat_name
from pilotfish.proxy.tcp.listener import TcpListener
from pilotfish.proxy.tcp.report import ConnectionReport
from pilotfish.proxy.tcp.sni import MAX_CLIENT_HELLO, NEED_MORE, client_hello_sni
from pilotfish.proxy.telemetry import UNKNOWN_SERVICE
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
        # keep our write side open for the other direction, where the
        # transport can (TLS closes on the peer's close_notify regardless)
        return self.transport is not None and self.transport.can_write_eof()

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

    def __init__(self, runtime: Runtime, listener: TcpListener) -> None:
        super().__init__(self)
        self.runtime, self.listener = runtime, listener
        self.proxy, self.rbac = listener.tcp, listener.rbac  # by SNI: once it is read
        self.sniffing = listener.by_sni
        telemetry = runtime.telemetry
        self.report = ConnectionReport(
            telemetry.inbound if listener.inbound else telemetry.outbound
        )
        self.upstream: _Upstream | None = None
        self.cluster: Cluster | None = None
        self.host: Host | None = None
        self.last_moved = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.done = False
        self.early: list[bytes] = []  # bytes read before the upstream connected
        self.sni_cluster = ""  # the cluster an sni_cluster filter named

    def __repr__(self) -> str:
        r = self.report
        return f"<TcpRelay {self.proxy.stat_prefix} -> {self.host} in={r.received} out={r.sent}>"

    def other(self, side: _Side) -> _Side:
        if side is self:
            return self.upstream if self.upstream is not None else self
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self._downstream_facts(transport)
        if not self.sniffing:
            transport.pause_reading()
            self._begin()
        else:  # a client that never says hello is dropped, as by Envoy's listener filters
            self.timer = self.runtime.loop.call_later(LISTENER_FILTERS_TIMEOUT_S, self._silent)

    def _silent(self) -> None:
        if self.sniffing:
            self.close_all()

    def _sniffed(self) -> None:
        """The chain the ClientHello's server name chooses, once it is read
        (bytes held in `early`, forwarded untouched), or the connection closed."""
        data = b"".join(self.early)
        sni = client_hello_sni(data)
        if sni is NEED_MORE and len(data) < MAX_CLIENT_HELLO:
            return
        self.sniffing = False
        self.pause()
        if self.timer is not None:
            self.timer.cancel()
        self.report.requested_server_name = sni or None
        chain = self.listener.chain_for(sni or "")
        if chain is None:  # as Envoy: no filter chain matches, closed
            self.runtime.stats.listener(
                listener_stat_name(self.listener.host, self.listener.port)
            ).no_filter_chain_match += 1
            self.close_all()
            return
        self.proxy, self.rbac = chain.tcp, chain.rbac
        if chain.sni_cluster and sni:  # AUTO_PASSTHROUGH: the SNI is the cluster's name
            self.sni_cluster = sni
        self._begin()

    def _begin(self) -> None:
        if self.rbac and not self._authorized():
            self.close_all()
            return
        name = self.sni_cluster or self.proxy.choose(random.random())
        snapshot = self.runtime.config.snapshot
        cluster = snapshot.clusters.get(name)
        self.report.cluster = name
        self.report.service = snapshot.services.get(name, UNKNOWN_SERVICE)
        if cluster is None:
            log.debug("tcp %s: no cluster %s", self.proxy.stat_prefix, name)
            self.report.flags = "NC"
            self.close_all()
            return
        if not cluster.breakers.try_acquire_connection():  # counts upstream_cx_overflow
            self.report.flags = "UO"
            self.close_all()
            return
        self.cluster = cluster
        self.task = asyncio.ensure_future(self._connect(cluster))

    def _downstream_facts(self, transport: asyncio.Transport) -> None:
        report = self.report
        report.downstream_local = _address(transport.get_extra_info("sockname"))
        report.downstream_remote = _address(transport.get_extra_info("peername"))
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return
        sans = peer_uri_sans(ssl_object)
        report.downstream_san = sans[0] if sans else None
        if self.listener.inbound:  # the peer is the client: the metrics' source
            report.mtls, report.peer_principal = True, report.downstream_san

    def _authorized(self) -> bool:
        """Every network RBAC filter lets the connection through; a denial is
        logged as Envoy's connection termination details."""
        report = self.report
        remote, local = report.downstream_remote or "", report.downstream_local
        sni = report.requested_server_name or ""
        connection = Connection.of(remote.rpartition(":")[0], local, sni, report.downstream_san)
        for rbac in self.rbac:
            denied = rbac.check(connection, self.runtime.stats.network)
            if denied is not None:
                report.termination = denied
                return False
        return True

    async def _connect(self, cluster: Cluster) -> None:
        for _ in range(self.proxy.max_connect_attempts):
            if self.done:
                return
            host = cluster.pick()
            if host is None:
                self.report.flags = "UH"
                break
            if await self._attempt(cluster, host):
                return
            self.report.flags = "UF"
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
        if tls is not None and not self._verified(upstream, tls.settings.sans, host):
            stats.ssl__fail_verify_san += 1
            upstream.close()
            cluster.report(host, LocalOrigin.CONNECT_FAILED)
            return False
        stats.upstream_cx_total += 1
        cluster.report(host, LocalOrigin.CONNECT_SUCCESS)
        return self._start(upstream, host)

    def _verified(self, upstream: _Upstream, sans: tuple[str, ...], host: Host) -> bool:
        assert upstream.transport is not None
        obj = upstream.transport.get_extra_info("ssl_object")
        if not isinstance(obj, ssl.SSLObject):
            return False
        found = peer_uri_sans(obj)
        if not self.listener.inbound:  # outbound, the peer is the server
            self.report.mtls = True
            self.report.peer_principal = found[0] if found else None
        return check_sans(found, sans) is None

    def _start(self, upstream: _Upstream, host: Host) -> bool:
        if self.done:  # the downstream left while we connected
            upstream.close()
            return True
        self.upstream, self.host = upstream, host
        self.report.upstream_host = str(host)
        self.report.opened()
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
            self.report.moved(0, len(data))
            self.write(data)
            return
        self.report.moved(len(data), 0)
        if self.upstream is None:  # early bytes (uvloop reads before connection_made returns)
            self.early.append(data)
            if self.sniffing:
                self._sniffed()
            else:
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
        record = self.report.closed()
        for path in self.proxy.access_log_paths:
            self.runtime.access_log(path).log(record)


def _address(name: object) -> str | None:
    """`host:port` of a socket name; None when the transport has none."""
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return None
