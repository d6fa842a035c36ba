"""What one client may hold of the ADS server, without I/O.

A stream costs the server memory for as long as it is open, and a request
costs it a translation and a cache entry per distinct list of names, so
both are bounded:

- connections: how many (each holds a file descriptor the REST API in the
  same process needs too), how long one may take to begin HTTP/2, and how
  long one may stay open with no stream;
- streams in total, and per peer: a peer is (source address, node id), since
  on loopback every local process shares one address and only the node id
  tells a real proxy from a noisy neighbour;
- streams that have not yet sent a DiscoveryRequest with a node ("who are
  you?") have a deadline, and their own cap, so they cannot hold the room
  identified proxies need;
- per stream, the resource types it watches, per type how many names it
  subscribes to and how long each may be, and the bytes of all its names.

A request over a limit ends its stream with a gRPC status naming the limit
(`StreamRefused`); the client sees the status, the server keeps nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

MAX_CONNECTIONS = 2048  # and at most half the process's open-file limit (the server's call)
HANDSHAKE_WITHIN_S = 10.0
IDLE_CONNECTION_S = 60.0  # a connection with no stream; a proxy's always has its ADS stream
MAX_STREAMS = 1024
MAX_UNIDENTIFIED_STREAMS = 512  # half the total: a restart's burst of reconnects fits
MAX_STREAMS_PER_PEER = 16
IDENTIFY_WITHIN_S = 10.0
MAX_TYPES_PER_STREAM = 8  # the four served, and room for Secret and the like
MAX_NAMES_PER_TYPE = 4096
MAX_NAME_BYTES = 512  # a DNS name is at most 253; `outbound|PORT|SUBSET|HOST` fits
MAX_NAME_BYTES_PER_STREAM = 512 * 1024  # a sidecar of a 4,096-service mesh needs ~300 KiB
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # gRPC's own default; a full list of names fits


@dataclass(frozen=True)
class Limits:
    connections: int = MAX_CONNECTIONS
    handshake_within: float = HANDSHAKE_WITHIN_S
    idle_connection: float = IDLE_CONNECTION_S
    streams: int = MAX_STREAMS
    unidentified: int = MAX_UNIDENTIFIED_STREAMS
    per_peer: int = MAX_STREAMS_PER_PEER
    identify_within: float = IDENTIFY_WITHIN_S
    types_per_stream: int = MAX_TYPES_PER_STREAM
    names_per_type: int = MAX_NAMES_PER_TYPE
    name_bytes: int = MAX_NAME_BYTES
    stream_name_bytes: int = MAX_NAME_BYTES_PER_STREAM

    @classmethod
    def for_streams(cls, streams: int) -> Limits:
        """The defaults, with room for `streams` streams (`--xds-max-streams`):
        connections and streams awaiting their node keep the defaults' ratios
        to it, never going below the defaults."""
        if streams < 1:
            raise ValueError(f"the maximum of xDS streams must be at least 1, not {streams}")
        return cls(
            connections=max(MAX_CONNECTIONS, 2 * streams),
            streams=streams,
            unidentified=max(1, streams // 2),
        )


DEFAULT_LIMITS = Limits()


class StreamRefused(Exception):
    """A stream must end; `code` is the gRPC status code's name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


Peer = tuple[str, str]  # (source address, node id); "" until the stream says who it is


class StreamCounts:
    """Open streams per peer, and the checks made when one opens or identifies.
    Not thread-safe: the server calls it from its event loop only."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._by_peer: Counter[Peer] = Counter()
        self._total = 0
        self._unidentified = 0

    def __repr__(self) -> str:
        return f"StreamCounts({self._total} open, {self._unidentified} unidentified)"

    def open(self, address: str) -> None:
        """Count a new stream from `address`, or refuse it."""
        if self._total >= self.limits.streams:
            raise StreamRefused(
                "RESOURCE_EXHAUSTED",
                f"the xDS server holds its maximum of {self.limits.streams} streams; retry later",
            )
        if self._unidentified >= self.limits.unidentified:
            raise StreamRefused(
                "RESOURCE_EXHAUSTED",
                f"{self.limits.unidentified} xDS streams have not yet sent a node; retry later",
            )
        self._total += 1
        self._unidentified += 1
        self._by_peer[address, ""] += 1

    def identify(self, address: str, node_id: str) -> None:
        """Move a stream from `address` to the peer (address, node id), or refuse it
        (the stream stays counted as unidentified until `close`)."""
        held = self._by_peer[address, node_id]
        if held >= self.limits.per_peer:
            raise StreamRefused(
                "RESOURCE_EXHAUSTED",
                f"node {node_id!r} from {address} already holds {held} xDS streams, "
                f"the limit per peer",
            )
        self._move((address, ""), (address, node_id))
        self._unidentified -= 1

    def close(self, peer: Peer) -> None:
        self._total -= 1
        if not peer[1]:
            self._unidentified -= 1
        self._move(peer, None)

    def held(self, peer: Peer) -> int:
        return self._by_peer[peer]

    def _move(self, old: Peer, new: Peer | None) -> None:
        self._by_peer[old] -= 1
        if self._by_peer[old] <= 0:
            del self._by_peer[old]
        if new is not None:
            self._by_peer[new] += 1


def check_request(
    request: DiscoveryRequest, subscribed: Mapping[str, Collection[str]], limits: Limits
) -> None:
    """Refuse a request that would make the stream hold more than a stream may;
    `subscribed` is what the stream watches now, names by type."""
    if len(request.type_url.encode()) > limits.name_bytes:
        raise StreamRefused(
            "INVALID_ARGUMENT",
            f"type_url is {len(request.type_url.encode())} bytes long; the limit is "
            f"{limits.name_bytes}",
        )
    if request.type_url not in subscribed and len(subscribed) >= limits.types_per_stream:
        raise StreamRefused(
            "RESOURCE_EXHAUSTED",
            f"a stream may watch at most {limits.types_per_stream} resource types",
        )
    _check_names(request, subscribed, limits)


def _check_names(
    request: DiscoveryRequest, subscribed: Mapping[str, Collection[str]], limits: Limits
) -> None:
    names = request.resource_names
    if len(names) > limits.names_per_type:
        raise StreamRefused(
            "RESOURCE_EXHAUSTED",
            f"{len(names)} resource_names for {request.type_url}; the limit per type "
            f"is {limits.names_per_type}",
        )
    sizes = [len(name.encode()) for name in names]
    if max(sizes, default=0) > limits.name_bytes:
        raise StreamRefused(
            "INVALID_ARGUMENT",
            f"a resource name of {max(sizes)} bytes for {request.type_url}; the limit is "
            f"{limits.name_bytes} bytes",
        )
    others = sum(
        len(name.encode())
        for type_url, held in subscribed.items()
        if type_url != request.type_url
        for name in held
    )
    if others + sum(sizes) > limits.stream_name_bytes:
        raise StreamRefused(
            "RESOURCE_EXHAUSTED",
            f"the resource names of this stream would total {others + sum(sizes)} bytes; "
            f"the limit per stream is {limits.stream_name_bytes}",
        )
