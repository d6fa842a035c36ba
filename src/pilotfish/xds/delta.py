"""Incremental ADS (Envoy's `DeltaAggregatedResources`): one stream's
subscriptions and what its client holds, without I/O.

Per type the client subscribes to names (`resource_names_subscribe`), or to
everything (wildcard: `*`, or, for LDS and CDS, a first request naming
nothing), and unsubscribes (`resource_names_unsubscribe`). The server keeps
the version of every resource the client holds (its `initial_resource_versions`
on a new stream, then what it was sent) and answers with only what differs:

    a subscribed resource the client lacks, or holds at another version
                                        -> in `resources`, with its version
    a resource the client holds that no longer exists, or that it
    subscribed to and that does not exist  -> in `removed_resources`

A request carrying the nonce of the last response is its ACK, or its NACK
with `error_detail` (recorded; the client keeps what it had, and the server
does not send again until something changes). Subscription changes are
honoured whatever nonce a request carries. Sync state and the resources a
client was last sent are kept in the same `WatchedType` SotW streams use, so
`proxy-status` and `proxy-config` read both alike.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    Resource,
)
from google.protobuf.any_pb2 import Any as AnyProto

from pilotfish.xds import types
from pilotfish.xds.connection import Connection, WatchedType, next_nonce, record_answer
from pilotfish.xds.generate import Generated

WILDCARD = "*"


@dataclass
class DeltaWatch:
    """One type's subscriptions, and the version of each resource the client holds."""

    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    held: dict[str, str] = field(default_factory=dict)
    unanswered: set[str] = field(default_factory=set)  # subscribed, not yet answered

    def asks_for(self, type_url: str) -> frozenset[str] | None:
        """The names to generate for (empty: all of a wildcard type), or None
        when the client asks for nothing of the type."""
        if self.wildcard and type_url in types.WILDCARD_TYPES:
            return frozenset()
        return frozenset(self.names) if self.names else None


@dataclass
class Delta:
    """What a response must carry: resources (by index into the Generated),
    and names removed."""

    updated: list[int]
    removed: list[str]

    def __bool__(self) -> bool:
        return bool(self.updated or self.removed)


@dataclass
class DeltaConnection(Connection):
    """A delta stream: `watched` as SotW streams keep it (for status), plus
    each type's subscriptions and what the client holds."""

    deltas: dict[str, DeltaWatch] = field(default_factory=dict)

    def __repr__(self) -> str:
        return "<Delta" + super().__repr__()[1:]

    def subscriptions(self) -> dict[str, frozenset[str]]:
        """The names each type holds or asks for now (for the stream's limits)."""
        return {t: frozenset(w.names | set(w.held)) for t, w in self.deltas.items()}

    def names_after(self, request: DeltaDiscoveryRequest) -> list[str]:
        """The names of the request's type once it is taken (for the limits)."""
        watch = self.deltas.get(request.type_url, DeltaWatch())
        names = watch.names | set(watch.held) | set(request.resource_names_subscribe)
        names |= set(request.initial_resource_versions)
        return sorted(names - set(request.resource_names_unsubscribe))

    def on_delta_request(self, request: DeltaDiscoveryRequest) -> bool:
        """Record the request; True when it must be answered (a new type, or
        new subscriptions)."""
        type_url = request.type_url
        watch = self.deltas.get(type_url)
        first = watch is None
        if watch is None:
            watch = self.deltas[type_url] = DeltaWatch(held=dict(request.initial_resource_versions))
            self.watched[type_url] = WatchedType(frozenset())
            # Envoy's legacy wildcard: a first request of LDS or CDS naming nothing.
            watch.wildcard = (
                type_url in types.WILDCARD_TYPES and not request.resource_names_subscribe
            )
        watched = self.watched[type_url]
        if request.response_nonce and request.response_nonce == watched.sent_nonce:
            nack = request.HasField("error_detail")
            sent = watched.sent.version if watched.sent else ""
            record_answer(watched, request, watched.acked_version if nack else sent)
        added = _subscribe(watch, request)
        watched.names = frozenset(watch.names | ({WILDCARD} if watch.wildcard else set()))
        return first or added

    def delta(self, type_url: str, generated: Generated) -> Delta:
        """What the client lacks of `generated`, and what it holds that is gone."""
        watch = self.deltas[type_url]
        sent = self.watched[type_url].sent
        if sent is not None and sent.version == generated.version and not watch.unanswered:
            return Delta([], [])  # the whole set is what it was last sent
        held = watch.held
        pairs = enumerate(zip(generated.names, generated.resource_versions, strict=True))
        updated = [i for i, (name, version) in pairs if held.get(name) != version]
        present = generated.name_set
        gone = {n for n in held if n not in present}
        gone |= {n for n in watch.unanswered if n not in present}
        return Delta(updated, sorted(gone))

    def delta_response(self, type_url: str, generated: Generated, delta: Delta) -> bytes:
        """A serialized DeltaDiscoveryResponse carrying `delta`, recorded as
        sent: the resources' shared bytes, then this stream's fields
        (protobuf merges concatenated messages)."""
        watch = self.deltas[type_url]
        watched = self.watched[type_url]
        watched.sent = generated
        watched.sent_nonce = next_nonce(generated.version)
        names, versions, resources = (
            generated.names,
            generated.resource_versions,
            generated.resources,
        )
        for i in delta.updated:
            watch.held[names[i]] = versions[i]
        for name in delta.removed:
            watch.held.pop(name, None)
        watch.unanswered.clear()
        tail = DeltaDiscoveryResponse(
            type_url=type_url,
            system_version_info=generated.version,
            removed_resources=delta.removed,
            nonce=watched.sent_nonce,
        )
        entries = (
            ENTRIES.get(type_url, names[i], versions[i], resources[i]) for i in delta.updated
        )
        return b"".join(entries) + bytes(tail.SerializeToString())


def _subscribe(watch: DeltaWatch, request: DeltaDiscoveryRequest) -> bool:
    """Apply (un)subscriptions; True if anything new was subscribed to."""
    added = False
    for name in request.resource_names_subscribe:
        if name == WILDCARD:
            added |= not watch.wildcard
            watch.wildcard = True
        elif name not in watch.names:
            watch.names.add(name)
            watch.unanswered.add(name)
            added = True
    for name in request.resource_names_unsubscribe:
        if name == WILDCARD and watch.wildcard:
            # What the client held through the wildcard alone, it drops.
            watch.wildcard = False
            watch.held = {n: v for n, v in watch.held.items() if n in watch.names}
        watch.names.discard(name)
        watch.unanswered.discard(name)
        watch.held.pop(name, None)  # the client drops what it unsubscribed from
    return added


ENTRIES_BYTES = 64 * 1024 * 1024  # serialized resources shared between streams and pushes


class _Entries:
    """Serialized `resources` entries by (type, name, version): the version is
    a hash of the resource's bytes, so the key names the bytes, and an entry
    made for one stream serves every other stream, and later pushes of the
    unchanged resource, until it is among the least recently used. Weighed in
    bytes: one route table can be as large as a thousand clusters."""

    def __init__(self, budget: int = ENTRIES_BYTES) -> None:
        self._budget = budget
        self._held = 0
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()

    def __repr__(self) -> str:
        return f"_Entries({len(self._cache)} entries, {self._held} of {self._budget} bytes)"

    def get(self, type_url: str, name: str, version: str, resource: AnyProto) -> bytes:
        key = (type_url, name, version)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        entry = Resource(name=name, version=version)
        entry.resource.CopyFrom(resource)
        body = bytes(
            DeltaDiscoveryResponse(resources=[entry]).SerializeToString(deterministic=True)
        )
        with self._lock:
            if key not in self._cache:
                self._cache[key] = body
                self._held += len(body)
            while self._held > self._budget and self._cache:
                self._held -= len(self._cache.popitem(last=False)[1])
        return body


ENTRIES = _Entries()
