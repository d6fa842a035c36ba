"""`logs --since/--tail`: which lines of a log are recent, by the time each starts with."""

from __future__ import annotations

from datetime import datetime

from pilotfish.cli.node import line_time, recent_lines

NOW = datetime(2026, 1, 2, 3, 4, 5).timestamp()
LOG = [
    "2026-01-02 02:00:00,001 proxy started\n",
    "  a continuation line of the old entry\n",
    "2026-01-02 03:03:00,500 listener added\n",
    "  its continuation\n",
    "2026-01-02T03:04:00 upstream connected\n",
]


def test_line_times_in_python_logging_and_iso_forms() -> None:
    assert line_time(LOG[0]) == datetime(2026, 1, 2, 2, 0, 0, 1000).timestamp()
    assert line_time(LOG[1]) is None
    assert line_time("[2026-01-02T03:04:00+00:00] x") is not None


def test_since_keeps_recent_stamps_and_their_continuations() -> None:
    assert recent_lines(LOG, -1, NOW - 120, written=0) == LOG[2:]
    assert recent_lines(LOG, 1, NOW - 120, written=0) == LOG[-1:]
    assert recent_lines(LOG, -1, None, written=0) == LOG


def test_unstamped_lines_count_as_written_when_the_file_was() -> None:
    plain = ["listening\n", "GET /health 200\n"]
    assert recent_lines(plain, -1, NOW - 60, written=NOW) == plain
    assert recent_lines(plain, -1, NOW - 60, written=NOW - 3600) == []


def test_tail() -> None:
    assert recent_lines(LOG, 2, None, written=0) == LOG[-2:]
    assert recent_lines(LOG, 0, None, written=0) == []
    assert recent_lines(LOG, 99, None, written=0) == LOG
