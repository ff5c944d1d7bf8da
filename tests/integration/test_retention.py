"""Retention: prune options on thousands of runs, and each job's own history_limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_engine_docker import Harness, containers_of

from ringjobs import idlists
from ringjobs.engine.retention import HistoryKeeper
from ringjobs.models import HistoryLimit, JobSpec, RunStatus, Trigger
from ringjobs.store import Store
from ringjobs.store.schedules import ScheduleStore

NOW = datetime(2026, 6, 1, tzinfo=UTC)
JOBS = ("alpha", "beta", "gamma")
STATUSES = ("completed", "completed", "failed", "cancelled")
PER_JOB = 1000  # 3,000 runs


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def fill(store: Store, per_job: int = PER_JOB, active: int = 2) -> list[dict[str, Any]]:
    """Runs of three jobs, one finishing every hour going back in time, oldest first."""
    rows = []
    for i in range(per_job):
        for job in JOBS:
            finished = NOW - timedelta(hours=per_job - i)
            rows.append(
                {"job": job, "status": STATUSES[i % len(STATUSES)], "finished_at": stamp(finished)}
            )
    for job in JOBS:
        rows += [{"job": job, "status": "running", "finished_at": None}] * active
    job = JobSpec(namespace="ns", name="x", image="busybox")
    spec, spec_hash = job.canonical_json(), job.spec_hash()
    async with store._write() as db:
        insert = "INSERT INTO run_specs (hash, spec, uses) VALUES (?, ?, ?)"
        spec_id = (await db.execute_insert(insert, (spec_hash, spec, len(rows))))[0]
        await db.executemany(
            "INSERT INTO runs (namespace, job, revision, trigger, status, created_at, "
            "finished_at, spec_id) VALUES ('ns', :job, 1, 'manual', :status, :created, "
            ":finished_at, :spec_id)",
            [{**r, "created": r["finished_at"] or stamp(NOW), "spec_id": spec_id} for r in rows],
        )
        await db.executemany(
            "INSERT INTO log_lines (run_id, seq, attempt, stream, time, line) "
            "VALUES (?, 1, 1, 1, 0, 'a line')",
            [(i,) for i in range(1, len(rows) + 1)],
        )
    async with store._write() as db:
        found = await db.execute_fetchall("SELECT id, job, status, finished_at FROM runs")
    return [dict(r) for r in found]


@pytest.fixture(autouse=True)
def small_id_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids in blocks of 7 (ringjobs/idlists.py): each selection spans many blocks."""
    monkeypatch.setattr(idlists, "ID_BLOCK", 7)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    db = Store(tmp_path / "rj.db")
    await db.open()
    yield db
    await db.close()


async def prunable(store: Store, **options: Any) -> set[int]:
    found = await store.prunable_runs("ns", options.pop("include_active", False), **options)
    assert found.run_ids == sorted(found.run_ids)
    return set(found.run_ids)


def expected(
    runs: list[dict[str, Any]],
    keep_last: int = 0,
    statuses: tuple[str, ...] = ("completed", "failed", "cancelled"),
    older_than: datetime | None = None,
) -> set[int]:
    doomed = set()
    for job in JOBS:
        mine = sorted((r for r in runs if r["job"] == job and r["status"] in statuses),
                      key=lambda r: -r["id"])  # fmt: skip
        for run in mine[keep_last:]:
            if older_than is None or run["finished_at"] < stamp(older_than):
                doomed.add(run["id"])
    return doomed


async def test_keep_last_keeps_each_jobs_newest_finished_runs(store: Store) -> None:
    runs = await fill(store)
    got = await prunable(store, keep_last=10)
    assert got == expected(runs, keep_last=10)
    assert len(got) == 3 * (PER_JOB - 10)
    active = {r["id"] for r in runs if r["status"] == "running"}
    assert not got & active


async def test_status_filter_and_keep_last_rank_within_the_status(store: Store) -> None:
    runs = await fill(store)
    got = await prunable(store, statuses=["failed"], keep_last=3)
    assert got == expected(runs, keep_last=3, statuses=("failed",))
    assert {r["status"] for r in runs if r["id"] in got} == {"failed"}
    both = await prunable(store, statuses=["failed", "cancelled"])
    assert both == expected(runs, statuses=("failed", "cancelled"))


async def test_older_than_with_keep_last_keeps_both(store: Store) -> None:
    runs = await fill(store)
    cutoff = NOW - timedelta(hours=100)
    got = await prunable(store, older_than=cutoff, keep_last=200)
    # keep_last 200 reaches further back than 100 hours: it decides.
    assert got == expected(runs, keep_last=200, older_than=cutoff)
    assert len(got) == 3 * (PER_JOB - 200)
    got = await prunable(store, older_than=cutoff, keep_last=5)
    assert got == expected(runs, keep_last=5, older_than=cutoff)
    assert len(got) == 3 * (PER_JOB - 100)


async def test_older_than_alone_takes_the_finished_index_range(store: Store) -> None:
    runs = await fill(store)
    cutoff = NOW - timedelta(hours=100)
    got = await prunable(store, older_than=cutoff)  # prunable_runs_older_than
    assert got == expected(runs, older_than=cutoff)
    assert len(got) == 3 * (PER_JOB - 100)
    failed = await prunable(store, older_than=cutoff, statuses=["failed"])
    assert failed == expected(runs, statuses=("failed",), older_than=cutoff)


async def test_include_active_counts_active_runs_as_newest(store: Store) -> None:
    runs = await fill(store)
    got = await prunable(store, include_active=True, keep_last=2)
    active = {r["id"] for r in runs if r["status"] == "running"}
    assert not got & active  # the two active runs of each job are its newest two
    assert len(got) == 3 * PER_JOB


async def test_prune_of_thousands_deletes_in_batches_and_the_file_shrinks(store: Store) -> None:
    await fill(store)
    doomed = sorted(await prunable(store, keep_last=10))
    lines, _events = await store.delete_runs(doomed)
    assert lines == len(doomed)
    assert await prunable(store, keep_last=10) == set()
    assert len(await store.list_runs(namespace="ns", limit=1000)) == 3 * 10 + 3 * 2
    async with store._write() as db:
        [(free,)] = await db.execute_fetchall("PRAGMA freelist_count")
    assert free == 0  # the pages went back to the file system


async def test_excess_history_counts_succeeded_and_unsuccessful_apart(store: Store) -> None:
    runs = await fill(store, per_job=40, active=1)
    schedules = ScheduleStore(store)
    excess = await schedules.excess_history("ns", "alpha", HistoryLimit(succeeded=3, failed=2))
    alpha = sorted((r for r in runs if r["job"] == "alpha"), key=lambda r: -r["id"])
    completed = [r["id"] for r in alpha if r["status"] == "completed"]
    unsuccessful = [r["id"] for r in alpha if r["status"] in ("failed", "cancelled")]
    assert excess == sorted(completed[3:] + unsuccessful[2:])
    only_failed = await schedules.excess_history("ns", "alpha", HistoryLimit(failed=0))
    assert only_failed == sorted(unsuccessful)


async def test_history_keeper_trims_after_a_run_and_only_with_a_limit(store: Store) -> None:
    limited = JobSpec(
        namespace="ns", name="alpha", image="busybox", history_limit=HistoryLimit(succeeded=2)
    )
    unlimited = JobSpec(namespace="ns", name="beta", image="busybox")
    await store.apply([], [limited, unlimited], lambda _s, _a: False, None)
    await fill(store, per_job=12, active=0)
    removed: list[list[int]] = []

    async def remove(ids: list[int]) -> int:
        removed.append(ids)
        await store.delete_runs(ids)
        return len(ids)

    keeper = HistoryKeeper(store, remove)
    keeper.run_finished("ns", "alpha")
    keeper.run_finished("ns", "beta")
    keeper.run_finished("ns", "alpha")  # coalesced with the first
    await keeper.idle()
    left = await store.list_runs(namespace="ns", job="alpha", limit=100)
    assert sorted(r.status for r in left) == ["cancelled"] * 3 + ["completed"] * 2 + ["failed"] * 3
    assert len(removed) == 1
    assert len(await store.list_runs(namespace="ns", job="beta", limit=100)) == 12
    await keeper.stop()


async def test_status_values_are_bound_not_spliced(store: Store) -> None:
    runs = await fill(store, per_job=4, active=0)
    assert await prunable(store, statuses=["failed') OR 1=1 --"]) == set()
    assert await prunable(store, statuses=[RunStatus.FAILED]) == expected(
        runs, statuses=("failed",)
    )


# -- through the real engine and Docker -------------------------------------------------


@pytest.mark.docker
async def test_history_limit_applies_after_each_real_run(namespace: str, harness: Harness) -> None:
    ok = harness.spec("ok", ["true"], history_limit=HistoryLimit(succeeded=1, failed=1))
    bad = harness.spec("ok", ["false"], history_limit=HistoryLimit(succeeded=1, failed=1))
    await harness.store.apply([], [ok], lambda _s, _a: False, None)
    for spec in (ok, ok, bad, bad, ok):
        run_id = await harness.submit(spec)
        await harness.finished(run_id)
        await harness.engine.history.idle()
    left = await harness.store.list_runs(namespace=namespace)
    assert [r.status for r in left] == [RunStatus.COMPLETED, RunStatus.FAILED]
    assert left[0].id == run_id  # the newest of each kind stays
    assert containers_of(namespace) == []


@pytest.mark.docker
async def test_prune_keep_last_removes_older_runs_and_their_kept_containers(
    namespace: str, harness: Harness
) -> None:
    kept = harness.spec("kept", ["true"], keep_container_seconds=600)
    first = await harness.run(kept)
    second = await harness.run(kept)
    failed = await harness.run(harness.spec("other", ["false"]))
    assert len(containers_of(namespace)) == 2
    dry = await harness.engine.prune(namespace, False, True, keep_last=1)
    assert (dry.run_ids, dry.containers_removed) == ([first.id], 0)
    assert len(containers_of(namespace)) == 2
    only_failed = await harness.engine.prune(namespace, False, False, statuses=["failed"])
    assert only_failed.run_ids == [failed.id]
    result = await harness.engine.prune(namespace, False, False, keep_last=1)
    assert (result.run_ids, result.containers_removed) == ([first.id], 1)
    assert [r.id for r in await harness.store.list_runs(namespace=namespace)] == [second.id]
    assert len(containers_of(namespace)) == 1


@pytest.mark.parametrize(
    ("name", "params"),
    [
        (
            "prunable_runs",
            {"namespace": "n", "all": 0, "statuses": None, "keep_last": 3, "block": 8192},
        ),
        ("excess_history", {"namespace": "n", "job": "j", "succeeded": 1, "failed": 1}),
        ("last_scheduled_run", {"namespace": "n", "job": "j"}),
    ],
)
def test_retention_queries_search_the_job_index(name: str, params: dict[str, Any]) -> None:
    import sqlite3

    from ringjobs.store.queries import queries, schema

    with sqlite3.connect(":memory:") as db:
        db.executescript(schema())
        plan = " | ".join(
            row[3]
            for row in db.execute(
                "EXPLAIN QUERY PLAN " + queries()[name], {"older_than": None, **params}
            )
        )
    assert "SEARCH runs USING INDEX runs_by_job" in plan, plan
    assert "SCAN runs" not in plan, plan


@pytest.mark.parametrize(
    ("name", "params", "index"),
    [
        (
            "prunable_runs_older_than",
            {"namespace": "n", "older_than": "2026", "statuses": None, "block": 8192},
            "runs_by_finished",
        ),
        ("child_run_ids", {"ids": "[1, 2]"}, "runs_by_parent"),
    ],
)
def test_prune_selections_search_their_index(name: str, params: dict[str, Any], index: str) -> None:
    import sqlite3

    from ringjobs.store.queries import queries, schema

    with sqlite3.connect(":memory:") as db:
        db.executescript(schema())
        rows = db.execute("EXPLAIN QUERY PLAN " + queries()[name], params)
        plan = " | ".join(row[3] for row in rows)
    assert f"INDEX {index}" in plan, plan
    assert "SCAN runs" not in plan, plan


async def test_completions_go_with_their_runs_whatever_block_they_are_in(store: Store) -> None:
    job = JobSpec(namespace="ns", name="fan", image="busybox", completions=2)
    parents = []
    for _ in range(20):
        run_id = await store.create_run(job, 1, Trigger.MANUAL, None)
        parent = await store.get_run(run_id)
        assert parent is not None
        parents.append(parent)
    children = [await store.create_child_run(p, i, job) for p in parents[::3] for i in (0, 1)]
    chosen = sorted([p.id for p in parents[::3]] + [parents[1].id])  # 8: blocks of 7 and 1
    got = await store.with_children(chosen)
    assert got == sorted(chosen + children)
    assert await store.with_children([parents[2].id]) == [parents[2].id]
