"""Instance registrations shared by two control-plane replicas on one real
etcd: registered through A, the endpoint is pushed over xDS by B; with A gone,
heartbeats go on through B; a registration whose heartbeats stopped is swept
once, by the leader, and leaves both replicas."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
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


def registered_through_a(planes: tuple[ControlPlane, ControlPlane], ttl: float) -> str:
    """reviews-1 registered through A and seen by B; the admin token."""
    a, b = planes
    token = (a.data_dir / "token").read_text().strip()
    Client(a.server.url, token, timeout=10).apply(service("reviews"))
    Client(a.server.url, token, timeout=10).register_instance(registration("reviews-1", 19081, ttl))
    wait_until(lambda: names(b) == ["reviews-1"])
    return token


def eds_ports(stream: AdsStream) -> list[int]:
    """The reviews endpoints' ports of the first EDS answer that has the Service."""
    stream.send(EDS, [REVIEWS])
    ports = endpoint_ports(stream)
    if not ports:  # B's store watch had not shown it the Service yet: the next push
        ports = endpoint_ports(stream)
    return ports


def test_registered_at_one_replica_is_pushed_by_the_other(
    planes: tuple[ControlPlane, ControlPlane],
) -> None:
    a, b = planes
    assert isinstance(a.instances, SharedInstanceRegistry)
    token = registered_through_a(planes, 5)
    assert b.ads is not None
    stream = AdsStream(f"127.0.0.1:{b.ads.port}", node(SIDECAR, NAMESPACE="default"))
    try:
        assert eds_ports(stream) == [19081]
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


@contextlib.contextmanager
def followed(
    etcd: EtcdServer,
    leading: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[tuple[SharedInstanceRegistry, list[int]]]:
    """A replica's registry on `etcd`, started, with the changes it announced."""
    backend = EtcdBackend(etcd.client())
    shared = SharedInstanceRegistry(backend, leading, clock=clock)
    changes: list[int] = []
    shared.add_listener(lambda: changes.append(1))
    shared.start()
    try:
        yield shared, changes
    finally:
        shared.stop()
        backend.close()


def _stored(etcd: EtcdServer, name: str) -> bool:
    key = f"/pilotfish-instances/default/{name}".encode()
    return bool(etcd.client().call("Range", message("RangeRequest", key=key)).kvs)


def test_only_the_leader_sweeps(etcd: EtcdServer) -> None:
    """On a clock of the test's, past the lease: while the replica does not
    lead, the instance is hidden (and its listeners told once) but not
    deleted; once it leads, the instance is removed from etcd."""
    now = [0.0]
    leads = [False]
    with followed(etcd, lambda: leads[0], lambda: now[0]) as (shared, changes):
        shared.register(registration_instance("quiet"), ttl=1.0)
        assert [i.name for i in shared.instances()] == ["quiet"] and len(changes) == 1
        now[0] = 5.0
        assert shared.instances() == () and shared.leases() == []
        assert shared.sweep() == []
        time.sleep(0.5)  # a couple of passes of the sweeping thread too
        assert len(changes) == 2  # one push for the lapse, not one per pass
        assert _stored(etcd, "quiet")
        leads[0] = True
        wait_until(lambda: not _stored(etcd, "quiet"))
        wait_until(lambda: shared.leases() == [] and shared._table.leases() == [])


def registration_instance(name: str) -> Instance:
    return instance_from_json(registration(name, 19090))[0]


def _revision(etcd: EtcdServer) -> int:
    reply = etcd.client().call("Range", message("RangeRequest", key=b"/", limit=1))
    return int(reply.header.revision)


def test_a_heartbeat_is_not_a_change(etcd: EtcdServer) -> None:
    """Renewals reach every replica through etcd, but only a registration
    that differs wakes the listeners (and so the xDS pushes)."""
    with followed(etcd) as (shared, changes):
        instance = registration_instance("steady")
        shared.register(instance, ttl=5.0)
        for _ in range(5):
            shared.register(instance, ttl=5.0)
        assert len(changes) == 1
        shared.register(instance_from_json({**registration("steady", 19090), "healthy": False})[0])
        assert len(changes) == 2
        assert [i.healthy for i in shared.instances()] == [False]


def test_a_lapsed_registration_comes_back_with_a_heartbeat(etcd: EtcdServer) -> None:
    """No replica leads: the lapse is only hidden, so a heartbeat (through
    any replica) serves the instance again, and tells the listeners."""
    now = [0.0]
    with followed(etcd, clock=lambda: now[0]) as (shared, changes):
        instance = registration_instance("late")
        shared.register(instance, ttl=1.0)
        now[0] = 2.0
        shared.sweep()
        assert shared.instances() == () and len(changes) == 2
        shared.register(instance, ttl=1.0)
        assert [i.name for i in shared.instances()] == ["late"] and len(changes) == 3
        now[0] = 4.0  # lapsed again before any pass noticed: the renewal still pushes
        shared.register(instance, ttl=1.0)
        assert len(changes) == 4


def test_with_no_leader_every_replica_stops_serving_a_lapsed_instance(
    planes: tuple[ControlPlane, ControlPlane], etcd: EtcdServer
) -> None:
    """Neither replica leads (as between a leader's death and the next one's
    election): B's EDS drops the silent instance once its lease runs out on
    B's clock, and B's REST list no longer shows it, while etcd still holds
    it for a leader to delete."""
    b = planes[1]
    for plane in planes:
        assert isinstance(plane.instances, SharedInstanceRegistry)
        plane.instances._leading = lambda: False  # no replica leads
    token = registered_through_a(planes, 1)
    assert b.ads is not None
    stream = AdsStream(f"127.0.0.1:{b.ads.port}", node(SIDECAR, NAMESPACE="default"))
    try:
        assert eds_ports(stream) == [19081]
        assert endpoint_ports(stream, timeout=5.0) == []  # pushed when the lease ran out
    finally:
        stream.close()
    assert Client(b.server.url, token, timeout=10).instances() == []
    assert _stored(etcd, "reviews-1")
