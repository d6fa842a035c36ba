"""Incremental pushes by simulation, beside test_push_simulation's SotW ones:
random config changes pushed as the ADS server pushes them to delta streams,
each client applying what it is sent (resources by name, removals) and
(un)subscribing as Envoy does; after every push each client holds exactly
what translating it afresh gives, and only the types that moved for it were
sent."""

from __future__ import annotations

from typing import Any

from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DeltaDiscoveryResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_push_simulation import CHANGES, Mesh, _proxies, _wanted_names

from pilotfish.model.snapshot import Snapshot
from pilotfish.xds import types
from pilotfish.xds.delta import DeltaConnection
from pilotfish.xds.generate import generate
from pilotfish.xds.server import AdsServer, _Push


class Client:
    """What an Envoy holds over one delta stream: resources by name, per type."""

    def __init__(self, conn: DeltaConnection) -> None:
        self.conn = conn
        self.held: dict[str, dict[str, bytes]] = {}
        self.subscribed: dict[str, frozenset[str]] = {}

    def receive(self, responses: list[bytes]) -> set[str]:
        """Apply the responses and ACK each; the types they carried."""
        got = set()
        for body in responses:
            response = DeltaDiscoveryResponse.FromString(body)
            got.add(response.type_url)
            held = self.held.setdefault(response.type_url, {})
            for name in response.removed_resources:
                held.pop(name, None)
            for resource in response.resources:
                assert resource.version == self.conn.deltas[response.type_url].held[resource.name]
                held[resource.name] = resource.resource.SerializeToString()
            ack = DeltaDiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce)
            assert not self.conn.on_delta_request(ack)
        return got

    def subscribe(self, server: AdsServer, snapshot: Snapshot) -> None:
        """Ask for what the proxy needs now (LDS and CDS by wildcard)."""
        assert self.conn.proxy is not None
        for type_url, names in _wanted_names(snapshot, self.conn.proxy).items():
            before = self.subscribed.get(type_url)
            if before is not None and (not names or names == before):
                continue
            request = DeltaDiscoveryRequest(type_url=type_url)
            request.resource_names_subscribe.extend(sorted(names - (before or frozenset())))
            request.resource_names_unsubscribe.extend(sorted((before or frozenset()) - names))
            for name in request.resource_names_unsubscribe:
                self.held.get(type_url, {}).pop(name, None)
            self.subscribed[type_url] = names
            first = type_url not in self.conn.deltas
            if self.conn.on_delta_request(request):
                self.receive(server._send_delta(self.conn, snapshot, type_url, always=first))

    def check_fresh(self, snapshot: Snapshot) -> None:
        assert self.conn.proxy is not None
        for type_url, names in self.subscribed.items():
            fresh = generate(snapshot, self.conn.proxy, type_url, names)
            pairs = zip(fresh.names, fresh.resources, strict=True)
            expected = {n: r.SerializeToString() for n, r in pairs}
            assert self.held.get(type_url, {}) == expected, (self.conn.proxy.node_id, type_url)


def _versions(snapshot: Snapshot, client: Client) -> dict[str, Any]:
    assert client.conn.proxy is not None
    return {
        t: generate(snapshot, client.conn.proxy, t, names).version
        for t, names in client.subscribed.items()
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(CHANGES, min_size=1, max_size=6))
def test_after_each_push_every_delta_client_holds_a_fresh_translation(
    changes: list[tuple[str, str, str, int]],
) -> None:
    mesh = Mesh()
    snapshot = mesh.snapshot()
    server = AdsServer(lambda: snapshot)
    clients = []
    for n, proxy in enumerate(_proxies()):
        client = Client(DeltaConnection(f"d{n}", "127.0.0.1", proxy))
        client.subscribe(server, snapshot)
        client.check_fresh(snapshot)
        clients.append(client)
    for change in changes:
        before = [_versions(snapshot, c) for c in clients]
        kind = mesh.apply(change)
        snapshot = mesh.snapshot()
        kinds = frozenset({kind})
        sidecars = types.affected_types(kinds, sidecar=True)
        push = _Push(snapshot, types.affected_types(kinds), sidecars)
        for client, versions in zip(clients, before, strict=True):
            sent = client.receive(server._push(client.conn, push))
            now = _versions(snapshot, client)
            # Sent exactly the types whose resources moved for this proxy.
            assert sent == {t for t in now if now[t] != versions[t]}, change
            client.subscribe(server, snapshot)
            client.check_fresh(snapshot)
