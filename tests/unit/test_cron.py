"""Cron next-fire tables, DST transitions in two time zones, and missed-fire windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ringjobs.cron import COUNT_LIMIT, CronError, CronSchedule


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def fires(expression: str, zone: str, start: str, count: int) -> list[str]:
    schedule = CronSchedule(expression, zone)
    moment, out = utc(start), []
    for _ in range(count):
        moment = schedule.next_after(moment)
        out.append(moment.strftime("%Y-%m-%dT%H:%MZ"))
    return out


@pytest.mark.parametrize(
    ("expression", "start", "expected"),
    [
        ("*/15 * * * *", "2026-01-01T10:07:00Z", ["10:15", "10:30", "10:45"]),
        ("0 3 * * *", "2026-01-01T03:00:00Z", ["2026-01-02T03:00"]),  # strictly after
        ("0 3 * * *", "2026-01-01T02:59:59.999Z", ["2026-01-01T03:00"]),
        ("@hourly", "2026-01-01T10:00:00Z", ["11:00", "12:00"]),
        ("@daily", "2026-01-01T10:00:00Z", ["2026-01-02T00:00"]),
        ("@midnight", "2026-01-01T10:00:00Z", ["2026-01-02T00:00"]),
        ("@weekly", "2026-01-01T10:00:00Z", ["2026-01-04T00:00"]),  # Sunday
        ("@monthly", "2026-01-15T10:00:00Z", ["2026-02-01T00:00"]),
        ("@yearly", "2026-01-15T10:00:00Z", ["2027-01-01T00:00"]),
        ("@annually", "2026-01-15T10:00:00Z", ["2027-01-01T00:00"]),
        ("0 9 * * MON-FRI", "2026-01-02T10:00:00Z", ["2026-01-05T09:00"]),  # Fri -> Mon
        ("0 0 29 2 *", "2026-01-01T00:00:00Z", ["2028-02-29T00:00"]),
        ("0 0 1 JAN,JUL *", "2026-01-01T00:00:00Z", ["2026-07-01T00:00"]),
        ("0 12 * * 7", "2026-01-01T00:00:00Z", ["2026-01-04T12:00"]),  # 7 is Sunday too
        # Day-of-month and day-of-week both restricted: either matches (Vixie cron).
        ("0 0 13 * FRI", "2026-02-01T00:00:00Z", ["2026-02-06T00:00", "2026-02-13T00:00"]),
    ],
)
def test_next_fire_table_in_utc(expression: str, start: str, expected: list[str]) -> None:
    got = fires(expression, "UTC", start, len(expected))
    if "T" not in expected[0]:
        got = [g.split("T")[1].rstrip("Z") for g in got]
    else:
        expected = [e + "Z" for e in expected]
    assert got == expected


@pytest.mark.parametrize(
    ("zone", "expression", "start", "expected"),
    [
        # A local 03:00 in winter and in summer is a different UTC hour.
        ("Europe/Paris", "0 3 * * *", "2026-01-10T00:00:00Z", ["2026-01-10T02:00Z"]),
        ("Europe/Paris", "0 3 * * *", "2026-07-10T00:00:00Z", ["2026-07-10T01:00Z"]),
        ("America/New_York", "0 3 * * *", "2026-01-10T00:00:00Z", ["2026-01-10T08:00Z"]),
        ("America/New_York", "0 3 * * *", "2026-07-10T00:00:00Z", ["2026-07-10T07:00Z"]),
        ("Asia/Kolkata", "30 9 * * *", "2026-07-10T00:00:00Z", ["2026-07-10T04:00Z"]),
    ],
)
def test_next_fire_in_a_time_zone(
    zone: str, expression: str, start: str, expected: list[str]
) -> None:
    assert fires(expression, zone, start, len(expected)) == expected


# Spring forward: Paris 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z);
# New York 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z).
# Fall back: Paris 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z);
# New York 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z).
DST_CASES = [
    # A fixed 02:30 job on a spring-forward day: once, at 03:00 (first minute after the gap).
    (
        "Europe/Paris",
        "30 2 * * *",
        "2026-03-28T12:00:00Z",
        ["2026-03-29T01:00Z", "2026-03-30T00:30Z"],
    ),
    (
        "America/New_York",
        "30 2 * * *",
        "2026-03-07T12:00:00Z",
        ["2026-03-08T07:00Z", "2026-03-09T06:30Z"],
    ),
    # A fixed job in the repeated hour on a fall-back day: once, at the first occurrence.
    (
        "Europe/Paris",
        "30 2 * * *",
        "2026-10-24T12:00:00Z",
        ["2026-10-25T00:30Z", "2026-10-26T01:30Z"],
    ),
    (
        "America/New_York",
        "30 1 * * *",
        "2026-10-31T12:00:00Z",
        ["2026-11-01T05:30Z", "2026-11-02T06:30Z"],
    ),
    # Outside the transition hour nothing moves.
    (
        "Europe/Paris",
        "0 4 * * *",
        "2026-03-28T12:00:00Z",
        ["2026-03-29T02:00Z", "2026-03-30T02:00Z"],
    ),
    # An hourly job follows elapsed time: no 02:30 in the gap, both 02:30s when repeated.
    (
        "Europe/Paris",
        "30 * * * *",
        "2026-03-29T00:00:00Z",
        ["2026-03-29T00:30Z", "2026-03-29T01:30Z", "2026-03-29T02:30Z"],
    ),
    (
        "Europe/Paris",
        "30 * * * *",
        "2026-10-24T23:45:00Z",
        ["2026-10-25T00:30Z", "2026-10-25T01:30Z", "2026-10-25T02:30Z"],
    ),
    (
        "America/New_York",
        "*/30 * * * *",
        "2026-11-01T05:00:00Z",
        ["2026-11-01T05:30Z", "2026-11-01T06:00Z", "2026-11-01T06:30Z"],
    ),
]


@pytest.mark.parametrize(("zone", "expression", "start", "expected"), DST_CASES)
def test_dst_transitions(zone: str, expression: str, start: str, expected: list[str]) -> None:
    assert fires(expression, zone, start, len(expected)) == expected


@pytest.mark.parametrize("zone", ["Europe/Paris", "America/New_York"])
@pytest.mark.parametrize(
    ("day", "local_time"), [("spring", "02:30"), ("fall", "02:30"), ("fall", "01:30")]
)
def test_a_fixed_time_job_fires_exactly_once_on_a_transition_day(
    zone: str, day: str, local_time: str
) -> None:
    dates = {
        ("Europe/Paris", "spring"): "2026-03-29",
        ("Europe/Paris", "fall"): "2026-10-25",
        ("America/New_York", "spring"): "2026-03-08",
        ("America/New_York", "fall"): "2026-11-01",
    }
    hour, minute = local_time.split(":")
    schedule = CronSchedule(f"{int(minute)} {int(hour)} * * *", zone)
    start = utc(dates[zone, day] + "T00:00:00Z") - timedelta(hours=12)
    window = schedule.due(start, start + timedelta(hours=48))
    local_days = [
        f.astimezone(schedule.zone).date().isoformat()
        for f in _walk(schedule, start, start + timedelta(hours=48))
    ]
    assert local_days.count(dates[zone, day]) == 1
    assert window.count == len(local_days)


def _walk(schedule: CronSchedule, start: datetime, until: datetime) -> list[datetime]:
    out, moment = [], start
    while (moment := schedule.next_after(moment)) <= until:
        out.append(moment)
    return out


def test_fires_after_a_fall_back_baseline_never_go_back_in_time() -> None:
    # Baseline in the second pass of New York's repeated hour (01:10 EST = 06:10Z): the
    # 01:30 job already fired at its first occurrence (05:30Z) and must not fire again.
    schedule = CronSchedule("30 1 * * *", "America/New_York")
    assert schedule.next_after(utc("2026-11-01T06:10:00Z")) == utc("2026-11-02T06:30:00Z")


def test_due_counts_the_window_and_names_the_newest() -> None:
    schedule = CronSchedule("0 * * * *", "UTC")
    window = schedule.due(utc("2026-01-01T00:00:00Z"), utc("2026-01-01T05:30:00Z"))
    assert (window.count, window.oldest, window.newest, window.at_least) == (
        5,
        utc("2026-01-01T01:00:00Z"),
        utc("2026-01-01T05:00:00Z"),
        False,
    )
    assert window.describe() == "5 fires (2026-01-01T01:00:00Z to 2026-01-01T05:00:00Z)"
    empty = schedule.due(utc("2026-01-01T05:00:00Z"), utc("2026-01-01T05:59:59Z"))
    assert (empty.count, empty.newest) == (0, None)
    exact = schedule.due(utc("2026-01-01T05:00:00Z"), utc("2026-01-01T06:00:00Z"))
    assert (exact.count, exact.newest) == (1, utc("2026-01-01T06:00:00Z"))


def test_due_stops_counting_but_still_finds_the_newest() -> None:
    schedule = CronSchedule("* * * * *", "Europe/Paris")
    window = schedule.due(utc("2026-01-01T00:00:00Z"), utc("2026-03-01T12:34:56Z"))
    assert window.at_least and window.count == COUNT_LIMIT
    assert window.newest == utc("2026-03-01T12:34:00Z")
    assert window.describe().startswith(f"more than {COUNT_LIMIT} fires")


def test_due_newest_in_a_fall_back_window_is_its_last_real_fire() -> None:
    schedule = CronSchedule("*/30 * * * *", "America/New_York")
    window = schedule.due(utc("2026-10-01T00:00:00Z"), utc("2026-11-01T06:45:00Z"))
    assert window.at_least and window.newest == utc("2026-11-01T06:30:00Z")


@pytest.mark.parametrize(
    ("expression", "zone", "message"),
    [
        ("61 * * * *", "UTC", "invalid schedule"),
        ("* * *", "UTC", "invalid schedule"),
        ("0 0 * * *", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_input_is_a_cron_error(expression: str, zone: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        CronSchedule(expression, zone)
