"""Accepting connections on a listener that has a TLS filter chain.

Istio's inbound listener serves mutual TLS and, in PERMISSIVE mode,
plaintext on the same port; Envoy's tls_inspector tells them apart by the
first bytes. Here the shell does the same before asyncio owns the socket:
it waits until the connection is readable, peeks at the first byte
(MSG_PEEK: nothing is consumed) and hands the socket to the event loop as a
TLS connection (a handshake record starts with 0x16) or a plaintext one. A
connection whose transport the listener has no chain for is closed at once,
as Envoy closes one that matches no filter chain: in STRICT mode a plaintext
client gets no answer at all.

Plaintext-only listeners never come here (loop.create_server as before), so
the plaintext path costs nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Protocol, cast, runtime_checkable

from pilotfish.proxy.listeners import CompiledListener
from pilotfish.proxy.stats import ListenerStats
from pilotfish.proxy.tcp.listener import TcpListener
from pilotfish.proxy.tls import TlsContexts, client_certificate_missing

log = logging.getLogger("pilotfish.proxy")
TLS_HANDSHAKE_RECORD = 0x16  # the first byte of a TLS ClientHello
LISTENER_FILTERS_TIMEOUT_S = 15.0  # Envoy's default: a silent client is closed after it
HANDSHAKE_TIMEOUT_S = 10.0


@runtime_checkable
class Detection(Protocol):
    """What a sniffed listener's connections get first (detecting.py)."""

    def timed_out(self) -> None: ...


class SniffingServer:
    """A listening socket whose connections are sorted into TLS and plaintext."""

    def __init__(
        self,
        sock: socket.socket,
        listener: Callable[[], CompiledListener | TcpListener],
        factory: Callable[[], asyncio.Protocol],
        contexts: TlsContexts,
        stats: ListenerStats,
    ) -> None:
        self.sock, self.listener, self.factory = sock, listener, factory
        self.contexts, self.stats = contexts, stats
        self.loop = asyncio.get_running_loop()
        self.pending: dict[socket.socket, asyncio.TimerHandle | None] = {}
        self.handshakes: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._accept)

    def __repr__(self) -> str:
        return f"<SniffingServer {self.sock.getsockname()} pending={len(self.pending)}>"

    def close(self) -> None:
        """Stop accepting, as asyncio.Server.close: connections already
        accepted carry on (those still being sniffed are handed over too, so
        a drain loses no request that had reached the kernel)."""
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def _accept(self) -> None:
        for _ in range(64):  # a bounded batch, so one listener cannot starve the loop
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: the next readiness tries again
                log.warning("accept on %s: %s", self.sock.getsockname(), e)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            timeout = _filters_timeout(self.listener())
            timer = self.loop.call_later(timeout, self._timed_out, conn) if timeout else None
            self.pending[conn] = timer
            self.loop.add_reader(conn.fileno(), self._sniff, conn)

    def _timed_out(self, conn: socket.socket) -> None:
        """Silent past the listener filters' timeout: closed, unless a sniffed
        listener continues to its plaintext TCP chain (a server-first protocol)."""
        listener = self.listener()
        sniffing = listener.sniffing if isinstance(listener, CompiledListener) else None
        if sniffing is None or not sniffing.continue_on_timeout or not listener.plaintext:
            self._drop(conn)
            return
        self.pending.pop(conn, None)
        self.loop.remove_reader(conn.fileno())
        self._hand_over(conn, None, silent=True)

    def _drop(self, conn: socket.socket) -> None:
        timer = self.pending.pop(conn, None)
        if timer is not None:
            timer.cancel()
        if conn.fileno() >= 0:
            self.loop.remove_reader(conn.fileno())
            conn.close()

    def _sniff(self, conn: socket.socket) -> None:
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            first = b""
        if not first:
            self._drop(conn)
            return
        timer = self.pending.pop(conn)
        if timer is not None:
            timer.cancel()
        self.loop.remove_reader(conn.fileno())
        listener = self.listener()
        context = None
        if first[0] == TLS_HANDSHAKE_RECORD and listener.has_tls:
            if listener.tls is not None and not listener.sni_tls:
                context = self.contexts.server(listener.tls)
            else:
                context = self.contexts.server_by_sni(listener.server_chains)
            if context is None:
                log.warning("listener %s: TLS refused, no certificate yet", listener.name)
        elif listener.plaintext:
            self._hand_over(conn, None)
            return
        if context is None:
            self.stats.no_filter_chain_match += 1
            conn.close()
            return
        self._hand_over(conn, context)

    def _hand_over(
        self, conn: socket.socket, context: ssl.SSLContext | None, silent: bool = False
    ) -> None:
        task = asyncio.ensure_future(self._connect(conn, context, silent))
        self.handshakes.add(task)
        task.add_done_callback(self.handshakes.discard)

    async def _connect(
        self, conn: socket.socket, context: ssl.SSLContext | None, silent: bool = False
    ) -> None:
        try:
            if context is None:
                _, protocol = await self.loop.connect_accepted_socket(self.factory, conn)
                if silent and isinstance(protocol, Detection):  # its time is already up
                    protocol.timed_out()
            else:
                gated = context.sni_callback is not None  # chains chosen by SNI
                factory = (lambda: _ClientCertificateGate(self)) if gated else self.factory
                await self.loop.connect_accepted_socket(
                    factory, conn, ssl=context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S
                )
        except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
            self.stats.ssl__connection_error += 1
            log.debug("listener %s: handshake failed: %s", self.listener().name, e)
            conn.close()
            return
        if context is not None:
            self.stats.ssl__handshake += 1


class _ClientCertificateGate(asyncio.Protocol):
    """Stands before the HTTP protocol on a connection whose chain was chosen
    by SNI: a chain that requires a client certificate refuses one without
    (see TlsContexts.server_by_sni), before any byte of a request is read;
    otherwise it hands the connection over and is gone from the data path."""

    def __init__(self, server: SniffingServer) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if client_certificate_missing(transport.get_extra_info("ssl_object")):
            self.server.stats.ssl__connection_error += 1
            cast(asyncio.Transport, transport).abort()
            return
        protocol = self.server.factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        pass


def _filters_timeout(listener: CompiledListener | TcpListener) -> float:
    """How long a connection may stay silent before its first byte: Envoy's
    default, or a sniffed listener's own (0: as long as it likes)."""
    sniffing = listener.sniffing if isinstance(listener, CompiledListener) else None
    return LISTENER_FILTERS_TIMEOUT_S if sniffing is None else sniffing.timeout
