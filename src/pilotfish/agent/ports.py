"""Local ports for instances: each app port, sidecar inbound, outbound and
admin port is one the kernel just handed out and nobody here holds, so two
instances never clash (the agent remembers what it gave; the kernel knows
what others hold)."""

from __future__ import annotations

import socket
import threading


class PortAllocator:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._given: set[int] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PortAllocator({self.host!r}, {len(self._given)} given)"

    def allocate(self) -> int:
        with self._lock:
            while True:
                port = _free_port(self.host)
                if port not in self._given:
                    self._given.add(port)
                    return port

    def release(self, *ports: int) -> None:
        with self._lock:
            self._given.difference_update(ports)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
