"""Events: one line per decision, stored as core/v1 Event objects about the
Canary, so `pilotfish describe canary NAME` explains a release the way
`kubectl describe canary` does under Flagger. The same message repeated
counts up on one Event, as Kubernetes aggregates them."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from pilotfish.api.errors import ApiError, NotFound
from pilotfish.objects import Obj
from pilotfish.store.resources import ResourceStore
from pilotfish.store.types import Key

log = logging.getLogger("pilotfish.rollout")

COMPONENT = "flagger"
REASON = "Synced"  # what Flagger gives every event it records
KEEP = 200  # events kept per object; the oldest go first


class EventRecorder:
    def __init__(
        self,
        store: ResourceStore,
        clock: Callable[[], float],
        on_event: Callable[[Obj, str, bool], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.on_event = on_event

    def __repr__(self) -> str:
        return f"EventRecorder({self.store!r})"

    def record(self, about: Obj, message: str, *, warning: bool = False) -> None:
        meta = about["metadata"]
        namespace = meta.get("namespace") or "default"
        log.info("rollout: %s %s/%s: %s", about.get("kind"), namespace, meta["name"], message)
        # Microseconds, so the events of one step sort in the order they were made.
        now = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        name = _event_name(about, message)
        try:
            self._count_up(Key("", "Event", namespace, name), now)
        except NotFound:
            self.store.apply(_new_event(about, name, message, warning, now), manager=COMPONENT)
            self._prune(about)
        except ApiError as e:
            log.warning("rollout: cannot record an event: %s", e)
        if self.on_event is not None:
            self.on_event(about, message, warning)

    def _count_up(self, key: Key, now: str) -> None:
        live = self.store.get(key)
        live["count"] = int(live.get("count") or 1) + 1
        live["lastTimestamp"] = now
        self.store.update(live, manager=COMPONENT)

    def _prune(self, about: Obj) -> None:
        namespace = about["metadata"].get("namespace") or "default"
        events, _ = self.store.list("", "Event", namespace)
        mine = sorted(
            (e for e in events if _is_about(e, about)), key=lambda e: e.get("lastTimestamp", "")
        )
        for old in mine[: max(0, len(mine) - KEEP)]:
            with contextlib.suppress(NotFound):
                self.store.delete(Key("", "Event", namespace, old["metadata"]["name"]))


def _event_name(about: Obj, message: str) -> str:
    meta = about["metadata"]
    digest = hashlib.sha256(f"{meta.get('uid', '')}/{message}".encode()).hexdigest()[:12]
    return f"{meta['name']}.{digest}"


def _new_event(about: Obj, name: str, message: str, warning: bool, now: str) -> Obj:
    meta = about["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": meta.get("namespace") or "default"},
        "involvedObject": {
            "apiVersion": about.get("apiVersion", ""),
            "kind": about.get("kind", ""),
            "name": meta["name"],
            "namespace": meta.get("namespace") or "default",
            "uid": meta.get("uid", ""),
        },
        "reason": REASON,
        "message": message,
        "type": "Warning" if warning else "Normal",
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": COMPONENT},
    }


def _is_about(event: Obj, about: Obj) -> bool:
    involved = event.get("involvedObject") or {}
    return (
        involved.get("kind") == about.get("kind")
        and involved.get("name") == about["metadata"]["name"]
    )
