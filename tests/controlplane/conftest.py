"""Fixtures: the Api with no sockets, and a real server on an ephemeral port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pilotfish.analysis import warnings_for as analyze
from pilotfish.api.validation import validate_or_raise
from pilotfish.client import Client
from pilotfish.controlplane.api import Api
from pilotfish.controlplane.main import ControlPlane
from pilotfish.store.resources import ResourceStore
from pilotfish.store.sqlite import SqliteBackend

from .cp_testkit import TOKEN, Caller


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResourceStore]:
    s = ResourceStore(SqliteBackend(tmp_path / "store.db"), validate=validate_or_raise)
    yield s
    s.close()


@pytest.fixture
def call(store: ResourceStore) -> Caller:
    return Caller(Api(store, TOKEN, analyze=analyze))


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    running = ControlPlane.open(tmp_path / "data", "127.0.0.1:0", tmp_path / "config.yaml")
    running.server.start()
    yield running
    running.close()


@pytest.fixture
def client(plane: ControlPlane) -> Client:
    token = (plane.data_dir / "token").read_text().strip()
    return Client(plane.server.url, token, timeout=10)
