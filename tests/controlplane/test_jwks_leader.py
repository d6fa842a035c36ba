"""Issue 20: with replicas sharing a store, only the leader fetches remote
JWKS and writes the policies' status; it stores the last good keys, and the
followers serve those without fetching. A follower that takes the lead
starts from them: no fetch again before the refresh interval is up. Two
resolvers over one store, the election as a flag, a fake clock; then two
control planes on one etcd and a real JWKS server, fetched once."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.agent.mesh_harness import wait_for

from pilotfish.controlplane.jwks import JwksResolver
from pilotfish.controlplane.jwks_shared import NAME, NAMESPACE, SharedJwks
from pilotfish.controlplane.main import ControlPlane
from pilotfish.store.backends import StoreOptions
from pilotfish.store.resources import ResourceStore
from pilotfish.store.types import Key

from .test_jwks import JWKS, TIMING, URI, jwks_server, policy

__all__ = ["jwks_server"]  # the fixture


@dataclass
class Replica:
    """One control plane's resolver and what it did."""

    store: ResourceStore
    clock: list[float]
    leads: bool = False
    fetched: list[str] = field(default_factory=list)
    published: list[dict[str, str]] = field(default_factory=list)
    statuses: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.resolver = JwksResolver(
            lambda: [policy({"issuer": "https://issuer", "jwksUri": URI})],
            self.published.append,
            lambda _policy, status: self.statuses.append(status),
            clock=lambda: self.clock[0],
            timing=TIMING,
            fetcher=self.fetch,
            shared=SharedJwks(self.store, lambda: self.leads),
        )

    def fetch(self, uri: str, timeout: float) -> tuple[str | None, str]:
        self.fetched.append(uri)
        return JWKS, ""


def test_only_the_leader_fetches_and_writes_and_followers_serve_its_keys(
    store: ResourceStore,
) -> None:
    clock = [1000.0]
    a, b = Replica(store, clock, leads=True), Replica(store, clock)
    b.resolver.step()  # before the leader has fetched: nothing to serve, no fetch
    assert b.fetched == [] and b.published == []
    a.resolver.step()
    assert a.fetched == [URI] and a.published == [{URI: JWKS}] and a.statuses
    cached = store.get(Key("", "ConfigMap", NAMESPACE, NAME))
    assert len(cached["data"]) == 1
    b.resolver.step()
    assert b.fetched == [] and b.published == [{URI: JWKS}] and b.statuses == []
    clock[0] += 10
    a.resolver.step()
    b.resolver.step()
    assert a.fetched == [URI] and b.published == [{URI: JWKS}]  # nothing new, nothing twice


def test_a_new_leader_starts_from_the_stored_keys_and_refreshes_on_time(
    store: ResourceStore,
) -> None:
    clock = [1000.0]
    a, b = Replica(store, clock, leads=True), Replica(store, clock)
    a.resolver.step()
    b.resolver.step()
    a.leads, b.leads = False, True  # the lead moves
    clock[0] += TIMING.refresh_s / 2
    b.resolver.step()
    a.resolver.step()
    assert b.fetched == [] and a.fetched == [URI]  # not due yet, and a follows now
    clock[0] += TIMING.refresh_s / 2
    b.resolver.step()
    a.resolver.step()
    assert b.fetched == [URI] and a.fetched == [URI]


def test_two_replicas_on_etcd_fetch_once_and_both_serve_the_keys(
    etcd: Any, tmp_path: Path, jwks_server: tuple[str, type[Any]]
) -> None:
    uri, handler = jwks_server
    fetches = []
    handler.do_GET = _counting(handler.do_GET, fetches)
    planes: list[ControlPlane] = []
    try:
        for name in ("a", "b"):
            options = StoreOptions(etcd.url)
            planes.append(ControlPlane.open(tmp_path / name, "127.0.0.1:0", store_options=options))
        planes[0].store.apply(policy({"issuer": "a", "jwksUri": uri}), manager="t")
        for plane in planes:
            assert plane.mesh is not None
            mesh = plane.mesh
            wait_for(lambda m=mesh: m.snapshot().jwks == {uri: JWKS}, 20, "keys never served")
        time.sleep(1.0)  # both resolvers' passes go on (every 0.5 s): no second fetch
        assert len(fetches) == 1
    finally:
        for plane in planes:
            plane.close()


def _counting(get: Callable[[Any], None], calls: list[float]) -> Callable[[Any], None]:
    def counted(self: Any) -> None:
        calls.append(time.monotonic())
        get(self)

    return counted
