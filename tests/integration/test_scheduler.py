"""The scheduler on a real store with a clock the test moves; one test on real Docker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_engine_docker import IMAGE, Harness

from ringjobs.engine.scheduler import MAX_SLEEP, JobChanges, Scheduler, load_schedules
from ringjobs.exceptions import StoreUnavailable
from ringjobs.models import JobSpec, Run, RunStatus, Trigger
from ringjobs.store import Store
from ringjobs.store.schedules import FireAlreadyHandled, ScheduledFire, ScheduleStore

T0 = datetime(2026, 3, 2, 10, 0, 30, tzinfo=UTC)


class FakeClock:
    """Time stands still until the test moves it; `asleep` is set while the scheduler sleeps."""

    def __init__(self, now: datetime) -> None:
        self.current = now
        self.sleeps: list[float] = []
        self.asleep = asyncio.Event()
        self._moved = asyncio.Event()

    def now(self) -> datetime:
        return self.current

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        self.sleeps.append(seconds)
        self._moved.clear()
        self.asleep.set()
        waiters = [asyncio.ensure_future(e.wait()) for e in (wake, self._moved)]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            self.asleep.clear()

    async def move_to(self, moment: datetime) -> None:
        """Set the time, then wait until the scheduler has acted on it and sleeps again."""
        self.current = moment
        self.asleep.clear()
        self._moved.set()
        await asyncio.wait_for(self.asleep.wait(), 10)


class StoreStarter:
    """The engine's run-creation path (Store.create_run with the fire), without Docker."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.jobs_changed = JobChanges()

    async def start_scheduled_run(self, namespace: str, name: str, fire: ScheduledFire) -> Run:
        job = await self.store.get_job(namespace, name)
        assert job is not None
        run_id = await self.store.create_run(
            job.spec,
            job.revision,
            Trigger.SCHEDULE,
            None,
            refuse_if_active=job.spec.concurrency_policy == "Forbid",
            fire=fire,
        )
        run = await self.store.get_run(run_id)
        assert run is not None
        return run


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    db = Store(tmp_path / "rj.db")
    await db.open()
    yield db
    await db.close()


class World:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = FakeClock(T0)
        self.starter = StoreStarter(store)
        self.scheduler: Scheduler | None = None

    async def apply(self, name: str = "job", **fields: Any) -> None:
        spec = JobSpec(namespace="ns", name=name, image="busybox", **fields)
        await self.store.apply([], [spec], lambda _s, _a: False, None)
        await _backdate(self.store, name, self.clock.now())
        self.starter.jobs_changed.note([("ns", name)])  # as the engine's apply does

    async def start(self) -> Scheduler:
        self.scheduler = Scheduler(self.starter, self.clock)
        await self.scheduler.start()
        await asyncio.wait_for(self.clock.asleep.wait(), 10)
        return self.scheduler

    async def restart(self, at: datetime) -> Scheduler:
        """The daemon goes down, time passes, it comes back."""
        assert self.scheduler is not None
        await self.scheduler.stop()
        self.clock.current = at
        self.clock.asleep.clear()
        return await self.start()

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()

    async def runs(self, name: str = "job") -> list[Run]:
        return sorted(await self.store.list_runs(namespace="ns", job=name), key=lambda r: r.id)

    async def fires(self, name: str = "job") -> list[tuple[str, str, int | None]]:
        records = await ScheduleStore(self.store).fires("ns", name)
        return [(f.fire_at, f.outcome, f.run_id) for f in reversed(records)]

    async def finish(self, run: Run) -> None:
        await self.store.update_run(run.id, status=RunStatus.COMPLETED)


async def _backdate(store: Store, name: str, moment: datetime, namespace: str = "ns") -> None:
    """Jobs are stamped with the wall clock when applied; the test's clock is elsewhere."""
    async with store._write() as db:
        await db.execute(
            "UPDATE jobs SET updated_at = ? WHERE namespace = ? AND name = ?",
            (moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), namespace, name),
        )


@pytest.fixture
async def world(store: Store) -> AsyncIterator[World]:
    w = World(store)
    yield w
    await w.stop()


def z(text: str) -> str:
    return text + ".000000Z"


async def test_sleeps_until_the_fire_then_starts_one_scheduled_run(world: World) -> None:
    await world.apply(schedule="*/5 * * * *")
    await world.start()
    assert world.clock.sleeps[-1] == pytest.approx(min(270.0, MAX_SLEEP))
    assert await world.runs() == []

    await world.clock.move_to(datetime(2026, 3, 2, 10, 5, 0, 200_000, tzinfo=UTC))
    [run] = await world.runs()
    assert run.trigger is Trigger.SCHEDULE and run.status is RunStatus.PENDING
    events = await world.store.list_events(run.id)
    assert [e.type for e in events] == ["created", "scheduled"]
    assert "fired at 2026-03-02T10:05:00" in events[1].message
    assert await world.fires() == [(z("2026-03-02T10:05:00"), "started", run.id)]


async def test_no_busy_polling_sleep_is_the_time_to_the_next_fire(world: World) -> None:
    await world.apply(schedule="0 * * * *")
    await world.apply("yearly", schedule="@yearly")
    await world.start()
    # The hourly job's next fire is 59.5 min away: the scheduler sleeps the cap, once.
    assert world.clock.sleeps == [MAX_SLEEP]
    await world.clock.move_to(datetime(2026, 3, 2, 10, 59, 30, tzinfo=UTC))
    assert world.clock.sleeps[-1] == pytest.approx(30.0)
    assert await world.runs() == []


async def test_a_fire_never_starts_two_runs_even_across_a_restart(world: World) -> None:
    await world.apply(schedule="*/5 * * * *", concurrency_policy="Allow")
    await world.start()
    await world.clock.move_to(datetime(2026, 3, 2, 10, 5, 1, tzinfo=UTC))
    await world.restart(datetime(2026, 3, 2, 10, 5, 2, tzinfo=UTC))
    assert len(await world.runs()) == 1
    job = await world.store.get_job("ns", "job")
    assert job is not None
    fire = ScheduledFire(datetime(2026, 3, 2, 10, 5, tzinfo=UTC), "again")
    with pytest.raises(FireAlreadyHandled):
        await world.store.create_run(job.spec, 1, Trigger.SCHEDULE, None, fire=fire)
    assert len(await world.runs()) == 1


async def test_forbid_skips_a_fire_and_says_so_on_the_active_run(world: World) -> None:
    await world.apply(schedule="*/5 * * * *")
    await world.start()
    await world.clock.move_to(datetime(2026, 3, 2, 10, 5, 1, tzinfo=UTC))
    [first] = await world.runs()
    await world.clock.move_to(datetime(2026, 3, 2, 10, 10, 1, tzinfo=UTC))
    assert [r.id for r in await world.runs()] == [first.id]
    assert await world.fires() == [
        (z("2026-03-02T10:05:00"), "started", first.id),
        (z("2026-03-02T10:10:00"), "skipped", None),
    ]
    skipped = [e for e in await world.store.list_events(first.id) if e.type == "schedule_skipped"]
    assert len(skipped) == 1
    assert f"run {first.id} is still active" in skipped[0].message
    assert "Forbid" in skipped[0].message

    await world.finish(first)
    await world.clock.move_to(datetime(2026, 3, 2, 10, 15, 1, tzinfo=UTC))
    assert len(await world.runs()) == 2


async def test_allow_and_queue_start_a_run_at_every_fire(world: World) -> None:
    await world.apply("allow", schedule="*/5 * * * *", concurrency_policy="Allow")
    await world.apply("queue", schedule="*/5 * * * *", concurrency_policy="Queue")
    await world.start()
    await world.clock.move_to(datetime(2026, 3, 2, 10, 5, 1, tzinfo=UTC))
    await world.clock.move_to(datetime(2026, 3, 2, 10, 10, 1, tzinfo=UTC))
    assert len(await world.runs("allow")) == 2
    assert len(await world.runs("queue")) == 2


async def test_missed_fires_within_starting_deadline_get_one_catch_up_run(world: World) -> None:
    await world.apply(schedule="0 * * * *", starting_deadline_seconds=7200)
    await world.start()
    # Down from 10:00:30 to 13:20: the 11:00, 12:00 and 13:00 fires were missed.
    await world.restart(datetime(2026, 3, 2, 13, 20, tzinfo=UTC))
    [run] = await world.runs()
    assert run.trigger is Trigger.SCHEDULE
    assert await world.fires() == [(z("2026-03-02T13:00:00"), "started", run.id)]
    [note] = [e for e in await world.store.list_events(run.id) if e.type == "scheduled"]
    assert "catch-up run for 3 fires" in note.message and "20m late" in note.message
    # Another restart catches up nothing more.
    await world.restart(datetime(2026, 3, 2, 13, 30, tzinfo=UTC))
    assert len(await world.runs()) == 1


async def test_missed_fires_beyond_the_deadline_are_recorded_not_run(world: World) -> None:
    await world.apply("late", schedule="0 * * * *", starting_deadline_seconds=600)
    await world.apply("nodeadline", schedule="0 * * * *")
    await world.start()
    await world.restart(datetime(2026, 3, 2, 13, 20, tzinfo=UTC))
    for name in ("late", "nodeadline"):
        assert await world.runs(name) == []
        assert await world.fires(name) == [(z("2026-03-02T13:00:00"), "missed", None)]
    [late] = await ScheduleStore(world.store).fires("ns", "late")
    assert "missed 3 fires (2026-03-02T11:00:00Z to 2026-03-02T13:00:00Z)" in late.message
    assert "beyond starting_deadline 10m" in late.message
    [other] = await ScheduleStore(world.store).fires("ns", "nodeadline")
    assert "no starting_deadline" in other.message
    # The next fire runs normally.
    await world.clock.move_to(datetime(2026, 3, 2, 14, 0, 2, tzinfo=UTC))
    assert len(await world.runs("late")) == 1


async def test_suspend_stops_firing_and_resume_does_not_catch_up(world: World) -> None:
    await world.apply(
        schedule="*/5 * * * *", concurrency_policy="Allow", starting_deadline_seconds=3600
    )
    await world.start()
    await world.clock.move_to(datetime(2026, 3, 2, 10, 5, 1, tzinfo=UTC))
    schedules = ScheduleStore(world.store)
    await schedules.set_suspended("ns", "job", True)
    world.starter.jobs_changed.note([("ns", "job")])
    await world.clock.move_to(datetime(2026, 3, 2, 10, 20, 1, tzinfo=UTC))
    assert len(await world.runs()) == 1
    [entry] = await load_schedules(world.store)
    assert (entry.suspended_by, entry.next_at) == ("job suspend", None)

    await schedules.set_suspended("ns", "job", False)
    await _set_state_time(world.store, world.clock.now())
    world.starter.jobs_changed.note([("ns", "job")])
    await world.clock.move_to(datetime(2026, 3, 2, 10, 20, 2, tzinfo=UTC))
    assert len(await world.runs()) == 1  # the fires while suspended are not caught up
    await world.clock.move_to(datetime(2026, 3, 2, 10, 25, 1, tzinfo=UTC))
    assert len(await world.runs()) == 2


async def _set_state_time(store: Store, moment: datetime) -> None:
    async with store._write() as db:
        await db.execute(
            "UPDATE schedule_state SET changed_at = ?",
            (moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),),
        )


async def test_manifest_suspend_never_fires(world: World) -> None:
    await world.apply(schedule="*/5 * * * *", suspend=True)
    await world.start()
    await world.clock.move_to(datetime(2026, 3, 2, 10, 30, 1, tzinfo=UTC))
    assert await world.runs() == []
    [entry] = await load_schedules(world.store)
    assert entry.to_api()["suspended_by"] == "manifest"


async def test_an_applied_job_wakes_the_scheduler(world: World) -> None:
    await world.start()
    assert world.clock.sleeps == [MAX_SLEEP]  # nothing scheduled
    world.clock.asleep.clear()
    await world.apply(schedule="1 10 * * *")
    await asyncio.wait_for(world.clock.asleep.wait(), 10)
    assert world.clock.sleeps[-1] == pytest.approx(30.0)


async def test_a_deleted_job_stops_firing_and_forgets_its_state(world: World) -> None:
    await world.apply(schedule="*/5 * * * *")
    await ScheduleStore(world.store).set_suspended("ns", "job", True)
    await world.start()
    await world.store.delete_job("ns", "job")
    world.starter.jobs_changed.note([("ns", "job")])
    await world.clock.move_to(datetime(2026, 3, 2, 10, 5, 1, tzinfo=UTC))
    assert await world.runs() == [] and world.scheduler and world.scheduler.entries == {}
    assert await ScheduleStore(world.store).states() == {}


async def test_a_daily_02_30_paris_job_runs_once_on_spring_forward_day(world: World) -> None:
    world.clock.current = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    await world.apply(schedule="30 2 * * *", time_zone="Europe/Paris", concurrency_policy="Allow")
    await world.start()
    moment = world.clock.current
    while moment < datetime(2026, 3, 30, 12, 0, tzinfo=UTC):
        moment += timedelta(minutes=10)
        await world.clock.move_to(moment)
    fired = [f for f, outcome, _ in await world.fires() if outcome == "started"]
    # 03:00 CEST on the 29th (no 02:30 that day), then 02:30 CEST on the 30th.
    assert fired == [z("2026-03-29T01:00:00"), z("2026-03-30T00:30:00")]


# -- through the real engine and Docker -------------------------------------------------


@pytest.mark.docker
async def test_a_fire_runs_the_job_in_docker_with_trigger_schedule(
    namespace: str, harness: Harness
) -> None:
    clock = FakeClock(T0)
    scheduler = Scheduler(harness.engine, clock)
    try:
        spec = harness.spec("tick", ["sh", "-c", "echo tick"], schedule="*/5 * * * *")
        assert spec.image == IMAGE
        await harness.store.apply([], [spec], lambda _s, _a: False, None)
        await _backdate(harness.store, "tick", T0, namespace)
        await scheduler.start()
        await asyncio.wait_for(clock.asleep.wait(), 10)
        await clock.move_to(datetime(2026, 3, 2, 10, 5, 0, tzinfo=UTC))
        [run] = await harness.store.list_runs(namespace=namespace)
        done = await harness.finished(run.id)
        assert (done.trigger, done.status) == (Trigger.SCHEDULE, RunStatus.COMPLETED)
        assert await harness.lines(run.id) == ["tick"]
        assert "scheduled" in await harness.event_types(run.id)
    finally:
        await scheduler.stop()


async def test_a_fire_that_hits_a_store_error_is_retried_and_others_still_fire(
    world: World,
) -> None:
    await world.apply("flaky", schedule="*/5 * * * *")
    await world.apply("steady", schedule="*/5 * * * *")
    real = world.starter.start_scheduled_run
    failures = []

    async def flaky_once(namespace: str, name: str, fire: ScheduledFire) -> Run:
        if name == "flaky" and not failures:
            failures.append(fire.fire_at)
            raise StoreUnavailable("cannot write the database: disk I/O error")
        return await real(namespace, name, fire)

    world.starter.start_scheduled_run = flaky_once  # type: ignore[method-assign]
    await world.start()
    await world.clock.move_to(datetime(2026, 3, 2, 10, 5, 0, tzinfo=UTC))
    assert world.clock.sleeps[-1] == 1.0  # retry soon, not at the next fire
    assert len(await world.runs("steady")) == 1 and await world.runs("flaky") == []
    await world.clock.move_to(datetime(2026, 3, 2, 10, 5, 1, tzinfo=UTC))
    assert [f for f, _, _ in await world.fires("flaky")] == [z("2026-03-02T10:05:00")]
    assert len(await world.runs("flaky")) == 1 and len(await world.runs("steady")) == 1


async def test_a_change_reloads_that_jobs_schedule_only(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await world.apply("a", schedule="*/5 * * * *")
    await world.apply("b", schedule="*/5 * * * *")
    scheduler = await world.start()
    first_a = scheduler.entries[("ns", "a")]

    async def no_full_reload(_namespace: str | None) -> Any:
        raise AssertionError("every job's schedule was loaded again")

    monkeypatch.setattr(world.store, "list_jobs", no_full_reload)
    world.clock.asleep.clear()
    await world.apply("b", schedule="1 10 * * *")
    await asyncio.wait_for(world.clock.asleep.wait(), 10)
    assert scheduler.entries[("ns", "a")] is first_a
    assert scheduler.entries[("ns", "b")].spec.schedule == "1 10 * * *"
    # A job that lost its schedule, and one noted but never applied: no entries.
    world.clock.asleep.clear()
    await world.apply("a")
    world.starter.jobs_changed.note([("ns", "nothing")])
    await asyncio.wait_for(world.clock.asleep.wait(), 10)
    assert set(scheduler.entries) == {("ns", "b")}
