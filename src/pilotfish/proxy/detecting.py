"""The shell of protocol detection: the protocol a sniffed listener's
connections get first (sniff.py says which listeners).

It holds the first bytes, asks protocol/detect.py what they speak, and hands
the connection, those bytes included, to the HTTP side (`Downstream`: HTTP/1.x,
and h2c, which the HTTP side serves) or to the TCP side (`TcpRelay`) of the
listener; from then on it is out of the data path. Nothing is consumed: the
chosen side reads the bytes as if it had been there from the start, as
Envoy's listener filters peek without reading. A client that says nothing
for the listener's timeout goes to TCP (a server-first protocol: the server
speaks once connected), or is closed when the listener says not to continue.
"""

from __future__ import annotations

import asyncio
from typing import cast

from pilotfish.proxy.listeners import CompiledListener
from pilotfish.proxy.protocol.detect import H2C, HTTP10, HTTP11, NEED_MORE, NOT_HTTP, detect
from pilotfish.proxy.server import Downstream, Runtime
from pilotfish.proxy.sniff import Sniffing
from pilotfish.proxy.stats import listener_stat_name
from pilotfish.proxy.tcp.relay import TcpRelay

# Envoy's http_inspector counters (global, as Envoy roots them at `http_inspector.`)
FOUND = {
    HTTP10: "http_inspector.http10_found",
    HTTP11: "http_inspector.http11_found",
    H2C: "http_inspector.http2_found",
    NOT_HTTP: "http_inspector.http_not_found",
}


class Detecting(asyncio.Protocol):
    """A sniffed listener's connection until its first bytes choose a side."""

    def __init__(self, runtime: Runtime, listener: CompiledListener) -> None:
        assert listener.sniffing is not None
        self.runtime, self.listener = runtime, listener
        self.sniffing: Sniffing = listener.sniffing
        self.transport: asyncio.Transport | None = None
        self.held = b""
        self.timer: asyncio.TimerHandle | None = None
        self.chosen: asyncio.Protocol | None = None

    def __repr__(self) -> str:
        return f"<Detecting on {self.listener.name} held={len(self.held)}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        if self.sniffing.timeout > 0:
            self.timer = self.runtime.loop.call_later(self.sniffing.timeout, self.timed_out)

    def data_received(self, data: bytes) -> None:
        self.held += data
        verdict = detect(self.held)
        if verdict is not NEED_MORE:
            self.runtime.stats.network[FOUND[verdict]] += 1
            self._choose(verdict)

    def eof_received(self) -> bool:
        """The client has said all it will before its bytes could tell: TCP
        (a half-close is the TCP side's to carry)."""
        if self.held and self.chosen is None:
            self.runtime.stats.network[FOUND[NOT_HTTP]] += 1
        chosen = self._choose(NOT_HTTP)
        return bool(chosen.eof_received()) if chosen is not None else False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def timed_out(self) -> None:
        """The listener filters' timeout: on to the TCP chains, or closed."""
        if self.chosen is not None or self.transport is None:
            return
        if self.sniffing.continue_on_timeout:
            self._choose(NOT_HTTP)
            return
        where = listener_stat_name(self.listener.host, self.listener.port)
        self.runtime.stats.listener(where).no_filter_chain_match += 1
        self.transport.close()

    def _choose(self, verdict: str) -> asyncio.Protocol | None:
        if self.chosen is not None or self.transport is None:
            return self.chosen
        if self.timer is not None:
            self.timer.cancel()
        chosen: asyncio.Protocol
        if verdict:
            chosen = Downstream(self.runtime, self.listener)
        else:
            chosen = TcpRelay(self.runtime, self.sniffing.tcp)
        self.chosen = chosen
        self.transport.set_protocol(chosen)
        chosen.connection_made(self.transport)
        if self.held:
            held, self.held = self.held, b""
            chosen.data_received(held)
        return chosen
