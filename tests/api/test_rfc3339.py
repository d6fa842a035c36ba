"""RFC 3339 times are read in one place (api.gotypes.parse_rfc3339), by the
schema check, the rollout controller and kubectl-like output alike."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pilotfish.api.gotypes import parse_rfc3339, rfc3339
from pilotfish.cli.output import age


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-07T10:00:00Z", datetime(2026, 12, 7, 10, tzinfo=UTC)),
        ("2026-12-07t10:00:00z", datetime(2026, 12, 7, 10, tzinfo=UTC)),
        ("2026-12-07T12:00:00.5+02:00", datetime(2026, 12, 7, 10, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_reads_rfc3339_date_times(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected
    assert parse_rfc3339(rfc3339(expected)) == expected.replace(microsecond=0)


@pytest.mark.parametrize(
    "text", ["2026-12-07", "2026-12-07T10:00:00", "2026-12-07 10:00:00Z", "today", ""]
)
def test_refuses_what_is_not_a_date_time(text: str) -> None:
    with pytest.raises(ValueError, match="not an RFC 3339 date-time"):
        parse_rfc3339(text)


def test_age_of_a_time_without_offset_is_invalid_not_a_crash() -> None:
    # fromisoformat took it as a naive datetime, and the subtraction from an
    # aware "now" raised TypeError in the middle of `pilotfish get`.
    assert age("2026-12-07T10:00:00") == "<invalid>"
    now = datetime(2026, 12, 7, 10, 5, tzinfo=UTC)
    assert age("2026-12-07T10:00:00Z", now) == "5m"
