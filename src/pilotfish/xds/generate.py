"""Resources of one type for one proxy, and their version.

The translate functions are pure and sorted, so the same snapshot and proxy
give byte-identical resources; the version is a hash of those bytes. A push
that would send the same version again is therefore skipped, which is how
only the proxies and types a change affects get a push.

`Generator` shares that work between proxies: resources are translated once
per snapshot, type, names asked for and the proxy's scope (what of the proxy
the translation reads, translate/scope.py), and every other proxy of the
same scope gets the same Generated. Streams are served by many threads at
once, so a key being translated makes the others wait for it (single
flight) instead of translating it again in parallel. The names a key holds
come from clients, so what is kept per snapshot is bounded by the names in
its keys (MEMO_NAMES, least recently used first out): a client churning
through lists of names costs translations, never memory.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message

from pilotfish.model import Proxy, ProxyType, Snapshot
from pilotfish.translate import (
    translate_clusters,
    translate_endpoints,
    translate_listeners,
    translate_routes,
)
from pilotfish.translate.clusters import translate_inbound_clusters, translate_outbound_clusters
from pilotfish.translate.scope import Kind, scope_key
from pilotfish.translate.secrets import translate_secrets
from pilotfish.xds import types

T = TypeVar("T")
KEPT_SNAPSHOTS = 2  # the current one, and the one streams may still be answering from
MEMO_NAMES = 65_536  # names in the keys kept per snapshot (a 1,000-service mesh's sidecars
# asking for every cluster's endpoints, in 64 scopes)
_KINDS = {
    types.LISTENER: Kind.LISTENERS,
    types.ROUTE: Kind.ROUTES,
    types.CLUSTER: Kind.CLUSTERS,
    types.ENDPOINT: Kind.ENDPOINTS,
}


@dataclass(frozen=True)
class Generated:
    version: str
    resources: tuple[AnyProto, ...]
    names: tuple[str, ...]  # each resource's name, same order
    type_url: str = ""
    resource_versions: tuple[str, ...] = ()  # each resource's version, same order

    @functools.cached_property
    def body(self) -> bytes:
        """A DiscoveryResponse carrying these resources, serialized, without
        its nonce: every stream sent this Generated shares these bytes, and
        appends only its own nonce (`Connection.response`)."""
        response = DiscoveryResponse(
            version_info=self.version, resources=self.resources, type_url=self.type_url
        )
        return bytes(response.SerializeToString(deterministic=True))

    @functools.cached_property
    def name_set(self) -> frozenset[str]:
        """The resources' names, for incremental (delta) streams' removals."""
        return frozenset(self.names)


def generate(snapshot: Snapshot, proxy: Proxy, type_url: str, names: frozenset[str]) -> Generated:
    """What `proxy` gets of `type_url` when it asked for `names` (for LDS and
    CDS, none means all)."""
    return assemble(type_url, names, packed(_translate(snapshot, proxy, type_url, names)))


Packed = tuple[tuple[str, AnyProto, str], ...]  # (name, resource, version), sorted by name


def packed(messages: Sequence[Message]) -> Packed:
    """Each message packed, with its version: a hash of its bytes, computed
    once where the packed resources are shared by many proxies."""
    out = []
    for message in messages:
        wrapped = AnyProto()
        wrapped.Pack(message, deterministic=True)
        out.append((_name(message), wrapped, hashlib.sha256(wrapped.value).hexdigest()[:16]))
    return tuple(out)


def assemble(type_url: str, names: frozenset[str], resources: Packed) -> Generated:
    """The response body: resources narrowed to `names` (wildcard types), and
    the version, a hash of the resources' versions. Run per proxy for a
    sidecar's clusters, so written for speed: one hash update, one transpose."""
    if names and type_url in types.WILDCARD_TYPES:
        resources = tuple(r for r in resources if r[0] in names)
    if not resources:
        return Generated(hashlib.sha256().hexdigest()[:16], (), (), type_url, ())
    found, wrapped, versions = zip(*resources, strict=True)
    digest = hashlib.sha256("".join(versions).encode()).hexdigest()[:16]
    return Generated(digest, wrapped, found, type_url, versions)


def _translate(
    snapshot: Snapshot, proxy: Proxy, type_url: str, names: frozenset[str]
) -> Sequence[Message]:
    if type_url == types.LISTENER:
        return translate_listeners(snapshot, proxy, names)
    if type_url == types.CLUSTER:
        return translate_clusters(snapshot, proxy)
    if type_url == types.ROUTE:
        return translate_routes(snapshot, proxy, sorted(names)) if names else []
    if type_url == types.ENDPOINT:
        return translate_endpoints(snapshot, proxy, sorted(names)) if names else []
    if type_url == types.SECRET:
        return translate_secrets(snapshot, proxy, names)
    return []


def _name(message: Message) -> str:
    """Listeners, clusters and routes have `name`; assignments `cluster_name`."""
    for attr in ("name", "cluster_name"):
        if attr in message.DESCRIPTOR.fields_by_name:
            return str(getattr(message, attr))
    return ""


@dataclass
class _Cell(Generic[T]):
    """One translation, computed by the first thread that asked for it."""

    done: threading.Event = field(default_factory=threading.Event)
    value: T | None = None
    error: BaseException | None = None

    def get(self) -> T:
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


class _Memo:
    """One snapshot's cells, least recently used first, weighed by the names
    in their keys; only finished cells are dropped (a waiter holds the rest)."""

    def __init__(self, snapshot: Snapshot, budget: int) -> None:
        self.snapshot = snapshot  # kept so its id is not reused while the memo lives
        self.budget = budget
        self.weight = 0
        self.cells: OrderedDict[Hashable, _Cell[Any]] = OrderedDict()

    def get(self, key: Hashable) -> _Cell[Any] | None:
        cell = self.cells.get(key)
        if cell is not None:
            self.cells.move_to_end(key)
        return cell

    def add(self, key: Hashable) -> _Cell[Any]:
        cell = self.cells[key] = _Cell()
        self.weight += _weight(key)
        if self.weight > self.budget:
            self._evict(self.weight - self.budget)
        return cell

    def _evict(self, excess: int) -> None:
        doomed = []
        for key, cell in self.cells.items():
            if excess <= 0:
                break
            if cell.done.is_set():
                doomed.append(key)
                excess -= _weight(key)
        for key in doomed:
            del self.cells[key]
            self.weight -= _weight(key)


def _weight(key: Hashable) -> int:
    """1, plus the names of a (type, names, scope) key."""
    names = key[1] if isinstance(key, tuple) and isinstance(key[1], frozenset) else ()
    return 1 + len(names)


class Generator:
    """`generate`, memoised per snapshot and proxy scope (thread-safe). A
    sidecar's clusters are its outbound ones, shared with every proxy of the
    same scope, plus its own inbound ones, translated for it alone."""

    def __init__(self, memo_names: int = MEMO_NAMES) -> None:
        self._lock = threading.Lock()
        self._memo_names = memo_names
        self._memos: OrderedDict[int, _Memo] = OrderedDict()  # by id(snapshot)
        self.translations = 0  # cache misses, for tests and benchmarks

    def __repr__(self) -> str:
        return f"Generator({len(self._memos)} snapshots, {self.translations} translations)"

    def cached_names(self) -> int:
        """The weight of what is memoised (names in keys, plus one per key)."""
        with self._lock:
            return sum(memo.weight for memo in self._memos.values())

    def generate(
        self, snapshot: Snapshot, proxy: Proxy, type_url: str, names: frozenset[str]
    ) -> Generated:
        kind = _KINDS.get(type_url)
        if kind is None:
            return generate(snapshot, proxy, type_url, names)
        key = (type_url, names, scope_key(snapshot, proxy, kind))
        return self._shared(
            snapshot, key, lambda: self._translate(snapshot, proxy, type_url, names)
        )

    def _translate(
        self, snapshot: Snapshot, proxy: Proxy, type_url: str, names: frozenset[str]
    ) -> Generated:
        if type_url != types.CLUSTER or proxy.type is not ProxyType.SIDECAR:
            return generate(snapshot, proxy, type_url, names)
        outbound = self._shared(
            snapshot,
            (Kind.OUTBOUND_CLUSTERS, scope_key(snapshot, proxy, Kind.OUTBOUND_CLUSTERS)),
            lambda: packed(translate_outbound_clusters(snapshot, proxy)),
        )
        inbound = packed(translate_inbound_clusters(snapshot, proxy))
        merged = tuple(sorted((*outbound, *inbound), key=operator.itemgetter(0)))
        return assemble(type_url, names, merged)

    def _shared(self, snapshot: Snapshot, key: Hashable, compute: Callable[[], T]) -> T:
        """`compute()` once per snapshot and key; concurrent callers wait for it."""
        cell, owner = self._cell(snapshot, key)
        if owner:
            try:
                cell.value = compute()
            except BaseException as e:
                cell.error = e
                raise
            finally:
                cell.done.set()
        result: T = cell.get()
        return result

    def _cell(self, snapshot: Snapshot, key: Hashable) -> tuple[_Cell[Any], bool]:
        """The cell for `key`, and whether the caller must fill it."""
        with self._lock:
            memo = self._memos.get(id(snapshot))
            if memo is None:
                memo = self._memos[id(snapshot)] = _Memo(snapshot, self._memo_names)
                while len(self._memos) > KEPT_SNAPSHOTS:
                    self._memos.popitem(last=False)
            cell = memo.get(key)
            if cell is not None:
                return cell, False
            self.translations += 1
            return memo.add(key), True
