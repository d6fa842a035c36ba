"""Ports for the processes tests start: one way to choose them."""

from __future__ import annotations

import itertools
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

LOWEST = 10000


def _candidates() -> Iterator[int]:
    """This process's share of the ports below the kernel's ephemeral range,
    from a random start, round and round: each xdist worker has its own
    share, so two workers never pick the same port while one of them is
    still starting the process that will bind it (random picks over one
    shared range did, a few times a run)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    size = (low - LOWEST) // max(count, 1)
    first = LOWEST + (index % max(count, 1)) * size
    offset = random.randrange(size)
    return (first + (offset + i) % size for i in itertools.count())


_ports = _candidates()
_given: set[int] = set()


def free_port() -> int:
    """A free 127.0.0.1 port that stays free until a process binds it, even
    seconds later: below the kernel's ephemeral range, so no outgoing
    connection can be given it meanwhile (port 0's choice can be, and a
    sidecar's outbound listener once lost its port so), in this worker's
    own share of that range, and never handed out twice by this process."""
    for port in _ports:
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise AssertionError("unreachable: the candidates never end")
