"""The client side of state-of-the-world ADS, without I/O.

A response goes in; ACK or NACK requests come out. The proxy's config applies
the resources (raising to reject them: the previous config stays, and the
NACK carries the reason), and says which names of other types it now needs
(routes named by listeners, endpoints of EDS clusters), which become requests.
Per type: the last accepted version, the last nonce seen, the names wanted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf.any_pb2 import Any as AnyProto
from google.rpc.status_pb2 import Status

from pilotfish.proxy import xds_types

# apply(type_url, resources) -> the names now wanted of other types.
Apply = Callable[[str, list[AnyProto]], Mapping[str, frozenset[str]]]
WILDCARD: frozenset[str] = frozenset()
INVALID_ARGUMENT = 3  # google.rpc.Code


@dataclass
class TypeState:
    names: frozenset[str] = WILDCARD
    version: str = ""
    nonce: str = ""
    error: str = ""  # the last NACK's reason, for /config_dump and logs


@dataclass
class AdsProtocol:
    node: Node
    apply: Apply
    types: dict[str, TypeState] = field(default_factory=dict)
    _node_sent: bool = False

    def start(self) -> list[DiscoveryRequest]:
        """Requests for a new stream: LDS and CDS wildcard first time, and every
        subscription with its last accepted version after a reconnect, so the
        server can tell what this proxy already runs. Nonces belong to a stream,
        so they start empty again."""
        self._node_sent = False
        for state in self.types.values():
            state.nonce = ""
        for type_url in (xds_types.CLUSTER, xds_types.LISTENER):
            self.types.setdefault(type_url, TypeState())
        return [self._request(t, s) for t, s in self._ordered()]

    def on_response(self, response: DiscoveryResponse) -> list[DiscoveryRequest]:
        type_url = response.type_url
        state = self.types.setdefault(type_url, TypeState())
        state.nonce = response.nonce
        try:
            wanted = self.apply(type_url, list(response.resources))
        except Exception as e:  # any reason to reject is reported, never raised
            state.error = f"{type(e).__name__}: {e}" if not str(e) else str(e)
            return [self._request(type_url, state, error=state.error)]
        state.version, state.error = response.version_info, ""
        requests = [self._request(type_url, state)]
        return requests + self.subscribe_many(wanted)

    def subscribe_many(self, wanted: Mapping[str, frozenset[str]]) -> list[DiscoveryRequest]:
        return [r for t, names in wanted.items() if (r := self.subscribe(t, names)) is not None]

    def subscribe(self, type_url: str, names: frozenset[str]) -> DiscoveryRequest | None:
        """A request when the set of wanted names changed, else None."""
        state = self.types.get(type_url)
        if state is not None and state.names == names:
            return None
        state = self.types.setdefault(type_url, TypeState())
        state.names = names
        return self._request(type_url, state)

    def _ordered(self) -> list[tuple[str, TypeState]]:
        order = {t: i for i, t in enumerate(xds_types.PUSH_ORDER)}
        return sorted(self.types.items(), key=lambda kv: order.get(kv[0], len(order)))

    def _request(self, type_url: str, state: TypeState, error: str = "") -> DiscoveryRequest:
        request = DiscoveryRequest(
            type_url=type_url,
            version_info=state.version,
            response_nonce=state.nonce,
            resource_names=sorted(state.names),
        )
        if error:
            request.error_detail.CopyFrom(Status(code=INVALID_ARGUMENT, message=error))
        if not self._node_sent:
            request.node.CopyFrom(self.node)
            self._node_sent = True
        return request
