"""The `store` fixture, once per backend: every store test runs against each.

A backend factory takes the options a test needs (`history`: how many events
to keep) and, called again, reopens the same data, as a restart would. One
real etcd is started per session (per worker); without etcd the run fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from store_testkit import BACKENDS, ETCD_ENV, BackendFactory, kinds_registry
from tests.etcd_server import EtcdServer

from pilotfish.store.resources import ResourceStore


class Clock:
    """A settable clock, so timestamps in assertions are exact."""

    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd") / "data").start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv(ETCD_ENV, server.endpoint)
        yield server
    server.stop()


@pytest.fixture(params=sorted(BACKENDS))
def backend_name(request: pytest.FixtureRequest) -> str:
    if request.param == "etcd":
        request.getfixturevalue("etcd")
    return str(request.param)


@pytest.fixture
def make_backend(backend_name: str, tmp_path: Path) -> BackendFactory:
    return BACKENDS[backend_name](tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_store(
    make_backend: BackendFactory, clock: Clock
) -> Iterator[Callable[..., ResourceStore]]:
    opened: list[ResourceStore] = []

    def make(
        validate: Callable[[dict[str, Any]], None] | None = None, **options: Any
    ) -> ResourceStore:
        store = ResourceStore(
            make_backend(**options), validate=validate, kinds=kinds_registry(), now=clock
        )
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., ResourceStore]) -> ResourceStore:
    return make_store()
