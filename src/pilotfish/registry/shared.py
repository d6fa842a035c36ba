"""Instance registrations shared by every control plane on one etcd.

A registration (or a heartbeat renewing it) received by any replica is written
to `<prefix>-instances/<namespace>/<name>`, a sibling of the store's prefix so
the resource watch never sees it; every replica follows that prefix with a
watch and keeps its own InstanceTable, so any replica serves endpoints
registered at any other, and a client that fails over to another replica
keeps its lease going there.

Leases are timed on each replica's own monotonic clock, from when it saw the
last write of a registration (no wall clocks compared across hosts). Only the
elected leader sweeps: it deletes a registration whose heartbeats stopped
with a transaction comparing the key's mod_revision with the one it timed,
so a heartbeat written meanwhile through another replica wins, and the
instance is removed once, everywhere, by the watch. Every replica hides a
registration whose lease ran out on its own clock from what it serves, and
wakes its listeners (an xDS push) when one does, so that with no leader (or
a slow one) a dead instance leaves the endpoints all the same; a heartbeat
brings it back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pilotfish.api.errors import ApiError, Expired
from pilotfish.model import Instance
from pilotfish.registry.instances import (
    DEFAULT_TTL_S,
    InstanceKey,
    InstanceRegistry,
    InvalidRegistration,
    Lease,
    instance_from_json,
    registration_json,
)
from pilotfish.store.etcd import EtcdBackend
from pilotfish.store.etcd_client import EQUAL, TARGET_MOD, message, prefix_end
from pilotfish.store.types import Event

log = logging.getLogger("pilotfish.registry")

_CATCH_UP_S = 5.0  # how long a write waits for this replica's watch to show it
_RETRY_S = 0.5  # pause before following etcd again after it went away


class SharedInstanceRegistry(InstanceRegistry):
    """The InstanceRegistry of a replica: writes go to etcd, reads come from
    the watch's table; `leading()` says whether this replica sweeps."""

    def __init__(
        self,
        backend: EtcdBackend,
        leading: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock=clock)
        self._backend = backend
        self._prefix = f"{backend.prefix}-instances"
        self._leading = leading
        self._revisions: dict[InstanceKey, int] = {}  # mod_revision each lease was timed from
        self._lapsed: set[InstanceKey] = set()  # ran out here, hidden, not yet deleted
        self._position = 0  # the last revision this replica's table reflects
        self._seen = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._follower: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"SharedInstanceRegistry({self._prefix!r}, {self._table!r})"

    def _key(self, namespace: str, name: str) -> bytes:
        return f"{self._prefix}/{namespace}/{name}".encode()

    # -- writes, through etcd ------------------------------------------------------------

    def register(self, instance: Instance, ttl: float = DEFAULT_TTL_S) -> Lease:
        value = json.dumps(registration_json(instance, ttl), separators=(",", ":")).encode()
        put = message("PutRequest", key=self._key(instance.namespace, instance.name), value=value)
        revision = self._txn([], message("RequestOp", request_put=put))[0]
        self._catch_up(revision)
        now = self._clock()
        return Lease(instance, ttl, now + ttl)

    def remove(self, namespace: str, name: str) -> bool:
        delete = message("DeleteRangeRequest", key=self._key(namespace, name))
        revision, reply = self._txn([], message("RequestOp", request_delete_range=delete))
        self._catch_up(revision)
        return int(reply.responses[0].response_delete_range.deleted) > 0

    def sweep(self) -> list[Instance]:
        """On every replica: tell the listeners of leases that ran out here
        since the last pass (they are hidden already). On the leader only:
        delete them, unless renewed since (then etcd's mod_revision moved on)."""
        now = self._clock()
        with self._lock:
            due = [
                (lease.instance, self._revisions.get(_key_of(lease.instance), 0))
                for lease in self._table.leases()
                if lease.expires <= now
            ]
            lapsed = {_key_of(instance) for instance, _ in due}
            newly, self._lapsed = lapsed - self._lapsed, lapsed
        if newly:
            self._notify()
        if not self._leading():
            return []
        swept = [instance for instance, revision in due if self._delete_at(instance, revision)]
        for instance in swept:
            log.info("instance %s/%s: lease expired; removed", instance.namespace, instance.name)
        return swept

    def _delete_at(self, instance: Instance, revision: int) -> bool:
        key = self._key(instance.namespace, instance.name)
        unchanged = message(
            "Compare", result=EQUAL, target=TARGET_MOD, key=key, mod_revision=revision
        )
        delete = message("DeleteRangeRequest", key=key)
        written, reply = self._txn([unchanged], message("RequestOp", request_delete_range=delete))
        if reply.succeeded:
            self._catch_up(written)
        return bool(reply.succeeded)

    def _txn(self, compare: list[Any], op: Any) -> tuple[int, Any]:
        reply = self._backend.client.call(
            "Txn", message("TxnRequest", compare=compare, success=[op])
        )
        return int(reply.header.revision), reply

    def _catch_up(self, revision: int) -> None:
        """Wait until the watch has applied `revision`: read your own writes."""
        with self._seen:
            self._seen.wait_for(lambda: self._position >= revision, timeout=_CATCH_UP_S)

    # -- reads, from the watch -----------------------------------------------------------

    def start(self) -> None:
        """Load what etcd holds, then follow it; then sweep (when leading)."""
        self._load()
        self._follower = threading.Thread(target=self._follow_forever, name=repr(self))
        self._follower.daemon = True
        self._follower.start()
        super().start()

    def stop(self) -> None:
        self._stopping.set()
        super().stop()
        if self._follower is not None:
            self._follower.join(timeout=5)

    def _follow_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                self._follow()
            except Expired as e:
                log.warning("instance watch restarts from a full list: %s", e.message)
                self._reload()
            except ApiError as e:
                log.warning("instance watch: %s", e.message)
                self._stopping.wait(_RETRY_S)
                self._reload()

    def _follow(self) -> None:
        watch = self._backend.watch(self._position, self._prefix)
        try:
            while not self._stopping.is_set() and not self._backend.closed:
                event = watch.next(0.5)
                if event is not None:
                    self._apply(event)
        finally:
            watch.close()

    def _reload(self) -> None:
        try:
            self._load()
        except ApiError as e:
            log.warning("instance list: %s", e.message)

    def _load(self) -> None:
        """Replace the table with what etcd holds, keeping the leases timed
        from a revision that has not changed."""
        start = f"{self._prefix}/".encode()
        reply = self._backend.client.call(
            "Range", message("RangeRequest", key=start, range_end=prefix_end(start))
        )
        found = {}
        for kv in reply.kvs:
            registration = _decode(kv.value)
            if registration is not None:
                found[_key_of(registration[0])] = (*registration, int(kv.mod_revision))
        changed = False
        with self._lock:
            for key in set(self._revisions) - set(found):
                changed |= self._table.remove(*key)
                del self._revisions[key]
                self._lapsed.discard(key)
            for key, (instance, ttl, revision) in found.items():
                if self._revisions.get(key) != revision:
                    changed |= self._record(instance, ttl, revision)
            self._moved_to(int(reply.header.revision))
        if changed:
            self._notify()

    def _apply(self, event: Event) -> None:
        registration = _decode(event.object)
        changed = False
        with self._lock:
            if registration is not None:
                instance, ttl = registration
                if event.type == "DELETED":
                    changed = self._table.remove(instance.namespace, instance.name)
                    self._revisions.pop(_key_of(instance), None)
                    self._lapsed.discard(_key_of(instance))
                else:
                    changed = self._record(instance, ttl, event.resource_version)
            self._moved_to(event.resource_version)
        if changed:
            self._notify()

    def _record(self, instance: Instance, ttl: float, revision: int) -> bool:
        """A write seen now: the lease runs from now, on this replica's clock."""
        key = _key_of(instance)
        self._revisions[key] = revision
        self._lapsed.discard(key)
        return self._table.register(instance, ttl, self._clock())

    def _moved_to(self, revision: int) -> None:
        self._position = max(self._position, revision)
        self._seen.notify_all()


def _key_of(instance: Instance) -> InstanceKey:
    return (instance.namespace, instance.name)


def _decode(body: Any) -> tuple[Instance, float] | None:
    """A stored registration (JSON text or parsed); None (logged) for a value
    nobody should have written."""
    try:
        if isinstance(body, bytes):
            body = json.loads(body)
        if not isinstance(body, dict):
            raise InvalidRegistration("not an object")
        return instance_from_json(body)
    except (InvalidRegistration, ValueError) as e:
        log.warning("ignoring a stored instance registration: %s", e)
        return None
