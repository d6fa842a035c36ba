"""What only the etcd backend has: several endpoints, etcd going away and
coming back under a watch, and the answer while it is away."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from store_testkit import configmap, kinds_registry
from tests.agent.mesh_harness import free_port
from tests.etcd_server import EtcdServer

from pilotfish.store import Event, Key
from pilotfish.store.etcd import EtcdBackend
from pilotfish.store.etcd_client import EtcdClient, Unavailable
from pilotfish.store.resources import ResourceStore


def etcd_store(client: EtcdClient, prefix: str = "/etcd-only") -> ResourceStore:
    return ResourceStore(
        EtcdBackend(client, prefix=prefix, kinds=kinds_registry()), kinds=kinds_registry()
    )


def next_events(store_watch, count: int, timeout: float = 10) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        event = store_watch.next(timeout=0.2)
        if event is not None:
            events.append(event)
    return events


def test_a_down_endpoint_is_passed_over(etcd: EtcdServer, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    store = etcd_store(EtcdClient([dead, etcd.endpoint]), prefix="/failover")
    try:
        written = store.apply(configmap("a"), manager="m")
        assert store.get(Key("", "ConfigMap", "default", "a")) == written
        watch = store.watch("", "ConfigMap", since=written["metadata"]["resourceVersion"])
        store.apply(configmap("b"), manager="m")
        [event] = next_events(watch, 1)
        assert event.object["metadata"]["name"] == "b"
        watch.close()
    finally:
        store.close()


def test_all_endpoints_down_is_503_service_unavailable(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    store = etcd_store(EtcdClient([f"127.0.0.1:{p}" for p in ports]))
    try:
        with pytest.raises(
            Unavailable, match=r"^etcd is unavailable \(127\.0\.0\.1:\d+, 127\.0\.0\.1:\d+\)"
        ) as raised:
            store.apply(configmap("a"), manager="m")
        assert (raised.value.code, raised.value.reason) == (503, "ServiceUnavailable")
    finally:
        store.close()


def test_a_watch_resumes_across_an_etcd_restart_with_no_gap_and_no_duplicate(
    tmp_path: Path,
) -> None:
    server = EtcdServer(tmp_path / "etcd").start()
    store = etcd_store(server.client())
    try:
        start = store.apply(configmap("cm", data={"i": "0"}), manager="m")["metadata"][
            "resourceVersion"
        ]
        watch = store.watch("", "ConfigMap", since=start)
        for i in range(1, 4):
            store.apply(configmap("cm", data={"i": str(i)}), manager="m")
        seen = next_events(watch, 3)
        server.kill(signal.SIGKILL)
        with pytest.raises(Unavailable):
            store.get(Key("", "ConfigMap", "default", "cm"))
        server.start()
        for i in range(4, 10):  # some of these land before the watch is back
            store.apply(configmap("cm", data={"i": str(i)}), manager="m")
        seen += next_events(watch, 6)
        assert [e.object["data"]["i"] for e in seen] == [str(i) for i in range(1, 10)]
        revisions = [e.resource_version for e in seen]
        assert revisions == sorted(set(revisions))
        assert watch.next(timeout=0.3) is None
        watch.close()
    finally:
        store.close()
        server.stop()


def test_a_list_larger_than_grpcs_default_4_mib_message(etcd: EtcdServer) -> None:
    """etcd answers a list in one message; grpcio refuses messages over 4 MiB
    unless told otherwise, as etcd's own client tells it."""
    store = etcd_store(etcd.client(), prefix="/large")
    try:
        value = "x" * 200_000
        for i in range(25):  # 5 MB in all; each write is under etcd's 1.5 MiB request limit
            store.apply(configmap(f"big-{i}", data={"v": value}), manager="m")
        items, _ = store.list("", "ConfigMap")
        assert len(items) == 25 and all(item["data"]["v"] == value for item in items)
    finally:
        store.close()
