"""Instance registrations shared by two control-plane replicas on one real
etcd: registered through A, the endpoint is pushed over xDS by B; with A gone,
heartbeats go on through B; a registration whose heartbeats stopped is swept
once, by the leader, and leaves both replicas."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_controlplane_xds import REVIEWS, endpoint_ports, registration
from tests.etcd_server import EtcdServer
from xds_harness import EDS, SIDECAR, AdsStream, node, service

from pilotfish.client import Client
from pilotfish.controlplane.main import ControlPlane
from pilotfish.model import Instance
from pilotfish.registry.instances import instance_from_json
from pilotfish.registry.shared import SharedInstanceRegistry
from pilotfish.store.backends import StoreOptions
from pilotfish.store.etcd import EtcdBackend
from pilotfish.store.etcd_client import message


def replica(where: Path, etcd: EtcdServer) -> ControlPlane:
    plane = ControlPlane.open(
        where / "data",
        "127.0.0.1:0",
        where / "config.yaml",
        "127.0.0.1:0",
        store_options=StoreOptions(url=etcd.url),
    )
    plane.server.start()
    return plane


@pytest.fixture
def planes(tmp_path: Path, etcd: EtcdServer) -> Iterator[tuple[ControlPlane, ControlPlane]]:
    a = replica(tmp_path / "a", etcd)
    # Replicas share the token, as docs/multi-host.md has them copy it.
    (tmp_path / "b" / "data").mkdir(parents=True, mode=0o700)
    shutil.copy2(a.data_dir / "token", tmp_path / "b" / "data" / "token")
    b = replica(tmp_path / "b", etcd)
    yield a, b
    for plane in (b, a):
        plane.close()


def names(plane: ControlPlane) -> list[str]:
    return [i.name for i in plane.instances.instances()]


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_registered_at_one_replica_is_pushed_by_the_other(
    planes: tuple[ControlPlane, ControlPlane],
) -> None:
    a, b = planes
    assert isinstance(a.instances, SharedInstanceRegistry)
    token = (a.data_dir / "token").read_text().strip()
    Client(a.server.url, token, timeout=10).apply(service("reviews"))
    Client(a.server.url, token, timeout=10).register_instance(registration("reviews-1", 19081, 5))
    wait_until(lambda: names(b) == ["reviews-1"])
    assert b.ads is not None
    stream = AdsStream(f"127.0.0.1:{b.ads.port}", node(SIDECAR, NAMESPACE="default"))
    try:
        stream.send(EDS, [REVIEWS])
        ports = endpoint_ports(stream)
        if not ports:  # B's store watch had not shown it the Service yet: the next push
            ports = endpoint_ports(stream)
        assert ports == [19081]
    finally:
        stream.close()
    listed = Client(b.server.url, token, timeout=10).instances()
    assert [(i["name"], i["ports"]) for i in listed] == [("reviews-1", {"http": 19081})]


def test_heartbeats_go_on_through_the_other_replica_and_the_silent_are_swept_once(
    planes: tuple[ControlPlane, ControlPlane], etcd: EtcdServer
) -> None:
    a, b = planes
    token = (a.data_dir / "token").read_text().strip()
    both = Client(f"{a.server.url},{b.server.url}", token, timeout=5)
    both.register_instance(registration("alive", 19081, ttl=1.0))
    both.register_instance(registration("silent", 19082, ttl=1.0))
    wait_until(lambda: sorted(names(b)) == ["alive", "silent"])
    deletes = EtcdBackend(etcd.client()).watch(_revision(etcd), "/pilotfish-instances")
    try:
        a.close()  # gives up the lead at once, if it had it; its REST port goes away
        started = time.monotonic()
        while time.monotonic() - started < 4.0:  # 4 TTLs of heartbeats, now through B
            both.register_instance(registration("alive", 19081, ttl=1.0))
            time.sleep(0.3)
        assert both.server == b.server.url
        assert names(b) == ["alive"]
        seen = []
        while (event := deletes.next(0.5)) is not None:
            seen.append((event.type, event.object["name"]))
        assert [e for e in seen if e[0] == "DELETED"] == [("DELETED", "silent")]
    finally:
        deletes.close()


def test_only_the_leader_sweeps(etcd: EtcdServer) -> None:
    """On a clock of the test's, past the lease: nothing is swept while the
    replica does not lead; once it leads, the instance is removed."""
    now = [0.0]
    leads = [False]
    backend = EtcdBackend(etcd.client())
    shared = SharedInstanceRegistry(backend, lambda: leads[0], clock=lambda: now[0])
    shared.start()
    try:
        shared.register(registration_instance("quiet"), ttl=1.0)
        now[0] = 5.0
        assert shared.sweep() == []
        time.sleep(0.5)  # a couple of passes of the sweeping thread too
        assert [i.name for i in shared.instances()] == ["quiet"]
        leads[0] = True
        wait_until(lambda: shared.instances() == ())
        assert (
            not etcd.client()
            .call("Range", message("RangeRequest", key=b"/pilotfish-instances/default/quiet"))
            .kvs
        )
    finally:
        shared.stop()
        backend.close()


def registration_instance(name: str) -> Instance:
    return instance_from_json(registration(name, 19090))[0]


def _revision(etcd: EtcdServer) -> int:
    reply = etcd.client().call("Range", message("RangeRequest", key=b"/", limit=1))
    return int(reply.header.revision)


def test_a_heartbeat_is_not_a_change(etcd: EtcdServer) -> None:
    """Renewals reach every replica through etcd, but only a registration
    that differs wakes the listeners (and so the xDS pushes)."""
    backend = EtcdBackend(etcd.client())
    shared = SharedInstanceRegistry(backend, lambda: False)
    changes: list[int] = []
    shared.add_listener(lambda: changes.append(1))
    shared.start()
    try:
        instance = registration_instance("steady")
        shared.register(instance, ttl=5.0)
        for _ in range(5):
            shared.register(instance, ttl=5.0)
        assert len(changes) == 1
        shared.register(instance_from_json({**registration("steady", 19090), "healthy": False})[0])
        assert len(changes) == 2
        assert [i.healthy for i in shared.instances()] == [False]
    finally:
        shared.stop()
        backend.close()
