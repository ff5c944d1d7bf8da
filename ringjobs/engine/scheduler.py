"""The scheduler: starts a run at each fire of a job's schedule (SPEC 9).

It sleeps until the earliest next fire (or until a job changes), never polls. Every
fire it handles is stored under a (namespace, job, fire time) key in the same
transaction as its run, so a fire never starts two runs, even across a restart.
What it must remember lives in the database; its in-memory table is a cache that is
rebuilt whenever jobs change.

Missed fires (the daemon was down, or very late): only the newest missed fire of a
job can start a run, and only within `starting_deadline` (default: on time, within
`ON_TIME`); otherwise a `missed` fire record says what was missed. A fire skipped by
`concurrency_policy: Forbid` is recorded as `skipped`, and as an event on the run
that was still active.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from ringjobs.cron import CronError, CronSchedule, DueFires, show_time
from ringjobs.exceptions import Conflict, NotFound
from ringjobs.models import JobSpec, Run, format_time, parse_time, utcnow
from ringjobs.store import Store
from ringjobs.store.schedules import (
    FireAlreadyHandled,
    ScheduledFire,
    ScheduleState,
    ScheduleStore,
)
from ringjobs.store.store import StoredJob

log = structlog.get_logger(__name__)

ON_TIME = timedelta(seconds=60)  # a fire this late is still on time without starting_deadline
MAX_SLEEP = 60.0  # re-read the wall clock at least this often (clock steps, host suspend)
_RETRY = 1.0  # after a store error


class Clock(Protocol):
    """Where the scheduler gets the time and sleeps; tests pass a clock they move."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        """Return after `seconds`, or as soon as `wake` is set."""


class SystemClock:
    def now(self) -> datetime:
        return utcnow()

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), max(seconds, 0.0))


JobKey = tuple[str, str]  # (namespace, job)
JobKeys = set[JobKey]  # named outside JobChanges, whose own `set` is the method


class JobChanges(asyncio.Event):
    """Wakes the scheduler, and says whose schedules to load again.

    An apply of one job used to make it load every job (their specs parsed, their cron
    expressions compiled) on the event loop: with 100 scheduled jobs and an apply every
    50 ms, that was the largest share of its busy time. set() alone still means every job.
    """

    def __init__(self) -> None:
        super().__init__()
        self._keys: JobKeys | None = set()  # None: every job

    def set(self) -> None:
        self._keys = None
        super().set()

    def note(self, keys: Iterable[JobKey]) -> None:
        """These jobs were applied, deleted, suspended or resumed."""
        if self._keys is not None:
            self._keys.update(keys)
        super().set()

    def take(self) -> JobKeys | None:
        """The jobs noted since the last take (None: every job); clears the event."""
        keys, self._keys = self._keys, set()
        self.clear()
        return keys


class RunStarter(Protocol):
    """What the scheduler needs from the engine."""

    store: Store
    jobs_changed: JobChanges

    async def start_scheduled_run(self, namespace: str, name: str, fire: ScheduledFire) -> Run: ...


@dataclass
class ScheduleEntry:
    """One job's schedule as the scheduler sees it."""

    spec: JobSpec
    cron: CronSchedule | None  # None: the stored expression is unusable (logged)
    suspended_by: str | None  # "manifest" | "job suspend" | None
    since: datetime  # every fire at or before this is handled (or not ours to run)
    next_at: datetime | None  # None when suspended

    @property
    def key(self) -> tuple[str, str]:
        return self.spec.namespace, self.spec.name

    def to_api(self) -> dict[str, Any]:
        next_at = self.next_at
        return {
            "namespace": self.spec.namespace,
            "job": self.spec.name,
            "schedule": self.spec.schedule,
            "time_zone": self.spec.time_zone,
            "suspended": self.suspended_by is not None,
            "suspended_by": self.suspended_by,
            "starting_deadline_seconds": self.spec.starting_deadline_seconds,
            "concurrency_policy": self.spec.concurrency_policy,
            "next_run_at": format_time(next_at) if next_at else None,
            "next_run_at_local": (
                next_at.astimezone(self.cron.zone).isoformat() if next_at and self.cron else None
            ),
        }


async def load_schedules(store: Store, namespace: str | None = None) -> list[ScheduleEntry]:
    """Every scheduled job with its state, as stored; the API lists the same view."""
    schedules = ScheduleStore(store)
    jobs = await store.list_jobs(namespace)
    last_fires = await schedules.last_fires()
    states = await schedules.states()
    entries = [_job_entry(job, last_fires, states) for job in jobs]
    return [entry for entry in entries if entry is not None]


def _job_entry(
    job: StoredJob, last_fires: dict[JobKey, datetime], states: dict[JobKey, ScheduleState]
) -> ScheduleEntry | None:
    """The job's schedule, counted from its last fire or change; None without one."""
    if not job.spec.schedule:
        return None
    key = (job.spec.namespace, job.spec.name)
    since = max(
        parse_time(job.updated_at),
        last_fires.get(key, parse_time(job.updated_at)),
        _state_time(states.get(key), job.updated_at),
    )
    return _entry(job.spec, since, states.get(key))


async def schedule_rows(store: Store, namespace: str | None = None) -> list[dict[str, Any]]:
    """`schedule list`: each schedule, its next fire, its last scheduled run and fire."""
    schedules = ScheduleStore(store)
    rows = []
    for entry in await load_schedules(store, namespace):
        last = await schedules.last_scheduled_run(*entry.key)
        fires = await schedules.fires(*entry.key, limit=1)
        rows.append(
            {
                **entry.to_api(),
                "last_run_id": last["id"] if last else None,
                "last_status": last["status"] if last else None,
                "last_run_at": last["created_at"] if last else None,
                "last_fire": fires[0].to_api() if fires else None,
            }
        )
    return rows


def _state_time(state: ScheduleState | None, default: str) -> datetime:
    return state.changed_at if state else parse_time(default)


def _entry(spec: JobSpec, since: datetime, state: ScheduleState | None) -> ScheduleEntry:
    suspended_by = "manifest" if spec.suspend else None
    if suspended_by is None and state is not None and state.suspended:
        suspended_by = "job suspend"
    try:
        cron: CronSchedule | None = CronSchedule(spec.schedule or "", spec.time_zone)
    except CronError as exc:  # validated at apply; only a stored oddity gets here
        log.error("schedule_unusable", job=spec.key, error=str(exc))
        cron = None
    next_at = cron.next_after(since) if cron and suspended_by is None else None
    return ScheduleEntry(spec, cron, suspended_by, since, next_at)


class Scheduler:
    """Fires scheduled jobs through the engine; one task, started and stopped by the daemon."""

    def __init__(self, engine: RunStarter, clock: Clock | None = None) -> None:
        self.engine = engine
        self.store = engine.store
        self.schedules = ScheduleStore(engine.store)
        self.clock: Clock = clock or SystemClock()
        self.entries: dict[tuple[str, str], ScheduleEntry] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.engine.jobs_changed.set()  # load on the first turn
        self._task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                delay = await self._turn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler_error")  # e.g. the database is busy: try again
                delay = _RETRY
            await self.clock.sleep(delay, self.engine.jobs_changed)

    async def _turn(self) -> float:
        """Reload if jobs changed, handle every due fire; return how long to sleep."""
        if self.engine.jobs_changed.is_set():
            changed = self.engine.jobs_changed.take()  # before reading: none is lost
            if changed is None:
                await self.schedules.forget_deleted_jobs()
                self.entries = {e.key: e for e in await load_schedules(self.store)}
            else:
                await self._reload(changed)
        now = self.clock.now()
        failed = False
        for entry in list(self.entries.values()):
            if entry.next_at is not None and entry.next_at <= now and entry.cron is not None:
                try:
                    await self._handle_due(entry, entry.cron, now)
                except Exception:  # one job's trouble must not hold back the others
                    log.exception("schedule_fire_failed", job=entry.spec.key)
                    failed = True  # its fire is still due: try again shortly
        upcoming = [e.next_at for e in self.entries.values() if e.next_at is not None]
        if failed or not upcoming:
            return _RETRY if failed else MAX_SLEEP
        return min(max((min(upcoming) - now).total_seconds(), 0.0), MAX_SLEEP)

    async def _reload(self, keys: set[JobKey]) -> None:
        """Load these jobs' schedules again, as load_schedules would."""
        jobs = {key: await self.store.get_job(*key) for key in sorted(keys)}
        if any(job is None for job in jobs.values()):
            await self.schedules.forget_deleted_jobs()
        last_fires = await self.schedules.last_fires()
        states = await self.schedules.states()
        for key, job in jobs.items():
            entry = _job_entry(job, last_fires, states) if job is not None else None
            if entry is None:
                self.entries.pop(key, None)
            else:
                self.entries[key] = entry

    async def _handle_due(self, entry: ScheduleEntry, cron: CronSchedule, now: datetime) -> None:
        window = cron.due(entry.since, now)
        if window.newest is not None:
            await self._handle_fire(entry, window, window.newest, now)
            entry.since = window.newest
        entry.next_at = cron.next_after(max(entry.since, now))

    async def _handle_fire(
        self, entry: ScheduleEntry, window: DueFires, fire_at: datetime, now: datetime
    ) -> None:
        spec = entry.spec
        lateness = now - fire_at
        deadline = spec.starting_deadline_seconds
        allowed = timedelta(seconds=deadline) if deadline is not None else ON_TIME
        if lateness > allowed:
            await self._missed(entry, window, lateness)
            return
        message = f"schedule {spec.schedule!r} ({spec.time_zone}) fired at {show_time(fire_at)}"
        if window.count > 1 or lateness > ON_TIME:
            message += (
                f"; catch-up run for {window.describe()} missed, "
                f"{_human(lateness)} late, within starting_deadline"
            )
        await self._start(entry, ScheduledFire(fire_at, message))

    async def _start(self, entry: ScheduleEntry, fire: ScheduledFire) -> None:
        namespace, name = entry.key
        try:
            run = await self.engine.start_scheduled_run(namespace, name, fire)
        except FireAlreadyHandled:
            return  # a previous life of the daemon handled it
        except NotFound:
            self.engine.jobs_changed.set()  # deleted meanwhile: reload
            return
        except Conflict as exc:  # Forbid, and a run is still active
            await self._skipped(entry, fire, str(exc))
            return
        log.info("schedule_fired", job=entry.spec.key, run_id=run.id, fire_at=fire.fire_at)

    async def _skipped(self, entry: ScheduleEntry, fire: ScheduledFire, why: str) -> None:
        namespace, name = entry.key
        active = await self.store.active_run_ids(namespace, name)
        blocking = f"run {active[0]} is still active" if active else why
        message = (
            f"schedule fire at {show_time(fire.fire_at)} skipped: {blocking} and "
            f"concurrency_policy is {entry.spec.concurrency_policy}"
        )
        skipped = ScheduledFire(fire.fire_at, message)
        if not await self.schedules.record_fire(namespace, name, skipped, "skipped", None):
            return
        log.warning("schedule_skipped", job=entry.spec.key, fire_at=fire.fire_at, why=blocking)
        if active:
            await self.store.add_event(
                active[0], "schedule_skipped", message, {"fire_at": format_time(fire.fire_at)}
            )

    async def _missed(self, entry: ScheduleEntry, window: DueFires, lateness: timedelta) -> None:
        namespace, name = entry.key
        deadline = entry.spec.starting_deadline_seconds
        limit = (
            f"beyond starting_deadline {_human(timedelta(seconds=deadline))}"
            if deadline is not None
            else "and the job has no starting_deadline (set one to catch up once)"
        )
        message = (
            f"missed {window.describe()} (the daemon was not running); the newest is "
            f"{_human(lateness)} old, {limit}"
        )
        assert window.newest is not None
        fire = ScheduledFire(window.newest, message)
        if await self.schedules.record_fire(namespace, name, fire, "missed", None):
            log.warning("schedule_missed", job=entry.spec.key, message=message)


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}{_rest(seconds % size, size)}"
    return f"{seconds}s"


def _rest(remainder: int, size: int) -> str:
    smaller = {86400: ("h", 3600), 3600: ("m", 60), 60: ("s", 1)}[size]
    value = remainder // smaller[1]
    return f"{value}{smaller[0]}" if value else ""
