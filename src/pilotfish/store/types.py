"""The shapes shared by the store, its backends and its clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from pilotfish.api.errors import ApiError
from pilotfish.objects import Obj

EventType = Literal["ADDED", "MODIFIED", "DELETED"]


class FenceLost(ApiError):
    """A fenced write refused: its writer no longer holds what fences it (the
    lead). Not a Conflict, which the store retries: no retry can succeed."""

    code = 409
    reason = "Conflict"


@dataclass(frozen=True, order=True)
class Key:
    """Identity of a stored object; independent of the apiVersion it was written with."""

    group: str  # "" for the core group
    kind: str
    namespace: str  # "" for cluster-scoped kinds
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind}{'.' + self.group if self.group else ''} {where}"


@dataclass(frozen=True)
class Event:
    """One change, as a watch delivers it: the object as it was after (or, for
    DELETED, just before) the change. `resource_version` is the change's
    revision; ResourceStore's watches also set it as metadata.resourceVersion
    (a Backend stores objects as given and need not)."""

    type: EventType
    object: Obj
    resource_version: int


class Watch(Protocol):
    def next(self, timeout: float | None = None) -> Event | None:
        """The next event, or None when `timeout` seconds pass with none."""

    def close(self) -> None: ...


class Backend(Protocol):
    """Versioned storage of objects by Key. Every write bumps one store-wide
    revision and is durable before the call returns."""

    def read(self, key: Key) -> tuple[Obj, int] | None:
        """The object and the revision that last wrote it, or None."""

    def scan(
        self, group: str | None, kind: str | None, namespace: str | None
    ) -> tuple[list[tuple[Obj, int]], int]:
        """Every object matching the given parts of a key (None: any), as of one
        revision, which is returned with them."""

    def write(self, key: Key, obj: Obj | None, expected: int | None) -> int:
        """Store `obj` (None deletes) if the key's current revision is `expected`
        (0: must not exist; None: unconditional); return the new revision.
        Raises Conflict when the expectation does not hold, NotFound when
        deleting what is not there."""

    def watch(self, since: int) -> Watch:
        """Every change after revision `since`, in order, then live ones.
        Raises Expired when `since` is older than the history kept, and
        Timeout (Kubernetes' "Too large resource version") when it is newer
        than the store's revision."""

    def close(self) -> None: ...
