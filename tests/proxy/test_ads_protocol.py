from envoy.config.core.v3.base_pb2 import Node
from envoy.config.listener.v3.listener_pb2 import Listener
from google.protobuf.any_pb2 import Any as AnyProto
from xds_fixtures import listener_response

from pilotfish.proxy import xds_types
from pilotfish.proxy.ads import AdsProtocol


class Config:
    """Accepts listeners unless one is named "bad"; each wants a route of its name."""

    def __init__(self) -> None:
        self.listeners: list[str] = []

    def apply(self, type_url: str, resources: list[AnyProto]) -> dict[str, frozenset[str]]:
        names = [Listener.FromString(r.value).name for r in resources]
        if "bad" in names:
            raise ValueError("listener bad: unsupported field per_connection_buffer_limit_bytes")
        self.listeners = names
        return {xds_types.ROUTE: frozenset(names)}


def test_first_requests_carry_the_node_once_and_subscribe_wildcard() -> None:
    ads = AdsProtocol(Node(id="sidecar-1"), Config().apply)
    first, second = ads.start()
    assert (first.type_url, second.type_url) == (xds_types.CLUSTER, xds_types.LISTENER)
    assert first.node.id == "sidecar-1" and not second.HasField("node")
    assert list(first.resource_names) == [] and first.version_info == ""


def test_ack_then_route_subscription_then_nack_keeps_the_accepted_version() -> None:
    config = Config()
    ads = AdsProtocol(Node(id="n"), config.apply)
    ads.start()
    ack, routes = ads.on_response(listener_response("v1", "n1", "a", "b"))
    assert (ack.type_url, ack.version_info, ack.response_nonce) == (xds_types.LISTENER, "v1", "n1")
    assert not ack.HasField("error_detail")
    assert routes.type_url == xds_types.ROUTE and list(routes.resource_names) == ["a", "b"]

    (nack,) = ads.on_response(listener_response("v2", "n2", "a", "bad"))
    assert (nack.version_info, nack.response_nonce) == ("v1", "n2")
    assert "per_connection_buffer_limit_bytes" in nack.error_detail.message
    assert config.listeners == ["a", "b"]

    # Same names wanted again: no new route request.
    (ack3,) = ads.on_response(listener_response("v3", "n3", "b", "a"))
    assert ack3.version_info == "v3"


def test_reconnect_resends_node_and_last_versions() -> None:
    ads = AdsProtocol(Node(id="n"), Config().apply)
    ads.start()
    ads.on_response(listener_response("v7", "n1", "a"))
    requests = {r.type_url: r for r in ads.start()}
    assert requests[xds_types.LISTENER].version_info == "v7"
    assert requests[xds_types.LISTENER].response_nonce == ""
    assert list(requests[xds_types.ROUTE].resource_names) == ["a"]
    assert sum(r.HasField("node") for r in requests.values()) == 1
