"""The control plane's span store: DATA_DIR/traces.db (SQLite, 0600).

Retention is Jaeger's, by count and by age: at most `max_traces` traces and
`max_bytes` bytes of spans, none received more than `max_age_s` ago; the
oldest traces (by when their first span arrived) go first, whole. So disk
stays bounded, and memory too: queries read at most `limit` traces and a
trace at most MAX_SPANS_PER_TRACE spans. It survives restarts, being a file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pilotfish.objects import Obj
from pilotfish.store.sqlite import _make_private, transaction
from pilotfish.tracing.otlp import SpanRecord

TRACES_FILE = "traces.db"
MAX_TRACES = 10_000  # Jaeger's in-memory store is sized by trace count too
MAX_AGE_S = 72 * 3600  # Jaeger's default span TTL (badger's --badger.span-store-ttl)
MAX_BYTES = 256 * 1024 * 1024
MAX_SPANS_PER_TRACE = 10_000  # more are dropped, as the trace would not draw anyway

_SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY, received REAL NOT NULL, spans INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS traces_received ON traces(received);
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, service TEXT NOT NULL,
    operation TEXT NOT NULL, start_us INTEGER NOT NULL, duration_us INTEGER NOT NULL,
    error INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS spans_service ON spans(service, start_us);
"""
# A tag with this key whose value reads as the given text (booleans as true/false, as
# Jaeger's tags=... compares them).
_HAS_TAG = (
    "EXISTS (SELECT 1 FROM json_each(body, '{tags}') WHERE json_extract(value, '$.key') = ? "
    "AND (CASE json_type(value, '$.value') WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
    "ELSE CAST(json_extract(value, '$.value') AS TEXT) END) = ?)"
)


@dataclass(frozen=True)
class Retention:
    max_traces: int = MAX_TRACES
    max_age_s: float = MAX_AGE_S
    max_bytes: int = MAX_BYTES


DEFAULT_RETENTION = Retention()


@dataclass(frozen=True)
class Query:
    """Jaeger's trace search: traces with a span that matches every field set."""

    service: str
    operation: str | None = None
    min_duration_us: int | None = None
    max_duration_us: int | None = None
    error: bool | None = None  # status: error / ok
    start_us: int | None = None
    end_us: int | None = None
    tags: tuple[tuple[str, str], ...] = ()
    limit: int = 20


class SpanStore:
    def __init__(
        self,
        path: Path,
        retention: Retention = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.retention = retention
        self._clock = clock
        self._lock = threading.Lock()
        _make_private(str(path))
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"SpanStore({str(self.path)!r}, {self.retention})"

    def add(self, records: Iterable[SpanRecord]) -> int:
        """Store spans (a span seen before is kept as first seen); the number dropped
        because their trace is full."""
        dropped = 0
        now = self._clock()
        with transaction(self._conn, self._lock, "IMMEDIATE") as db:
            for r in records:
                db.execute(
                    "INSERT OR IGNORE INTO traces (trace_id, received) VALUES (?, ?)",
                    (r.trace_id, now),
                )
                (count,) = db.execute(
                    "SELECT spans FROM traces WHERE trace_id = ?", (r.trace_id,)
                ).fetchone()
                if count >= MAX_SPANS_PER_TRACE:
                    dropped += 1
                    continue
                body = json.dumps(r.span, separators=(",", ":"))
                added = db.execute(
                    "INSERT OR IGNORE INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.trace_id,
                        r.span_id,
                        r.service,
                        r.operation,
                        r.start_us,
                        r.duration_us,
                        int(r.error),
                        body,
                    ),
                ).rowcount
                db.execute(
                    "UPDATE traces SET spans = spans + ?, bytes = bytes + ? WHERE trace_id = ?",
                    (added, added * len(body), r.trace_id),
                )
            self._expire(db, now)
        return dropped

    def _expire(self, db: sqlite3.Connection, now: float) -> None:
        """Age first, then the oldest traces until both the count and the bytes
        fit (the sums read the small traces table, never the spans)."""
        r = self.retention
        self._drop(db, "SELECT trace_id FROM traces WHERE received < ?", (now - r.max_age_s,))
        count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM traces").fetchone()
        doomed = 0
        oldest = db.execute("SELECT bytes FROM traces ORDER BY received, trace_id")
        while count - doomed > r.max_traces or size > r.max_bytes:
            row = oldest.fetchone()
            if row is None:
                break
            doomed, size = doomed + 1, size - row[0]
        oldest.close()
        if doomed:
            first = "SELECT trace_id FROM traces ORDER BY received, trace_id LIMIT ?"
            self._drop(db, first, (doomed,))

    @staticmethod
    def _drop(db: sqlite3.Connection, select: str, args: tuple[object, ...]) -> None:
        db.execute(f"DELETE FROM spans WHERE trace_id IN ({select})", args)
        db.execute(f"DELETE FROM traces WHERE trace_id IN ({select})", args)

    def trace(self, trace_id: str) -> list[Obj]:
        """Every span of one trace, oldest first; [] if it is not kept."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT body FROM spans WHERE trace_id = ? ORDER BY start_us, span_id", (trace_id,)
            ).fetchall()
        return [json.loads(body) for (body,) in rows]

    def find(self, query: Query) -> list[list[Obj]]:
        """The traces that match, most recent first, each as its spans."""
        where, args = _conditions(query)
        sql = (
            f"SELECT trace_id, MAX(start_us) AS latest FROM spans WHERE {where} "
            "GROUP BY trace_id ORDER BY latest DESC LIMIT ?"
        )
        with self._lock:
            found = self._conn.execute(sql, (*args, query.limit)).fetchall()
        matched = [self.trace(trace_id) for trace_id, _ in found]
        return [spans for spans in matched if spans]

    def services(self) -> list[str]:
        with self._lock:
            rows = self._conn.execute("SELECT DISTINCT service FROM spans ORDER BY service")
            return [service for (service,) in rows.fetchall()]

    def operations(self, service: str) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT DISTINCT operation FROM spans WHERE service = ? ORDER BY operation",
                (service,),
            )
            return [operation for (operation,) in rows.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _conditions(query: Query) -> tuple[str, list[object]]:
    where: list[str] = ["service = ?"]
    args: list[object] = [query.service]
    for clause, value in (
        ("operation = ?", query.operation),
        ("duration_us >= ?", query.min_duration_us),
        ("duration_us <= ?", query.max_duration_us),
        ("start_us >= ?", query.start_us),
        ("start_us <= ?", query.end_us),
        ("error = ?", None if query.error is None else int(query.error)),
    ):
        if value is not None:
            where.append(clause)
            args.append(value)
    for key, value in query.tags:
        # A tag of the span or of its process, whatever its type, compared as text.
        where.append(
            f"({_HAS_TAG.format(tags='$.tags')} OR {_HAS_TAG.format(tags='$.process.tags')})"
        )
        args += [key, value, key, value]
    return " AND ".join(where), args
