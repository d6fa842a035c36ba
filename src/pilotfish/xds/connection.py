"""One ADS stream's state of the world, without I/O.

Per type the proxy watches: the names it asked for, what was last sent
(version, nonce, resources), what it last acknowledged, and its last NACK.
A request is classified as Istio's pilot does (`shouldRespond`):

    nonce empty                       -> a new subscription: respond
    nonce not the last one sent       -> stale (an answer to an older push): ignore
    nonce current, error_detail set   -> NACK: record it, keep what it runs
    nonce current, no error           -> ACK: record it
    ... and after an ACK or NACK, a changed list of names -> respond

Sync state per type, as `istioctl proxy-status` shows it:

    nothing sent                      -> NOT SENT
    last response NACKed              -> NACK
    last response acknowledged        -> SYNCED
    otherwise (awaiting an answer)    -> STALE
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import StrEnum

from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DiscoveryRequest,
    DiscoveryResponse,
)

from pilotfish.model import Proxy
from pilotfish.xds import types
from pilotfish.xds.generate import Generated

_nonces = itertools.count(1)


class SyncState(StrEnum):
    SYNCED = "SYNCED"
    NOT_SENT = "NOT SENT"
    STALE = "STALE"
    NACK = "NACK"


@dataclass
class Nack:
    version: str
    nonce: str
    message: str
    at: float  # wall clock, for users


@dataclass
class WatchedType:
    names: frozenset[str]
    sent: Generated | None = None
    sent_nonce: str = ""
    acked_version: str = ""
    acked_nonce: str = ""
    nack: Nack | None = None
    ever_nacked: Nack | None = None

    @property
    def state(self) -> SyncState:
        if self.sent is None:
            return SyncState.NOT_SENT
        if self.nack is not None and self.nack.nonce == self.sent_nonce:
            return SyncState.NACK
        if self.acked_nonce == self.sent_nonce:
            return SyncState.SYNCED
        return SyncState.STALE


@dataclass
class Connection:
    """What one stream has asked for and been sent; `proxy` is set by the
    first request (the only one that must carry the Node)."""

    conn_id: str
    peer: str
    proxy: Proxy | None = None
    watched: dict[str, WatchedType] = field(default_factory=dict)
    connected_at: float = field(default_factory=time.time)

    def __repr__(self) -> str:
        node = self.proxy.node_id if self.proxy else "?"
        return f"<Connection {self.conn_id} {node} {sorted(map(types.short_name, self.watched))}>"

    def on_request(self, request: DiscoveryRequest) -> bool:
        """Record the request; True when it must be answered with resources."""
        names = frozenset(request.resource_names)
        watched = self.watched.get(request.type_url)
        if not request.response_nonce or watched is None:
            # A new subscription, or a client resuming a stream this server
            # never saw (it restarted): either way the client needs everything.
            self.watched[request.type_url] = WatchedType(names)
            return True
        if request.response_nonce != watched.sent_nonce:
            return False
        record_answer(watched, request, request.version_info)
        if names != watched.names:
            watched.names = names
            return True
        return False

    def response(self, type_url: str, generated: Generated) -> bytes:
        """A serialized DiscoveryResponse carrying `generated`, recorded as
        sent: its shared body, then this stream's nonce (protobuf merges
        concatenated messages, so the bytes parse as one response)."""
        assert generated.type_url == type_url
        watched = self.watched[type_url]
        watched.sent = generated
        watched.sent_nonce = next_nonce(generated.version)
        nonce = DiscoveryResponse(nonce=watched.sent_nonce).SerializeToString()
        return generated.body + bytes(nonce)

    def needs_push(self, type_url: str, generated: Generated) -> bool:
        """A push sends only what changed since the last response of the type."""
        watched = self.watched.get(type_url)
        return watched is not None and (
            watched.sent is None or watched.sent.version != generated.version
        )


def next_nonce(version: str) -> str:
    """A nonce unique in the process, with the version it goes with for reading logs."""
    return f"{next(_nonces)}-{version[:8]}"


def record_answer(
    watched: WatchedType, request: DiscoveryRequest | DeltaDiscoveryRequest, version: str
) -> None:
    """The client's answer to the last response sent: an ACK of `version`, or a
    NACK (`error_detail`) that leaves it running what it had."""
    if request.HasField("error_detail"):
        nack = Nack(version, request.response_nonce, request.error_detail.message, time.time())
        watched.nack = watched.ever_nacked = nack
    else:
        watched.acked_version, watched.acked_nonce = version, request.response_nonce
        watched.nack = None
