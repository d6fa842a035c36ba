"""Where resources are kept: a ResourceStore over a small pluggable Backend.

`ResourceStore` (store/resources.py) holds every rule of the API: server-side
apply with field managers, optimistic concurrency, generation, uid and
timestamps, validation before anything is written. A `Backend` (sqlite.py,
later etcd.py) only keeps versioned bytes, compares-and-swaps, and replays
history, so a second backend is small and passes the same test suite.
"""

from pilotfish.store.types import Backend, Event, EventType, Key, Watch

__all__ = ["Backend", "Event", "EventType", "Key", "Watch"]
