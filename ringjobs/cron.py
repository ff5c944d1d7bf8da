"""Cron fire times in a job's time zone: pure code, no I/O (SPEC 9).

cronsim does the calendar work. Its DST rule is Debian cron's, which we keep:

- An expression with a fixed minute *and* hour (`30 2 * * *`) follows the wall clock.
  On a spring-forward day its missing time fires once, at the first minute after the
  gap (02:30 -> 03:00); on a fall-back day its repeated time fires once, at the first
  occurrence (02:30 summer time).
- Any other expression (`*/15 * * * *`, `30 * * * *`, `@hourly`) follows elapsed time:
  nothing fires in the missing hour, and the repeated hour fires in both passes.

Every time handed out is an aware UTC datetime.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

# cronsim has no macros; these are Vixie cron's meanings.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# Counting missed fires stops here: past it, only the newest one matters.
COUNT_LIMIT = 1000


class CronError(ValueError):
    """An expression or time zone cronsim cannot use."""


@dataclass(frozen=True)
class DueFires:
    """The fires in a window (after, until]: how many, the oldest and the newest."""

    count: int
    oldest: datetime | None
    newest: datetime | None
    at_least: bool = False  # count stopped at COUNT_LIMIT

    def describe(self) -> str:
        if self.count == 0 or self.oldest is None or self.newest is None:
            return "no fire"
        if self.count == 1:
            return f"1 fire ({show_time(self.newest)})"
        more = "more than " if self.at_least else ""
        return f"{more}{self.count} fires ({show_time(self.oldest)} to {show_time(self.newest)})"


class CronSchedule:
    """A validated cron expression in an IANA time zone."""

    def __init__(self, expression: str, time_zone: str = "UTC") -> None:
        self.expression = expression
        self.time_zone = time_zone
        self._fields = MACROS.get(expression.strip().lower(), expression)
        try:
            self.zone = ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise CronError(f"unknown time zone {time_zone!r} (use an IANA name)") from exc
        try:
            CronSim(self._fields, datetime.now(self.zone))
        except CronSimError as exc:
            raise CronError(f"invalid schedule {expression!r}: {exc}") from exc

    def next_after(self, moment: datetime) -> datetime:
        """The first fire strictly after `moment`."""
        limit = moment.astimezone(UTC)
        for fire in CronSim(self._fields, moment.astimezone(self.zone)):
            # Compare in UTC: a wall time in the repeated hour can come out before `moment`.
            if (found := fire.astimezone(UTC)) > limit:
                return found
        raise CronError(f"schedule {self.expression!r} never fires")  # pragma: no cover

    def due(self, after: datetime, until: datetime) -> DueFires:
        """The fires in (after, until], counted up to COUNT_LIMIT."""
        first = self.next_after(after)
        if first > until:
            return DueFires(0, None, None)
        count, newest = 1, first
        while count < COUNT_LIMIT:
            following = self.next_after(newest)
            if following > until:
                return DueFires(count, first, newest)
            count, newest = count + 1, following
        return DueFires(count, first, self._newest_until(until), at_least=True)

    def _newest_until(self, until: datetime) -> datetime:
        # cronsim's reverse walk starts one second before its start: start a second later.
        start = (until + timedelta(seconds=1)).astimezone(self.zone)
        limit = until.astimezone(UTC)
        for fire in CronSim(self._fields, start, reverse=True):
            if (found := fire.astimezone(UTC)) <= limit:
                return found
        raise CronError(f"schedule {self.expression!r} never fired")  # pragma: no cover


def show_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
