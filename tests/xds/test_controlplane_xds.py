"""The control plane with its registry and ADS server, in one process:
registration over REST reaches a proxy, silence removes it within seconds,
store changes are pushed, NACKs show in proxy status, and config dumps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from xds_harness import EDS, LDS, RDS, SIDECAR, AdsStream, node, service

from pilotfish.api.errors import BadRequest, Invalid, NotFound
from pilotfish.client import Client
from pilotfish.controlplane.main import ControlPlane

REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    running = ControlPlane.open(
        tmp_path / "data", "127.0.0.1:0", tmp_path / "config.yaml", xds_listen="127.0.0.1:0"
    )
    running.server.start()
    yield running
    running.close()


@pytest.fixture
def client(plane: ControlPlane) -> Client:
    token = (plane.data_dir / "token").read_text().strip()
    client = Client(plane.server.url, token, timeout=10)
    client.apply(service("reviews"))
    time.sleep(0.3)  # past the ADS debounce: streams start from a settled snapshot
    return client


@pytest.fixture
def stream(plane: ControlPlane) -> Iterator[AdsStream]:
    assert plane.ads is not None
    s = AdsStream(f"127.0.0.1:{plane.ads.port}", node(SIDECAR, NAMESPACE="default"))
    yield s
    s.close()


def registration(name: str, port: int, ttl: float = 1.0) -> dict[str, object]:
    return {
        "name": name,
        "address": "127.0.0.1",
        "ports": {"http": port},
        "labels": {"app": "reviews", "version": "v1"},
        "ttlSeconds": ttl,
    }


def endpoint_ports(stream: AdsStream, timeout: float = 5.0) -> list[int]:
    response = stream.receive(timeout)
    assert response.type_url == EDS
    stream.ack(response)
    ports = []
    for resource in response.resources:
        cla = ClusterLoadAssignment()
        resource.Unpack(cla)
        ports += [
            e.endpoint.address.socket_address.port_value
            for g in cla.endpoints
            for e in g.lb_endpoints
        ]
    return sorted(ports)


def test_registered_instance_reaches_the_proxy_and_leaves_when_silent(
    client: Client, stream: AdsStream
) -> None:
    client.register_instance(registration("reviews-v1-0", 19081, ttl=1.0))
    time.sleep(0.3)
    stream.send(EDS, [REVIEWS])
    assert endpoint_ports(stream) == [19081]
    client.register_instance(registration("reviews-v1-1", 19082, ttl=1.0))
    assert endpoint_ports(stream) == [19081, 19082]
    # Keep one alive by heartbeats; the other goes silent.
    started = time.monotonic()
    deadline = started + 5
    gone = False
    while time.monotonic() < deadline and not gone:
        client.register_instance(registration("reviews-v1-0", 19081, ttl=1.0))
        try:
            gone = endpoint_ports(stream, timeout=0.3) == [19081]
        except Exception:
            continue
    assert gone and time.monotonic() - started < 3.0
    assert [i["name"] for i in client.instances()] == ["reviews-v1-0"]


def test_store_change_is_pushed_and_status_shows_sync(
    plane: ControlPlane, client: Client, stream: AdsStream
) -> None:
    stream.send(LDS)
    stream.ack(stream.receive())
    stream.send(RDS, ["http_proxy"])
    first = stream.receive()
    stream.ack(first)
    vs = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {
            "hosts": ["reviews"],
            "http": [{"route": [{"destination": {"host": "reviews"}}], "timeout": "3s"}],
        },
    }
    started = time.monotonic()
    client.apply(vs)
    pushed = stream.receive()
    assert pushed.type_url == RDS and pushed.version_info != first.version_info
    assert time.monotonic() - started < 1.0
    stream.ack(pushed)
    time.sleep(0.2)
    (status,) = client.proxy_status()
    assert status["proxy"] == SIDECAR and status["type"] == "sidecar"
    assert status["types"]["LDS"]["state"] == "SYNCED"
    assert status["types"]["RDS"]["ackedVersion"] == pushed.version_info
    assert "CDS" not in status["types"]


def test_invalid_config_never_reaches_a_proxy(client: Client, stream: AdsStream) -> None:
    stream.send(RDS, ["http_proxy"])
    stream.ack(stream.receive())
    assert stream.nothing_within(0.3)
    bad = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {
            "hosts": ["reviews"],
            "http": [{"route": [{"destination": {"host": "reviews"}, "weight": -5}]}],
        },
    }
    with pytest.raises(Invalid):
        client.apply(bad)
    assert stream.nothing_within(0.5)


def test_nack_is_shown_with_proxy_and_error(client: Client, stream: AdsStream) -> None:
    stream.send(LDS)
    stream.nack(stream.receive(), "unknown filter envoy.filters.http.wasm")
    time.sleep(0.2)
    (status,) = client.proxy_status()
    assert status["types"]["LDS"]["state"] == "NACK"
    assert status["types"]["LDS"]["nack"]["message"] == "unknown filter envoy.filters.http.wasm"


def test_config_dump_by_node_id_or_pod_name(client: Client, stream: AdsStream) -> None:
    stream.send(LDS)
    stream.receive()
    time.sleep(0.1)
    for proxy_id in (SIDECAR, "productpage-v1-0.default"):
        dump = client.proxy_config(proxy_id, "listeners")
        names = [r["name"] for r in dump["resources"]]
        assert "127.0.0.1_15001" in names and dump["state"] == "STALE"
    with pytest.raises(NotFound):
        client.proxy_config("nobody", "listeners")
    with pytest.raises(BadRequest):
        client.proxy_config(SIDECAR, "secrets")


def test_registration_needs_the_token_and_a_valid_body(plane: ControlPlane, client: Client) -> None:
    anonymous = Client(plane.server.url, None, timeout=5)
    with pytest.raises(Exception) as raised:
        anonymous.register_instance(registration("reviews-v1-0", 19081))
    assert (
        getattr(raised.value, "code", None) == 403
    )  # anonymous on loopback: Forbidden, as Kubernetes answers system:anonymous
    with pytest.raises(BadRequest, match="ports: Required value"):
        client.register_instance({"name": "x", "address": "127.0.0.1"})
