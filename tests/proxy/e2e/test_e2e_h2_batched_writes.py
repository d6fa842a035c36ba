"""HTTP/2 responses answered in one loop turn leave the proxy in one send:
the write syscalls the proxy makes (its /proc/<pid>/io `syscw`) for ten
streams a client opened in one packet."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
from harness import free_port, listener, route, static_cluster, vhost

STREAMS = 10


def _write_syscalls(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError(f"no syscw in /proc/{pid}/io")


def _ten_local_replies(port: int) -> tuple[h2.connection.H2Connection, socket.socket]:
    """A connection that is up, holding ten GETs for a host no route serves
    (each a local 404, answered in the read that carries it), not yet sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    sock.recv(65535)  # the proxy's SETTINGS: the connection is up
    for i in range(STREAMS):
        conn.send_headers(
            1 + 2 * i,
            [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
             (b":authority", b"nobody.example")],
            end_stream=True,
        )  # fmt: skip
    return conn, sock


def _statuses(sock: socket.socket, conn: h2.connection.H2Connection) -> list[int]:
    statuses: list[int] = []
    ended = 0
    while ended < STREAMS:
        data = sock.recv(65535)
        assert data, "the proxy closed the connection"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                statuses.append(int(dict(event.headers)[b":status"]))
            elif isinstance(event, h2.events.StreamEnded):
                ended += 1
    return statuses


def test_streams_answered_in_one_turn_share_one_write(start_proxy) -> None:
    port = free_port()
    proxy = start_proxy(
        [listener("only", port, [vhost("x", ["only.example"], [route("app")])])],
        [static_cluster("app", [free_port()])],
    )
    assert proxy.process is not None
    conn, sock = _ten_local_replies(port)
    with sock:
        time.sleep(0.2)  # let the settings exchange's own writes pass
        before = _write_syscalls(proxy.process.pid)
        sock.sendall(conn.data_to_send())
        statuses = _statuses(sock, conn)
        time.sleep(0.2)
        writes = _write_syscalls(proxy.process.pid) - before
    assert statuses == [404] * STREAMS
    # One send for all ten (a little slack for the proxy's own logging);
    # one per stream before they were batched.
    assert writes <= 3, f"{writes} write syscalls for {STREAMS} responses"
