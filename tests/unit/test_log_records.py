"""A stored log line's time as the API writes it: integer microseconds, formatted as
format_time formats a datetime (the NDJSON pages are checked in tests/integration/
test_store.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ringjobs.models import format_time, format_time_us


@pytest.mark.parametrize(
    "time_us", [0, 1, 999_999, 1_000_000, 1_764_600_000_123_456, 1_764_600_059_999_999]
)
def test_microsecond_times_format_like_datetimes(time_us: int) -> None:
    seconds, micros = divmod(time_us, 1_000_000)
    when = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
    assert format_time_us(time_us) == format_time(when)
