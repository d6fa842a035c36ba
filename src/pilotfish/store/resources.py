"""ResourceStore: the API's rules over a Backend that only keeps versioned objects.

Every write is read, compute, compare-and-swap: the backend refuses a write
whose base revision moved, and the store then recomputes from the new state
(or, when the client gave a resourceVersion, reports the conflict). So the
rules hold across threads and, with etcd, across hosts, with no lock here.

Objects are stored without metadata.resourceVersion: it is the revision the
backend returns with them, stamped on the way out.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from pilotfish.api.errors import AlreadyExists, BadRequest, Conflict, Invalid, NotFound
from pilotfish.api.gotypes import rfc3339
from pilotfish.api.kinds import Kind, KindRegistry, registry
from pilotfish.api.names import SYSTEM_FIELDS
from pilotfish.objects import Obj
from pilotfish.store.fields import same
from pilotfish.store.managed import (
    Manager,
    Owners,
    apply_config,
    read_owners,
    record,
    render_owners,
    update_sets,
)
from pilotfish.store.selectors import parse_selector
from pilotfish.store.types import Backend, Event, Key, Watch

# Metadata the server owns; what a client sends there is ignored. Kubernetes
# likewise leaves these (and apiVersion, kind) out of every field manager's set:
# the fields validation leaves to the store, the key's name and namespace, and
# selfLink (never stored).
SYSTEM_METADATA = SYSTEM_FIELDS | {"name", "namespace", "selfLink"}
_DELETION = ("deletionTimestamp", "deletionGracePeriodSeconds")  # kept until the object goes
_RETRIES = 50  # compare-and-swap rounds before a write under heavy contention gives up

Build = Callable[[Obj | None], Obj]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ResourceStore:
    def __init__(
        self,
        backend: Backend,
        *,
        validate: Callable[[Obj], None] | None = None,
        kinds: KindRegistry | None = None,
        now: Callable[[], datetime] | None = None,
        default: Callable[[Obj], Obj] | None = None,
    ) -> None:
        self._backend = backend
        self._validate = validate
        self._default = default  # fills in schema defaults before validation and storage
        self._kinds = kinds
        self._now = now or _utc_now

    def __repr__(self) -> str:
        return f"ResourceStore({self._backend!r})"

    @property
    def kinds(self) -> KindRegistry:
        # Resolved on first use, so a store can be built before the schemas load.
        if self._kinds is None:
            self._kinds = registry()
        return self._kinds

    # -- identity and messages -------------------------------------------------------

    def key_of(self, obj: Obj) -> Key:
        kind, _ = self.kinds.for_object(obj)
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            raise Invalid(f"{kind.kind}: metadata.name: Required value")
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise Invalid(f"{kind.kind}: metadata.name: Required value")
        namespace = meta.get("namespace") or "default"
        if not isinstance(namespace, str):
            raise Invalid(f"{kind.kind} {name}: metadata.namespace: must be a string")
        return Key(kind.group, kind.kind, namespace if kind.namespaced else "", name)

    def _qualified(self, key: Key) -> str:
        for kind in self.kinds:
            if kind.group == key.group and kind.kind == key.kind:
                return kind.qualified
        return f"{key.kind.lower()}s{'.' + key.group if key.group else ''}"

    def _not_found(self, key: Key) -> NotFound:
        return NotFound(f'{self._qualified(key)} "{key.name}" not found')

    def _modified(self, key: Key) -> Conflict:
        return Conflict(
            f'Operation cannot be fulfilled on {self._qualified(key)} "{key.name}": the object '
            "has been modified; please apply your changes to the latest version and try again"
        )

    def _precondition_failed(self, key: Key, wanted: str, actual: object) -> Conflict:
        return Conflict(
            f'Operation cannot be fulfilled on {self._qualified(key)} "{key.name}": '
            f"Precondition failed: UID in precondition: {wanted}, UID in object meta: {actual}"
        )

    # -- reads -------------------------------------------------------------------------

    def get(self, key: Key) -> Obj:
        found = self._backend.read(key)
        if found is None:
            raise self._not_found(key)
        return _stamped(*found)

    def list(
        self,
        group: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> tuple[list[Obj], str]:
        selector = parse_selector(label_selector)
        found, revision = self._backend.scan(group, kind, namespace)
        items = [
            _stamped(obj, rev)
            for obj, rev in found
            if selector.matches(obj.get("metadata", {}).get("labels"))
        ]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items, str(revision)

    def watch(
        self,
        group: str | None = None,
        kind: str | None = None,
        namespace: str | None = None,
        since: str | None = None,
    ) -> Watch:
        """From `since` (a resourceVersion), or, when it is None, "" or "0" as in
        Kubernetes, an ADDED event per current object and then what follows."""
        wanted = ObjectFilter(group, kind, namespace)
        if since in (None, "", "0"):
            found, revision = self._backend.scan(group, kind, namespace)
            initial = [Event("ADDED", _stamped(obj, rev), rev) for obj, rev in found]
            return StoreWatch(self._backend.watch(revision), wanted, initial)
        return StoreWatch(self._backend.watch(_revision(since)), wanted, [])

    # -- writes ------------------------------------------------------------------------

    def apply(self, obj: Obj, *, manager: str, force: bool = False, dry_run: bool = False) -> Obj:
        """Server-side apply: `obj` is `manager`'s whole intent for the fields it names."""
        key, kind, version = self._identify(obj)
        me = Manager(manager, "Apply")

        def build(live: Obj | None) -> Obj:
            live_body = _owned_part(live) if live else {}
            config = _owned_part(obj)
            config.pop("status", None)  # status changes only through update_status
            owners = _owners(live)
            schema = kind.schemas.get(version)
            merged, sets = apply_config(live_body, config, owners, me, schema, force)
            new_owners = record(owners, sets, me, obj["apiVersion"], rfc3339(self._now()))
            return self._assemble(key, obj["apiVersion"], live, merged, new_owners)

        return self._write(key, build, _given_version(obj), dry_run)

    def create(self, obj: Obj, *, manager: str, dry_run: bool = False) -> Obj:
        if (obj.get("metadata") or {}).get("resourceVersion") not in (None, ""):
            # Kubernetes' storage refuses it too: a create cannot be conditional.
            raise BadRequest("resourceVersion should not be set on objects to be created")
        key, kind, version = self._identify(obj)

        def build(live: Obj | None) -> Obj:
            if live is not None:
                raise AlreadyExists(f'{self._qualified(key)} "{key.name}" already exists')
            body = copy.deepcopy(_owned_part(obj))  # the caller keeps its object
            body.pop("status", None)
            return self._replace(key, kind, version, obj["apiVersion"], None, body, manager)

        return self._write(key, build, None, dry_run)

    def update(self, obj: Obj, *, manager: str, dry_run: bool = False) -> Obj:
        """Replace everything but status; optimistic if metadata.resourceVersion is given."""
        key, kind, version = self._identify(obj)

        def build(live: Obj | None) -> Obj:
            if live is None:
                raise self._not_found(key)
            body = copy.deepcopy(_owned_part(obj))  # the caller keeps its object
            body.pop("status", None)
            if "status" in live:
                body["status"] = live["status"]
            return self._replace(key, kind, version, obj["apiVersion"], live, body, manager)

        return self._write(key, build, _given_version(obj), dry_run, must_exist=True)

    def update_status(
        self, key: Key, status: Obj, *, resource_version: str | None = None, manager: str = ""
    ) -> Obj:
        def build(live: Obj | None) -> Obj:
            if live is None:
                raise self._not_found(key)
            kind, version = self.kinds.for_object(live)
            body = {**_owned_part(live), "status": copy.deepcopy(status)}
            me = Manager(manager, "Update", "status")
            return self._replace(key, kind, version, live["apiVersion"], live, body, me)

        return self._write(key, build, resource_version, False, must_exist=True)

    def delete(
        self,
        key: Key,
        *,
        resource_version: str | None = None,
        uid: str | None = None,
        dry_run: bool = False,
    ) -> Obj:
        """Remove an object; what it was is returned, at the delete's revision.
        An object with finalizers is only marked (metadata.deletionTimestamp),
        as in Kubernetes: it goes when a write leaves it none. `resource_version`
        and `uid` are DeleteOptions' preconditions, checked against the very
        revision the delete replaces."""
        for _ in range(_RETRIES):
            found = self._backend.read(key)
            if found is None:
                raise self._not_found(key)
            live, revision = found
            if resource_version is not None and resource_version != str(revision):
                raise self._modified(key)
            if uid is not None and uid != live["metadata"].get("uid"):
                raise self._precondition_failed(key, uid, live["metadata"].get("uid"))
            finalizing = bool(live["metadata"].get("finalizers"))
            after = self._marked(live) if finalizing else live
            if dry_run or (finalizing and after is live):
                return _stamped(after, revision)  # nothing to write, or marked already
            try:
                stored = after if finalizing else None
                return _stamped(after, self._backend.write(key, stored, revision))
            except Conflict:
                if resource_version is not None:
                    raise self._modified(key) from None
            except NotFound:
                raise self._not_found(key) from None
        raise self._modified(key)

    def _marked(self, live: Obj) -> Obj:
        """`live` marked for deletion (itself if it is already)."""
        meta = live["metadata"]
        if "deletionTimestamp" in meta:
            return live
        marks = {"deletionTimestamp": rfc3339(self._now()), "deletionGracePeriodSeconds": 0}
        return {**live, "metadata": {**meta, **marks}}

    def close(self) -> None:
        self._backend.close()

    # -- the write engine ----------------------------------------------------------------

    def _identify(self, obj: Obj) -> tuple[Key, Kind, str]:
        if not isinstance(obj, dict):
            raise BadRequest("the body must be an object")
        kind, version = self.kinds.for_object(obj)
        return self.key_of(obj), kind, version

    def _write(
        self,
        key: Key,
        build: Build,
        precondition: str | None,
        dry_run: bool,
        must_exist: bool = False,
    ) -> Obj:
        """Read, build, validate, compare-and-swap; again from the top if another
        writer got in between and the client did not pin a resourceVersion."""
        for _ in range(_RETRIES):
            found = self._backend.read(key)
            live, revision = found if found is not None else (None, 0)
            if precondition is not None and str(revision) != precondition:
                raise self._not_found(key) if live is None and must_exist else self._modified(key)
            new = build(live)
            if self._default is not None:
                new = self._default(new)
            if live is not None and same(new, live):
                return _stamped(live, revision)  # nothing changed: no write, no new revision
            if self._validate is not None:
                self._validate(_stamped(new, revision))
            gone = _finalized(live, new)
            if dry_run:
                return _stamped(new, revision)
            try:
                return _stamped(new, self._backend.write(key, None if gone else new, revision))
            except Conflict:
                if precondition is not None:
                    raise self._modified(key) from None
        raise self._modified(key)

    def _replace(
        self,
        key: Key,
        kind: Kind,
        version: str,
        api_version: str,
        live: Obj | None,
        body: Obj,
        manager: str | Manager,
    ) -> Obj:
        """`body` as the whole new state, owned as a plain update by `manager`."""
        me = manager if isinstance(manager, Manager) else Manager(manager, "Update")
        owners = _owners(live)
        live_body = _owned_part(live) if live else {}
        sets = update_sets(live_body, body, owners, me, kind.schemas.get(version))
        new_owners = record(owners, sets, me, api_version, rfc3339(self._now()))
        return self._assemble(key, api_version, live, body, new_owners)

    def _assemble(
        self, key: Key, api_version: str, live: Obj | None, body: Obj, owners: Owners
    ) -> Obj:
        """The stored form: identity and system metadata around the owned fields."""
        body = dict(body)
        user_meta = body.pop("metadata", {})
        live_meta = live["metadata"] if live else {}
        generation = int(live_meta.get("generation", 0))
        if live is None or not same(_spec_part(live), _spec_part(body)):
            generation += 1
        meta: Obj = {"name": key.name}
        if key.namespace:
            meta["namespace"] = key.namespace
        meta.update(user_meta)
        meta["uid"] = live_meta.get("uid") or str(uuid.uuid4())
        meta["generation"] = generation
        meta["creationTimestamp"] = live_meta.get("creationTimestamp") or rfc3339(self._now())
        meta.update((k, live_meta[k]) for k in _DELETION if k in live_meta)
        if owners:
            meta["managedFields"] = render_owners(owners)
        out: Obj = {"apiVersion": api_version, "kind": key.kind, "metadata": meta}
        out.update((k, v) for k, v in body.items() if k != "status")
        if "status" in body:
            out["status"] = body["status"]
        return out


def _finalized(live: Obj | None, new: Obj) -> bool:
    """Whether this write removes an object being deleted: it leaves no
    finalizers. One being deleted takes no new ones, as in Kubernetes."""
    if live is None or "deletionTimestamp" not in live["metadata"]:
        return False
    before = set(live["metadata"].get("finalizers") or ())
    after = new["metadata"].get("finalizers") or []
    added = [f for f in after if f not in before]
    if added:
        raise Invalid(
            f'{new["kind"]} "{new["metadata"]["name"]}": metadata.finalizers: Forbidden: no new '
            f"finalizers can be added if the object is being deleted, found new finalizers {added}"
        )
    return not after


def _owned_part(obj: Obj) -> Obj:
    """What field managers can own: everything but apiVersion, kind and system metadata."""
    out = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise BadRequest("metadata: must be an object")
    user_meta = {k: v for k, v in (meta or {}).items() if k not in SYSTEM_METADATA}
    return {"metadata": user_meta, **out} if user_meta else out


def _spec_part(obj: Obj) -> Obj:
    """What `generation` counts changes of: all but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}


def _owners(live: Obj | None) -> Owners:
    return read_owners(live["metadata"].get("managedFields")) if live else {}


def _given_version(obj: Obj) -> str | None:
    version = (obj.get("metadata") or {}).get("resourceVersion")
    return str(version) if version not in (None, "") else None


def _revision(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f'invalid resourceVersion "{text}": not an integer') from None
    if value < 0:
        raise BadRequest(f'invalid resourceVersion "{text}": negative')
    if value >= 2**63:  # etcd's revisions, and Kubernetes', are int64
        raise BadRequest(f'invalid resourceVersion "{text}": out of range')
    return value


def _stamped(obj: Obj, revision: int) -> Obj:
    """A copy of `obj` carrying `revision` as metadata.resourceVersion, placed
    before the long managedFields so it reads well in `get -o yaml`."""
    meta = dict(obj.get("metadata", {}))
    managed = meta.pop("managedFields", None)
    meta.pop("resourceVersion", None)
    if revision:
        meta["resourceVersion"] = str(revision)
    if managed is not None:
        meta["managedFields"] = managed
    return {**obj, "metadata": meta}


class ObjectFilter:
    """Whether an object is of the given group, kind and namespace (None: any)."""

    def __init__(self, group: str | None, kind: str | None, namespace: str | None) -> None:
        self.group, self.kind, self.namespace = group, kind, namespace

    def __call__(self, obj: Obj) -> bool:
        group = str(obj.get("apiVersion", "")).rpartition("/")[0]
        namespace = obj.get("metadata", {}).get("namespace", "")
        return (
            (self.group is None or group == self.group)
            and (self.kind is None or obj.get("kind") == self.kind)
            and (self.namespace is None or namespace == self.namespace)
        )


class StoreWatch:
    """The initial ADDED events (if any), then the backend's changes that match."""

    def __init__(self, inner: Watch, wanted: ObjectFilter, initial: list[Event]) -> None:
        self._inner = inner
        self._wanted = wanted
        self._initial = initial
        self._initial.reverse()  # popped from the end, in order

    def __repr__(self) -> str:
        return f"StoreWatch({self._inner!r}, initial={len(self._initial)})"

    def next(self, timeout: float | None = None) -> Event | None:
        if self._initial:
            return self._initial.pop()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            event = self._inner.next(left)
            if event is None:
                return None
            if self._wanted(event.object):
                stamped = _stamped(event.object, event.resource_version)
                return Event(event.type, stamped, event.resource_version)

    def close(self) -> None:
        self._inner.close()
