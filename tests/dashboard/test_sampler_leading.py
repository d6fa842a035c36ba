"""On etcd, where several control planes share the store, only the elected
leader samples the sidecars for the dashboard, as only it runs the rollout."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.etcd_server import EtcdServer

from pilotfish.controlplane.main import ControlPlane
from pilotfish.store.backends import StoreOptions

pytestmark = pytest.mark.slow


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd").start()
    yield server
    server.stop()


def test_only_the_leader_samples(etcd: EtcdServer, tmp_path: Path) -> None:
    planes = []
    passes = {"a": 0, "b": 0}
    try:
        for name in ("a", "b"):
            plane = ControlPlane.open(
                tmp_path / name,
                "127.0.0.1:0",
                tmp_path / f"{name}.yaml",
                store_options=StoreOptions(etcd.url),
            )
            planes.append(plane)
            assert plane.sampler is not None and plane.elector is not None
            plane.sampler.instances = lambda name=name: (
                passes.__setitem__(name, passes[name] + 1) or []
            )
            time.sleep(2.5)  # a leads before b starts
        a, b = planes
        deadline = time.monotonic() + 15
        while passes["a"] < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert a.elector.leading() and not b.elector.leading()
        assert passes["a"] >= 2 and passes["b"] == 0
    finally:
        for plane in planes:
            plane.close()
