"""A stored log line as the API writes it: the fast NDJSON path equals json.dumps."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from ringjobs.models import format_time, format_time_us
from ringjobs.store import LogRecord

LINES = [
    "",
    "plain",
    'quotes " and \\ backslash',
    "tab\tand\x00control\x1f",
    "üñïçødé and emoji 🎉",
    "replaced \ufffd bytes",
    "x" * 20_000,
]


@pytest.mark.parametrize("line", LINES)
@pytest.mark.parametrize("completion", [None, 0, 7])
def test_a_log_line_as_ndjson_is_what_json_dumps_writes(line: str, completion: int | None) -> None:
    record = LogRecord(seq=42, attempt=2, stream="stderr", time_us=1_764_600_000_123_456, line=line)
    expected = record.to_api() | ({} if completion is None else {"completion": completion})
    assert record.to_ndjson(completion) == json.dumps(expected) + "\n"


@pytest.mark.parametrize(
    "time_us", [0, 1, 999_999, 1_000_000, 1_764_600_000_123_456, 1_764_600_059_999_999]
)
def test_microsecond_times_format_like_datetimes(time_us: int) -> None:
    seconds, micros = divmod(time_us, 1_000_000)
    when = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
    assert format_time_us(time_us) == format_time(when)
