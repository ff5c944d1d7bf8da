"""Schedule bookkeeping in SQLite: handled fires, `job suspend|resume`, history limits.

Apart from store.py so the scheduler's SQL stays in one place; it shares the Store's
single writer and its reader (one transaction per call, like every other write).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiosqlite

from ringjobs.exceptions import Conflict
from ringjobs.models import HistoryLimit, JobSpec, format_time, parse_time, utcnow
from ringjobs.store.queries import queries

if TYPE_CHECKING:
    from ringjobs.store.store import Store

FIRES_KEPT_PER_JOB = 100  # enough to see recent skips and misses; the table stays small


class FireAlreadyHandled(Conflict):
    """This fire of this job already started a run (or was skipped or reported missed)."""


@dataclass(frozen=True)
class ScheduledFire:
    """One fire time of a job's schedule, with what to say about it on the run."""

    fire_at: datetime
    message: str


@dataclass(frozen=True)
class FireRecord:
    """A handled fire as stored: outcome `started`, `skipped` or `missed`."""

    namespace: str
    job: str
    fire_at: str
    outcome: str
    run_id: int | None
    message: str
    created_at: str

    def to_api(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "job": self.job,
            "fire_at": self.fire_at,
            "outcome": self.outcome,
            "run_id": self.run_id,
            "message": self.message,
            "recorded_at": self.created_at,
        }


@dataclass(frozen=True)
class ScheduleState:
    """What `job suspend|resume` last said about a job."""

    suspended: bool
    changed_at: datetime


JobKey = tuple[str, str]


def _q(name: str) -> str:
    return queries()[name]


def claim_fire(conn: sqlite3.Connection, spec: JobSpec, fire: ScheduledFire) -> None:
    """Inside the run's transaction: take the fire's key, or raise FireAlreadyHandled."""
    key = {"namespace": spec.namespace, "job": spec.name}
    if conn.execute(_q("claim_fire"), _fire_params(key, fire, "started", None)).rowcount != 1:
        raise FireAlreadyHandled(
            f"the fire of {spec.key} at {format_time(fire.fire_at)} was already handled"
        )
    conn.execute(_q("trim_fires"), {**key, "keep": FIRES_KEPT_PER_JOB})


def link_fire(conn: sqlite3.Connection, spec: JobSpec, fire: ScheduledFire, run_id: int) -> None:
    """Inside the run's transaction: the claimed fire names the run it started."""
    key = {"namespace": spec.namespace, "job": spec.name, "fire_at": format_time(fire.fire_at)}
    conn.execute(_q("link_fire"), {"run_id": run_id, **key})


def _fire_params(
    key: dict[str, str], fire: ScheduledFire, outcome: str, run_id: int | None
) -> dict[str, Any]:
    return {
        **key,
        "fire_at": format_time(fire.fire_at),
        "outcome": outcome,
        "run_id": run_id,
        "message": fire.message,
        "now": format_time(utcnow()),
    }


async def _insert_fire(
    db: aiosqlite.Connection,
    namespace: str,
    job: str,
    fire: ScheduledFire,
    outcome: str,
    run_id: int | None,
) -> bool:
    key = {"namespace": namespace, "job": job}
    cur = await db.execute(_q("claim_fire"), _fire_params(key, fire, outcome, run_id))
    if cur.rowcount != 1:
        return False
    await db.execute(_q("trim_fires"), {**key, "keep": FIRES_KEPT_PER_JOB})
    return True


class ScheduleStore:
    """The scheduler's and retention's view of the database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def last_fires(self) -> dict[JobKey, datetime]:
        rows = await self.store._fetchall(_q("last_fires"), {})
        return {(r["namespace"], r["job"]): parse_time(r["fire_at"]) for r in rows}

    async def states(self) -> dict[JobKey, ScheduleState]:
        rows = await self.store._fetchall(_q("schedule_states"), {})
        return {
            (r["namespace"], r["job"]): ScheduleState(
                bool(r["suspended"]), parse_time(r["changed_at"])
            )
            for r in rows
        }

    async def record_fire(
        self, namespace: str, job: str, fire: ScheduledFire, outcome: str, run_id: int | None
    ) -> bool:
        """Store a fire that started no run; False if that fire was already handled."""
        async with self.store._write() as db:
            return await _insert_fire(db, namespace, job, fire, outcome, run_id)

    async def fires(self, namespace: str, job: str, limit: int = 20) -> list[FireRecord]:
        params = {"namespace": namespace, "job": job, "limit": limit}
        rows = await self.store._fetchall(_q("list_fires"), params)
        return [FireRecord(**dict(r)) for r in rows]

    async def set_suspended(self, namespace: str, job: str, suspended: bool) -> None:
        params = {"namespace": namespace, "job": job, "suspended": suspended}
        async with self.store._write() as db:
            await db.execute(_q("set_schedule_state"), {**params, "now": format_time(utcnow())})

    async def forget_deleted_jobs(self) -> None:
        async with self.store._write() as db:
            await db.execute(_q("forget_deleted_schedules"))
            await db.execute(_q("forget_deleted_fires"))

    async def excess_history(self, namespace: str, job: str, limit: HistoryLimit) -> list[int]:
        """Finished runs of the job beyond its history_limit, oldest first."""
        params = {
            "namespace": namespace,
            "job": job,
            "succeeded": limit.succeeded,
            "failed": limit.failed,
        }
        rows = await self.store._fetchall(_q("excess_history"), params)
        return [int(r[0]) for r in rows]

    async def last_scheduled_run(self, namespace: str, job: str) -> dict[str, Any] | None:
        params = {"namespace": namespace, "job": job}
        row = await self.store._fetchone(_q("last_scheduled_run"), params)
        return dict(row) if row else None
