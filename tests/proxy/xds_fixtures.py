"""Discovery responses for the ADS client tests."""

from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse
from google.protobuf.any_pb2 import Any as AnyProto

from pilotfish.proxy import xds_types


def listener_response(version: str, nonce: str, *names: str) -> DiscoveryResponse:
    resources = []
    for name in names:
        a = AnyProto()
        a.Pack(Listener(name=name))
        resources.append(a)
    return DiscoveryResponse(
        type_url=xds_types.LISTENER, version_info=version, nonce=nonce, resources=resources
    )
