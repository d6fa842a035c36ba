"""Ports for the processes tests start: one way to choose them."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_given: set[int] = set()


def free_port() -> int:
    """A free 127.0.0.1 port that stays free until a process binds it, even
    seconds later under xdist: taken below the kernel's ephemeral range, so
    no outgoing connection can be given it meanwhile (port 0's choice can
    be, and a sidecar's outbound listener once lost its port so), and never
    handed out twice by this process."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(10000, low)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
