"""Local ports for instances: each app port, sidecar inbound, outbound and
admin port is one that nobody holds when it is given out and that the agent
gives to no one else until it is released, so two instances never clash.

The ports come from outside the kernel's ephemeral range
(net.ipv4.ip_local_port_range). A port the kernel hands out for bind(0) is
one it also uses as the local end of outgoing connections: under load, the
proxies' own upstream connections take such a port between the allocation
and the sidecar's bind, which then fails with "address already in use" and
leaves the instance unready (seen as a rolling update that stalls).
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL = (32768, 60999)  # Linux's default
LOWEST = 20000  # below: ports that services commonly listen on (8080, 15010, ...)


class PortAllocator:
    def __init__(self, host: str = "127.0.0.1", ports: range | None = None) -> None:
        self.host = host
        self.range = ports if ports is not None else non_ephemeral_range()
        self._given: set[int] = set()
        self._lock = threading.Lock()
        self._next = random.randrange(len(self.range))  # two agents start apart

    def __repr__(self) -> str:
        return f"PortAllocator({self.host!r}, {self.range}, {len(self._given)} given)"

    def allocate(self) -> int:
        with self._lock:
            for _ in range(len(self.range)):
                port = self.range[self._next % len(self.range)]
                self._next += 1
                if port not in self._given and _bindable(self.host, port):
                    self._given.add(port)
                    return port
        raise OSError(f"no free port left in {self.range.start}-{self.range.stop - 1}")

    def reserve(self, *ports: int) -> None:
        """Ports in use by instances this agent adopted."""
        with self._lock:
            self._given.update(ports)

    def release(self, *ports: int) -> None:
        with self._lock:
            self._given.difference_update(ports)


def non_ephemeral_range(text: str | None = None) -> range:
    """The widest stretch of ports at or above LOWEST that the kernel never
    picks as an ephemeral port."""
    low, high = DEFAULT_EPHEMERAL
    try:
        first, last = (text if text is not None else EPHEMERAL_RANGE.read_text()).split()[:2]
        low, high = int(first), int(last)
    except (OSError, ValueError):
        pass
    below = range(LOWEST, max(LOWEST, low))
    above = range(max(LOWEST, high + 1), 65536)
    return below if len(below) >= len(above) else above


def _bindable(host: str, port: int) -> bool:
    """Nothing holds the port: no listener, no connection's end, no TIME_WAIT."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
