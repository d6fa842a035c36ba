"""The embedded backend: one SQLite file, durable on every acknowledged write.

WAL with synchronous=FULL fsyncs the log on every commit, so a write that
returned survives `kill -9` and a power cut. `objects` holds the current
state; `events` is the change log keyed by the store-wide revision, trimmed to
the last `history` entries; `meta` keeps the head revision and how far the log
was compacted, so revisions stay monotonic across restarts.

One connection serves every thread behind a lock: writes are serialized by
SQLite anyway, and reads are short primary-key lookups.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from pilotfish.api.errors import Conflict, Expired, NotFound, too_large_resource_version
from pilotfish.objects import Obj
from pilotfish.store.types import Event, EventType, Key

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    grp TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    rev INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (grp, kind, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    rev INTEGER PRIMARY KEY, type TEXT NOT NULL, data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0);
"""

_BATCH = 500  # events a watch reads from the log at a time


def _dump(obj: Obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _make_private(path: str) -> None:
    """Create the database file 0600 before SQLite opens it: SQLite gives its
    -wal and -shm files the database file's mode, so all three stay private
    whatever the directory's mode. Files left looser by an older version are
    tightened (a WAL can hold a Secret in clear)."""
    if path == ":memory:":
        return
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(name, 0o600)


@contextmanager
def transaction(
    conn: sqlite3.Connection, lock: AbstractContextManager[object], mode: str = "DEFERRED"
) -> Iterator[sqlite3.Connection]:
    """One transaction on `conn` (opened with isolation_level=None), under `lock`."""
    with lock:
        conn.execute(f"BEGIN {mode}")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


class SqliteBackend:
    def __init__(
        self, path: str | os.PathLike[str], *, history: int = 10_000, poll_interval: float = 0.25
    ) -> None:
        self.path = str(path)
        self.history = history
        # A watch also re-reads the log this often, to see writes by other processes.
        self.poll_interval = poll_interval
        self._lock = threading.RLock()
        self._changed = threading.Condition()
        _make_private(self.path)
        self._conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)  # idempotent: safe on every open
        self._head = self._meta("revision")
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteBackend({self.path!r}, revision={self._head}, history={self.history})"

    def _transaction(self, mode: str = "DEFERRED") -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._conn, self._lock, mode)

    def _meta(self, name: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    # -- Backend ---------------------------------------------------------------------

    def read(self, key: Key) -> tuple[Obj, int] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT data, rev FROM objects WHERE grp=? AND kind=? AND namespace=? AND name=?",
                (key.group, key.kind, key.namespace, key.name),
            ).fetchone()
        return None if row is None else (json.loads(row[0]), int(row[1]))

    def scan(
        self, group: str | None, kind: str | None, namespace: str | None
    ) -> tuple[list[tuple[Obj, int]], int]:
        where, args = [], []
        for column, value in (("grp", group), ("kind", kind), ("namespace", namespace)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT data, rev FROM objects"
        sql += (" WHERE " + " AND ".join(where)) if where else ""
        sql += " ORDER BY grp, kind, namespace, name"
        with self._transaction() as conn:
            rows = conn.execute(sql, args).fetchall()
            revision = self._meta("revision")
        return [(json.loads(data), int(rev)) for data, rev in rows], revision

    def write(self, key: Key, obj: Obj | None, expected: int | None) -> int:
        with self._transaction("IMMEDIATE") as conn:
            row = conn.execute(
                "SELECT rev, data FROM objects WHERE grp=? AND kind=? AND namespace=? AND name=?",
                (key.group, key.kind, key.namespace, key.name),
            ).fetchone()
            current = 0 if row is None else int(row[0])
            if expected is not None and expected != current:
                raise Conflict(f"{key}: expected revision {expected}, found {current}")
            if obj is None and row is None:
                raise NotFound(f"{key} not found")
            revision = self._meta("revision") + 1
            self._record(key, obj, row, revision)
        with self._changed:
            self._head = max(self._head, revision)
            self._changed.notify_all()
        return revision

    def _record(
        self, key: Key, obj: Obj | None, row: tuple[int, str] | None, revision: int
    ) -> None:
        conn, ident = self._conn, (key.group, key.kind, key.namespace, key.name)
        kind: EventType
        if obj is None:
            conn.execute(
                "DELETE FROM objects WHERE grp=? AND kind=? AND namespace=? AND name=?", ident
            )
            kind, data = "DELETED", row[1] if row else "{}"
        else:
            data = _dump(obj)
            conn.execute(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?)", (*ident, revision, data)
            )
            kind = "ADDED" if row is None else "MODIFIED"
        conn.execute("INSERT INTO events VALUES (?, ?, ?)", (revision, kind, data))
        conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
        if revision > self.history:
            floor = revision - self.history
            conn.execute("DELETE FROM events WHERE rev <= ?", (floor,))
            conn.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (floor,))

    def watch(self, since: int) -> SqliteWatch:
        with self._lock:
            self._check_kept(since)
            head = self._meta("revision")
        if since > head:
            raise too_large_resource_version(since, head)
        return SqliteWatch(self, since)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
        with self._changed:
            self._changed.notify_all()

    # -- for watches --------------------------------------------------------------------

    def _check_kept(self, since: int) -> None:
        compacted = self._meta("compacted")
        if since < compacted:
            raise Expired(f"too old resource version: {since} ({compacted})")

    def events_after(self, since: int) -> list[Event]:
        """The next events after `since` from the log; Expired if they are gone."""
        with self._lock:
            if self._closed:
                return []
            return self._read_events(since)

    def _read_events(self, since: int) -> list[Event]:
        with self._transaction() as conn:
            self._check_kept(since)
            rows = conn.execute(
                "SELECT rev, type, data FROM events WHERE rev > ? ORDER BY rev LIMIT ?",
                (since, _BATCH),
            ).fetchall()
        return [Event(kind, json.loads(data), int(rev)) for rev, kind, data in rows]

    def wait_beyond(self, revision: int, timeout: float) -> None:
        """Sleep until an in-process write passes `revision`, or `timeout`, or close."""
        with self._changed:
            if self._head <= revision and not self._closed:
                self._changed.wait(timeout)

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class SqliteWatch:
    """Reads the event log forward from a revision; woken by writes in this process."""

    def __init__(self, backend: SqliteBackend, since: int) -> None:
        self._backend = backend
        self._last = since
        self._pending: deque[Event] = deque()
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"SqliteWatch(after={self._last}, pending={len(self._pending)}, closed={self._closed})"
        )

    def next(self, timeout: float | None = None) -> Event | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed and not self._backend.closed:
            if self._pending:
                return self._pending.popleft()
            batch = self._backend.events_after(self._last)
            if batch:
                self._pending.extend(batch)
                self._last = batch[-1].resource_version
                continue
            wait = self._backend.poll_interval
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return None
            self._backend.wait_beyond(self._last, wait)
        return None

    def close(self) -> None:
        self._closed = True
        self._backend.wake()
