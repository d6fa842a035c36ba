"""Leader election on a real etcd: one leader at a time, a quick hand-over
when a leader stops, and a leader cut off from etcd stops acting before
anyone else starts."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.etcd_server import EtcdServer

from pilotfish.controlplane.election import Elector
from pilotfish.controlplane.leader import Timing
from pilotfish.store.etcd_client import EtcdClient

FAST = Timing(lease=3.0, renew_deadline=2.0, retry=0.25)  # client-go's, scaled down
KEY = "/pilotfish-election/rollout"


class Log:
    """When each elector started and stopped acting, on one monotonic clock."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, str, str]] = []

    def elector(self, name: str, client: EtcdClient) -> Elector:
        return Elector(
            client,
            KEY,
            timing=FAST,
            on_start=lambda: self.entries.append((time.monotonic(), name, "start")),
            on_stop=lambda: self.entries.append((time.monotonic(), name, "stop")),
        )

    def wait_for(self, name: str, what: str, timeout: float = 10) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, who, did in self.entries:
                if (who, did) == (name, what):
                    return at
            time.sleep(0.02)
        raise AssertionError(f"{name} did not {what}: {self.entries}")


class CuttableProxy:
    """A TCP relay to etcd that can be cut, as a network partition would."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.cut = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self.cut.is_set():
                    return  # dropped, as on a dead link
                sink.sendall(data)
        except OSError:
            pass

    def partition(self) -> None:
        self.cut.set()

    def close(self) -> None:
        self.cut.set()
        self.listener.close()
        for s in self.sockets:
            s.close()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd").start()
    yield server
    server.stop()


def test_one_leader_and_a_quick_hand_over_when_it_stops(etcd: EtcdServer) -> None:
    log = Log()
    a = log.elector("a", etcd.client())
    a.start()
    log.wait_for("a", "start")
    b = log.elector("b", etcd.client())
    b.start()
    try:
        time.sleep(4 * FAST.retry)
        assert a.leading() and not b.leading()
        a.stop()
        stopped = log.wait_for("a", "stop")
        started = log.wait_for("b", "start")
        # The key was revoked: b takes over within a retry period or two, not a lease.
        assert stopped < started < stopped + 3 * FAST.retry
        assert b.leading() and not a.leading()
    finally:
        b.stop()
        a.client.close()
        b.client.close()


def test_a_leader_cut_off_from_etcd_stops_before_another_starts(etcd: EtcdServer) -> None:
    log = Log()
    proxy = CuttableProxy(etcd.endpoint)
    a = log.elector("a", EtcdClient([proxy.endpoint]))
    a.start()
    log.wait_for("a", "start")
    b = log.elector("b", etcd.client())
    b.start()
    both: list[float] = []
    sampling = threading.Event()

    def sample() -> None:  # what the gated work sees, every few milliseconds
        while not sampling.is_set():
            if a.leading() and b.leading():
                both.append(time.monotonic())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        time.sleep(2 * FAST.retry)
        cut_at = time.monotonic()
        proxy.partition()
        stopped = log.wait_for("a", "stop")
        started = log.wait_for("b", "start")
        sampling.set()
        sampler.join()
        assert both == []  # never two acting at once
        assert stopped < started, log.entries
        assert stopped - cut_at <= FAST.renew_deadline + FAST.retry
        # b waited for the lease etcd gave a to run out.
        assert started - cut_at >= FAST.lease - FAST.renew_deadline
        assert not a.leading() and b.leading()
    finally:
        b.stop()
        a.stop()
        proxy.close()
        b.client.close()
        a.client.close()
