"""The distributed backend: objects in etcd, as Kubernetes keeps them.

Keys are `<prefix>/<group>/<plural>/<namespace>/<name>` (no group segment for
the core group, no namespace for cluster-scoped kinds), values the object's
JSON. A revision is etcd's: an object's resourceVersion is its key's
mod_revision, a list's is the header revision of the read, and a write is a
transaction comparing the key's mod_revision with the one it was computed
from, so concurrent writers on any host serialize through etcd. etcd fsyncs
its log before it answers, so an acknowledged write survives `kill -9`.

History: every `history` revisions (in steps of a tenth of it), a writer
compacts etcd to keep the last `history` of them; a watch from an older
revision is Expired, exactly as with SQLite. Compaction is etcd-wide, so
stores sharing an etcd should agree on `history`.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from pilotfish.api.errors import Conflict, Expired, NotFound
from pilotfish.api.kinds import KindRegistry, registry
from pilotfish.objects import Obj
from pilotfish.store.etcd_client import (
    CALL_TIMEOUT_S,
    EQUAL,
    EVENT_DELETE,
    TARGET_MOD,
    Compacted,
    EtcdClient,
    FutureRevision,
    Unavailable,
    message,
    prefix_end,
)
from pilotfish.store.resources import ObjectFilter
from pilotfish.store.types import Event, EventType, FenceLost, Key

DEFAULT_PREFIX = "/pilotfish"
_QUEUE = 1000  # events a watch holds unread before etcd is made to wait (and may compact it away)
_RESUME_S = 0.5  # pause before a watch reconnects after etcd went away


# What a fenced backend's writes also require: an etcd Compare, from the leader.
Fence = Callable[[], Any]


def check_prefix(prefix: str) -> None:
    if not prefix.startswith("/") or prefix.endswith("/"):
        raise ValueError(f'--etcd-prefix "{prefix}": must start with "/" and not end with one')


def _encode(obj: Obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _sort_key(obj: Obj) -> Key:
    """The order SQLite scans in: group, kind, namespace, name."""
    meta = obj.get("metadata", {})
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    return Key(group, str(obj.get("kind")), meta.get("namespace", ""), meta.get("name", ""))


class EtcdBackend:
    def __init__(
        self,
        client: EtcdClient,
        *,
        prefix: str = DEFAULT_PREFIX,
        history: int = 10_000,
        kinds: KindRegistry | None = None,
    ) -> None:
        check_prefix(prefix)
        self.client = client
        self.prefix = prefix
        self.history = history
        self._kinds = kinds
        self._plurals: dict[tuple[str, str], str] = {}
        self._compacted = 0  # the last floor this backend compacted to
        self._closed = threading.Event()
        self._fence: Fence | None = None
        self._owner = True  # closing a fenced view leaves the client to its owner

    def __repr__(self) -> str:
        return f"EtcdBackend({self.client!r}, prefix={self.prefix!r}, history={self.history})"

    def fenced(self, fence: Fence) -> EtcdBackend:
        """This backend, with every write also conditioned on `fence()` (a
        Compare, or FenceLost raised at once): a leader's work written so
        cannot land after another replica has taken the lead over."""
        view = EtcdBackend(self.client, prefix=self.prefix, history=self.history, kinds=self._kinds)
        view._closed, view._fence, view._owner = self._closed, fence, False
        return view

    # -- keys --------------------------------------------------------------------------

    def _plural(self, group: str, kind: str) -> str:
        if not self._plurals:
            kinds = self._kinds or registry()
            self._plurals = {(k.group, k.kind): k.plural for k in kinds}
        return self._plurals.get((group, kind)) or f"{kind.lower()}s"

    def _type_prefix(self, group: str, kind: str) -> str:
        return f"{self.prefix}/{group + '/' if group else ''}{self._plural(group, kind)}/"

    def key(self, key: Key) -> bytes:
        where = f"{key.namespace}/{key.name}" if key.namespace else key.name
        return (self._type_prefix(key.group, key.kind) + where).encode()

    def _scan_prefix(self, group: str | None, kind: str | None, namespace: str | None) -> bytes:
        """The narrowest key prefix holding every match (the rest is filtered)."""
        if group is None or kind is None:
            return f"{self.prefix}/{group}/".encode() if group else f"{self.prefix}/".encode()
        base = self._type_prefix(group, kind)
        return (base + f"{namespace}/" if namespace else base).encode()

    def ping(self) -> None:
        """Raise Unavailable (or the error etcd gives) unless etcd answers a read."""
        start = f"{self.prefix}/".encode()
        self.client.call("Range", message("RangeRequest", key=start, limit=1))

    # -- Backend -----------------------------------------------------------------------

    def read(self, key: Key) -> tuple[Obj, int] | None:
        reply = self.client.call("Range", message("RangeRequest", key=self.key(key)))
        if not reply.kvs:
            return None
        kv = reply.kvs[0]
        return json.loads(kv.value), int(kv.mod_revision)

    def scan(
        self, group: str | None, kind: str | None, namespace: str | None
    ) -> tuple[list[tuple[Obj, int]], int]:
        start = self._scan_prefix(group, kind, namespace)
        reply = self.client.call(
            "Range", message("RangeRequest", key=start, range_end=prefix_end(start))
        )
        wanted = ObjectFilter(group, kind, namespace)
        found = [(json.loads(kv.value), int(kv.mod_revision)) for kv in reply.kvs]
        found = [(obj, rev) for obj, rev in found if wanted(obj)]
        found.sort(key=lambda item: _sort_key(item[0]))
        return found, int(reply.header.revision)

    def write(self, key: Key, obj: Obj | None, expected: int | None) -> int:
        name = self.key(key)
        if obj is None:
            op = message("RequestOp", request_delete_range=message("DeleteRangeRequest", key=name))
        else:
            op = message(
                "RequestOp", request_put=message("PutRequest", key=name, value=_encode(obj))
            )
        compare = [] if expected is None else [_mod_revision_is(name, expected)]
        failure = [message("RequestOp", request_range=message("RangeRequest", key=name))]
        fence = self._fence() if self._fence is not None else None
        if fence is not None:
            compare.append(fence)
            failure.append(
                message("RequestOp", request_range=message("RangeRequest", key=fence.key))
            )
        txn = message("TxnRequest", compare=compare, success=[op], failure=failure)
        reply = self.client.call("Txn", txn)
        if not reply.succeeded:
            if fence is not None:
                _check_fence(fence, reply.responses[1].response_range.kvs)
            kvs = reply.responses[0].response_range.kvs
            found = int(kvs[0].mod_revision) if kvs else 0
            raise Conflict(f"{key}: expected revision {expected}, found {found}")
        if obj is None and reply.responses[0].response_delete_range.deleted == 0:
            raise NotFound(f"{key} not found")
        revision = int(reply.header.revision)
        self._compact(revision)
        return revision

    def _compact(self, revision: int) -> None:
        """Keep the last `history` revisions, compacting once per tenth of them."""
        floor = revision - self.history
        if floor <= 0 or floor - self._compacted < max(1, self.history // 10):
            return
        # etcd keeps revisions >= the one given: a watch after `floor` still works.
        # Compacted: another writer compacted as far already.
        with contextlib.suppress(Compacted):
            self.client.call("Compact", message("CompactionRequest", revision=floor + 1))
        self._compacted = floor

    def watch(self, since: int, prefix: str | None = None) -> EtcdWatch:
        """Events after `since` under the store's prefix, or under `prefix`
        (a sibling of it, such as the shared instance registrations')."""
        self._check_kept(since)
        return EtcdWatch(self, since, prefix)

    def close(self) -> None:
        if self._owner:
            self._closed.set()
            self.client.close()

    # -- for watches -------------------------------------------------------------------

    def _check_kept(self, since: int) -> None:
        start = f"{self.prefix}/".encode()
        probe = message(
            "RangeRequest", key=start, range_end=prefix_end(start), revision=since + 1, limit=1
        )
        try:
            self.client.call("Range", probe)
        except FutureRevision:
            return  # nothing written after `since` yet: nothing lost either
        except Compacted:
            raise _expired(since, self._oldest_kept(since)) from None

    def _oldest_kept(self, since: int) -> int:
        """etcd's compaction revision, as a watch from `since` is told it."""
        stream = self.open_stream(since)
        timer = threading.Timer(CALL_TIMEOUT_S, stream.cancel)
        timer.start()
        try:
            for reply in stream:
                if reply.compact_revision:
                    return int(reply.compact_revision)
                if reply.canceled or reply.events:
                    break
        finally:
            timer.cancel()
            stream.cancel()
        return since + 1

    def open_stream(self, since: int, prefix: str | None = None) -> _Cancelling:
        """etcd's watch of every key under the prefix (or `prefix`), after revision `since`."""
        start = f"{prefix or self.prefix}/".encode()
        create = message(
            "WatchCreateRequest",
            key=start,
            range_end=prefix_end(start),
            start_revision=since + 1,
            prev_kv=True,  # a DELETED event carries the object as it was
        )
        stop = threading.Event()

        def requests() -> Iterator[Any]:
            yield message("WatchRequest", create_request=create)
            while not stop.wait(1.0) and not self._closed.is_set():
                pass

        stream, endpoint = self.client.watch(requests())
        return _Cancelling(stream, stop, endpoint)

    def event(self, raw: Any) -> Event:
        kind: EventType
        if raw.type == EVENT_DELETE:
            kind, data = "DELETED", raw.prev_kv.value or b"{}"
        else:
            created = raw.kv.create_revision == raw.kv.mod_revision
            kind, data = ("ADDED" if created else "MODIFIED"), raw.kv.value
        return Event(kind, json.loads(data), int(raw.kv.mod_revision))

    @property
    def closed(self) -> bool:
        return self._closed.is_set()


def _expired(since: int, compact_revision: int) -> Expired:
    # etcd keeps revisions >= compact_revision: what follows compact_revision - 1.
    return Expired(f"too old resource version: {since} ({compact_revision - 1})")


def _check_fence(fence: Any, found: Any) -> None:
    """Raise FenceLost unless the fence's key still has the create_revision compared."""
    created = int(found[0].create_revision) if found else 0
    if created != fence.create_revision:
        raise FenceLost(
            f"{fence.key.decode()}: the lead taken at revision {fence.create_revision} "
            f"is no longer held ({'taken again at ' + str(created) if created else 'released'}); "
            "nothing was written"
        )


def _mod_revision_is(key: bytes, revision: int) -> Any:
    return message("Compare", result=EQUAL, target=TARGET_MOD, key=key, mod_revision=revision)


class _Cancelling:
    """A watch stream's responses; iterating ends quietly once it is cancelled."""

    def __init__(self, stream: Any, stop: threading.Event, endpoint: int) -> None:
        self._stream = stream
        self._stop = stop
        self.endpoint = endpoint  # which of the client's endpoints it reads

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._stream
        except grpc.RpcError:
            if not self._stop.is_set():
                raise
        finally:
            self.cancel()

    def cancel(self) -> None:
        self._stop.set()
        self._stream.cancel()


class EtcdWatch:
    """etcd's watch stream read by a thread into a bounded queue. It starts on
    the first next(), so a watch nobody reads does not hold history; when etcd
    goes away it resumes after the last event it queued: no gap, no duplicate."""

    def __init__(self, backend: EtcdBackend, since: int, prefix: str | None = None) -> None:
        self._backend = backend
        self._prefix = prefix
        self._position = since  # the last revision queued
        self._queue: queue.Queue[Event | Exception | None] = queue.Queue(_QUEUE)
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: _Cancelling | None = None
        self._failure: Exception | None = None

    def __repr__(self) -> str:
        return (
            f"EtcdWatch(after={self._position}, queued={self._queue.qsize()}, "
            f"closed={self._closed.is_set()})"
        )

    def next(self, timeout: float | None = None) -> Event | None:
        if self._failure is not None:
            raise self._failure
        if self._closed.is_set() or self._backend.closed:
            return None
        if self._thread is None:
            self._thread = threading.Thread(target=self._read, name=repr(self), daemon=True)
            self._thread.start()
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            self._failure = item
            raise item
        return item

    def close(self) -> None:
        self._closed.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()  # the reader then ends, waking a blocked next()

    def _read(self) -> None:
        try:
            self._read_until_closed()
        finally:
            with contextlib.suppress(queue.Full):  # full: no next() is blocked
                self._queue.put_nowait(None)  # wakes a next() blocked when the store closed

    def _read_until_closed(self) -> None:
        while not self._closed.is_set() and not self._backend.closed:
            stream = self._stream = self._backend.open_stream(self._position, self._prefix)
            if self._closed.is_set():
                stream.cancel()  # close() came before the stream was set
            try:
                self._follow(stream)
            except grpc.RpcError:
                # etcd went away: resume from the position, on the next endpoint if any.
                self._backend.client.failed(stream.endpoint)
                self._closed.wait(_RESUME_S)
            except (Expired, Unavailable) as e:
                self._put(e)
                return

    def _follow(self, stream: _Cancelling) -> None:
        for reply in stream:
            if reply.compact_revision:
                raise _expired(self._position, int(reply.compact_revision))
            if reply.canceled:
                raise Unavailable(f"etcd cancelled the watch: {reply.cancel_reason}")
            for raw in reply.events:
                event = self._backend.event(raw)
                if not self._put(event):
                    return
                self._position = event.resource_version

    def _put(self, item: Event | Exception) -> bool:
        """Queue `item`, waiting while the reader is behind; False once closed."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.25)
                return True
            except queue.Full:
                continue
        return False
