"""The registry: what the store says (Services, ServiceEntries, WorkloadEntries
and routing config) and which workload instances are alive, as snapshots.

A watch keeps a copy of the mesh's kinds in memory, so a snapshot never reads
the store; listeners hear "something changed" with the kinds that did, and
take a fresh `snapshot()` when they are ready (the xDS server debounces).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pilotfish.api.errors import ApiError
from pilotfish.ca.identity import DEFAULT_TRUST_DOMAIN
from pilotfish.model import Snapshot, build_snapshot
from pilotfish.model.snapshot import is_mesh_object, services_of
from pilotfish.model.types import Service
from pilotfish.objects import Obj
from pilotfish.registry.instances import InstanceRegistry
from pilotfish.store.resources import ResourceStore
from pilotfish.store.types import Event, Watch

log = logging.getLogger("pilotfish.registry")

ObjectKey = tuple[str, str, str, str]  # (group, kind, namespace, name)
ChangeListener = Callable[[frozenset[str]], None]
INSTANCE = "Instance"  # the "kind" a listener hears for a registration change
JWKS = "Jwks"  # ... and for newly fetched RequestAuthentication keys
_WATCH_POLL_S = 0.5
# Records, not config: frequent, and read by neither snapshots nor analysis.
_NOT_KEPT = {("", "Event"), ("events.k8s.io", "Event"), ("", "ConfigMap")}


class ServicesMemo:
    """`services_of`, remembered from one snapshot to the next per object:
    the watch replaces an object's dict on every change, so a dict seen
    before declares the same services. Reading 1,000 Services again was most
    of a snapshot's time, on every push's path."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[Obj, tuple[Service, ...]]] = {}
        self._next: dict[int, tuple[Obj, tuple[Service, ...]]] = {}

    def __call__(self, obj: Obj) -> tuple[Service, ...]:
        hit = self._last.get(id(obj))  # the dict is held below, so its id is not reused
        found = hit[1] if hit is not None and hit[0] is obj else services_of(obj)
        self._next[id(obj)] = (obj, found)
        return found

    def rotate(self) -> None:
        """A snapshot is built: what it did not read is forgotten."""
        self._last, self._next = self._next, {}


class MeshRegistry:
    """Config kept current from the store, instances from an InstanceRegistry."""

    def __init__(
        self,
        store: ResourceStore,
        instances: InstanceRegistry | None = None,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
    ) -> None:
        self.store = store
        self.trust_domain = trust_domain  # of the identities clusters expect of servers
        self.instances = instances or InstanceRegistry()
        self.instances.add_listener(lambda: self._changed(frozenset({INSTANCE})))
        self._objects: dict[ObjectKey, Obj] = {}
        self._lock = threading.Lock()
        self._seen = threading.Condition(self._lock)
        self._revision = 0  # the newest store revision the watch has delivered
        self._listeners: list[ChangeListener] = []
        self._cached: Snapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._synced = threading.Event()
        self._jwks: dict[str, str] = {}
        self._services = ServicesMemo()

    def __repr__(self) -> str:
        return f"MeshRegistry({len(self._objects)} objects, {self.instances!r})"

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        """Watch the store from now on; returns once the current config is loaded."""
        self.instances.start()
        self._thread = threading.Thread(target=self._watch_forever, name="registry-watch")
        self._thread.daemon = True
        self._thread.start()
        self._synced.wait(timeout=30)

    def stop(self) -> None:
        self._stop.set()
        self.instances.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def snapshot(self) -> Snapshot:
        """The mesh now; rebuilt only after a change."""
        with self._lock:
            if self._cached is None:
                self._cached = build_snapshot(
                    list(self._objects.values()),
                    self.instances.instances(),
                    self.trust_domain,
                    self._jwks,
                    self._services,
                )
                self._services.rotate()
            return self._cached

    def set_jwks(self, keys: dict[str, str]) -> None:
        """The JWKS the control plane fetched, by jwksUri: the proxies get them inline."""
        with self._lock:
            self._jwks = dict(keys)
        self._changed(frozenset({JWKS}))

    # -- the config, for apply's analysis -----------------------------------------------

    def listed(self, group: str, kind: str, namespace: str | None) -> list[Obj]:
        """The objects of a kind (every namespace when None), as the store
        lists them, from memory: apply's analysis reads the whole mesh on
        every write, and decoding it from the store was most of its time.
        Events and ConfigMaps (the mesh config aside) are not kept."""
        with self._lock:
            found = [
                (ns, name, obj)
                for (g, k, ns, name), obj in self._objects.items()
                if (g, k) == (group, kind) and namespace in (None, ns)
            ]
        return [obj for _, _, obj in sorted(found, key=lambda f: f[:2])]

    def caught_up(self, revision: int, timeout: float) -> bool:
        """Wait until the watch has delivered the store's `revision` (a write
        just made); False if it has not within `timeout` seconds."""
        with self._seen:
            return self._seen.wait_for(lambda: self._revision >= revision, timeout)

    # -- keeping current ---------------------------------------------------------------

    def apply_event(self, event: Event) -> str | None:
        """Record one store event; the kind it changed, or None if not a mesh
        kind (such an object is kept for `listed`, and pushes nothing)."""
        obj = event.object
        group = str(obj.get("apiVersion", "")).rpartition("/")[0]
        kind = str(obj.get("kind", ""))
        mesh = is_mesh_object(obj)
        meta = obj.get("metadata") or {}
        key = (group, kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        with self._seen:
            self._revision = max(self._revision, int(event.resource_version or 0))
            self._seen.notify_all()
            if not mesh and (group, kind) in _NOT_KEPT:
                return None
            if event.type == "DELETED":
                self._objects.pop(key, None)
            else:
                self._objects[key] = obj
            if mesh:
                self._cached = None
        return kind if mesh else None

    def _changed(self, kinds: frozenset[str]) -> None:
        with self._lock:
            self._cached = None
        for listener in self._listeners:
            listener(kinds)

    def _watch_forever(self) -> None:
        since: str | None = None
        while not self._stop.is_set():
            try:
                since = self._follow(self.store.watch(since=since), since)
            except ApiError as e:
                # Expired history: start over from a full list, as an informer does.
                log.warning("registry watch restarts: %s", e.message)
                since = None
                self._reset()

    def _follow(self, watch: Watch, since: str | None) -> str | None:
        try:
            if since is None:
                self._load_initial(watch)
            while not self._stop.is_set():
                event = watch.next(_WATCH_POLL_S)
                if event is None:
                    continue
                since = str(event.resource_version)
                kind = self.apply_event(event)
                if kind is not None:
                    self._changed(frozenset({kind}))
            return since
        finally:
            watch.close()

    def _load_initial(self, watch: Watch) -> None:
        """Drain the watch's initial ADDED events (they come without waiting)."""
        kinds: set[str] = set()
        while (event := watch.next(0)) is not None:
            kind = self.apply_event(event)
            if kind is not None:
                kinds.add(kind)
        self._synced.set()
        if kinds:
            self._changed(frozenset(kinds))

    def _reset(self) -> None:
        with self._lock:
            self._objects.clear()
            self._cached = None
