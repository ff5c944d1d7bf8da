"""The Store on real SQLite files: schema, pragmas, apply, runs, logs, prune, failures."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

import ringjobs.store.store as store_module
from ringjobs.client import printable
from ringjobs.exceptions import Conflict, StoreUnavailable
from ringjobs.mediatypes import FRAME_STREAMS
from ringjobs.models import JobSpec, NamespaceSpec, RunStatus, Trigger, utcnow
from ringjobs.store import Store
from ringjobs.store.queries import migrations, queries, schema
from ringjobs.store.store import LogPage, PruneCandidates, RequestAudit

SQL_DIR = Path(store_module.__file__).parent / "sql"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    db = Store(tmp_path / "ringjobs.db")
    await db.open()
    yield db
    await db.close()


@pytest.fixture
def created_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[aiosqlite.Connection]]:
    """Every aiosqlite connection the store opens, so a test can see leaks and close them."""
    created: list[aiosqlite.Connection] = []
    real_connect = aiosqlite.connect

    def recording_connect(*args: Any, **kwargs: Any) -> aiosqlite.Connection:
        connection = real_connect(*args, **kwargs)
        created.append(connection)
        return connection

    monkeypatch.setattr(aiosqlite, "connect", recording_connect)
    yield created


def plain(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    return db


def spec(name: str = "job", namespace: str = "ns", **fields: Any) -> JobSpec:
    return JobSpec(namespace=namespace, name=name, image=fields.pop("image", "busybox"), **fields)


def always_start(_spec: JobSpec, _active: list[int]) -> bool:
    return True


def sqlite_master(path: Path) -> list[tuple[str, str, str, str | None]]:
    with plain(path) as db:
        found = db.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
        ).fetchall()
    return [
        (r["type"], r["name"], r["tbl_name"], " ".join(r["sql"].split()) if r["sql"] else None)
        for r in found
    ]


def count_transactions(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The work of every one-hop transaction the store runs from now on."""
    return record_calls(store, "_transaction", monkeypatch)


def record_calls(store: Store, method: str, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What the store passes to one of its writer methods from now on, in order."""
    seen: list[Any] = []
    real = getattr(store, method)

    async def recording(work: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(work)
        return await real(work, *args, **kwargs)

    monkeypatch.setattr(store, method, recording)
    return seen


def file_size(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


# -- (a) schema --------------------------------------------------------------------------


async def test_migrations_produce_schema_sql(tmp_path: Path) -> None:
    migrated = tmp_path / "migrated.db"
    store = Store(migrated)
    await store.open()
    await store.close()

    assert sqlite_master(migrated) == sqlite_master_of_schema(tmp_path)
    names = {name for _, name, _, _ in sqlite_master(migrated)}
    assert {"namespaces", "jobs", "job_revisions", "runs", "run_events", "log_lines"} <= names


async def test_user_version_is_the_last_migration(tmp_path: Path) -> None:
    numbers = [int(p.name.split("_", 1)[0]) for p in (SQL_DIR / "migrations").glob("*.sql")]
    assert numbers, "no migration files found"
    assert all(re.fullmatch(r"\d{4}_\w+\.sql", p.name) for p in SQL_DIR.glob("migrations/*"))
    store = Store(tmp_path / "ringjobs.db")
    await store.open()
    await store.close()
    with plain(store.path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == max(numbers)
    assert store.schema_version == max(numbers)


async def test_reopening_migrates_nothing_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "ringjobs.db"
    first = Store(path)
    await first.open()
    await first.apply([], [spec()], always_start, None)
    await first.close()
    before = sqlite_master(path)

    second = Store(path)
    await second.open()
    try:
        assert sqlite_master(path) == before
        job = await second.get_job("ns", "job")
        assert job is not None
        assert job.revision == 1
        assert len(await second.list_runs()) == 1
    finally:
        await second.close()


async def test_migration_6_stores_each_spec_once_and_keeps_every_runs_spec(
    tmp_path: Path,
) -> None:
    """A history made before 0006 (each run row with its own copy of the spec)."""
    path = tmp_path / "old.db"
    first, second = spec(), spec(image="alpine", command=["true"])
    copies = [first, second, first, first, second] * 200  # pages for the vacuum to free
    with plain(path) as db:
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        for version, script in migrations():
            if version <= 5:
                db.executescript(script)
        db.execute("PRAGMA user_version = 5")
        db.executemany(
            "INSERT INTO runs (namespace, job, revision, trigger, status, created_at, spec) "
            "VALUES ('ns', 'job', 1, 'manual', 'completed', '2026-01-01T00:00:00.000000Z', ?)",
            [(s.canonical_json(),) for s in copies],
        )
        db.execute("DELETE FROM runs WHERE id > 990")  # the newest runs were pruned
    store = Store(path)
    await store.open()
    try:
        runs = {r.id: r.spec for r in await store.list_runs(limit=len(copies))}
        assert runs == {i: s for i, s in enumerate(copies[:990], start=1)}
        assert (await store.get_run(2)).spec == second  # type: ignore[union-attr]
        # AUTOINCREMENT's highest id went with the table: pruned ids are not handed out.
        assert await store.create_run(second, 1, Trigger.MANUAL, None) == len(copies) + 1
    finally:
        await store.close()
    with plain(path) as db:
        stored = db.execute("SELECT hash, spec, uses FROM run_specs").fetchall()
        assert sorted((h, s, n) for h, s, n in stored) == sorted(
            [
                (first.spec_hash(), first.canonical_json(), copies[:990].count(first)),
                (second.spec_hash(), second.canonical_json(), copies[:990].count(second) + 1),
            ]
        )
        assert "spec" not in {r["name"] for r in db.execute("PRAGMA table_info(runs)")}
        assert db.execute("PRAGMA freelist_count").fetchone()[0] == 0  # given back at open
    assert sqlite_master(path) == sqlite_master_of_schema(tmp_path)


def sqlite_master_of_schema(tmp_path: Path) -> list[tuple[str, str, str, str | None]]:
    reference = tmp_path / "reference.db"
    with sqlite3.connect(reference) as db:
        db.executescript(schema())
    return sqlite_master(reference)


# -- (b) pragmas -------------------------------------------------------------------------


async def test_wal_and_incremental_auto_vacuum(store: Store) -> None:
    with plain(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL


async def test_connection_pragmas(store: Store) -> None:
    assert store._writer is not None and store._reader is not None

    async def pragma(db: aiosqlite.Connection, name: str) -> Any:
        async with db.execute(f"PRAGMA {name}") as cur:
            row = await cur.fetchone()
        assert row is not None
        return row[0]

    assert await pragma(store._writer, "foreign_keys") == 1
    assert await pragma(store._writer, "busy_timeout") == 5000
    assert await pragma(store._writer, "synchronous") == 2  # FULL
    assert await pragma(store._writer, "secure_delete") == 2  # FAST
    assert await pragma(store._writer, "query_only") == 0
    assert await pragma(store._reader, "query_only") == 1


# -- (c) apply ---------------------------------------------------------------------------


async def test_apply_is_idempotent(store: Store) -> None:
    job = spec(command=["echo", "hi"])
    [first] = await store.apply([], [job], always_start, 1000)
    assert (first.action, first.revision) == ("created", 1)
    assert first.run_id is not None

    [again] = await store.apply([], [job], always_start, 1000)
    assert (again.action, again.revision, again.run_id) == ("unchanged", 1, None)

    runs = await store.list_runs(namespace="ns", job="job")
    assert [r.id for r in runs] == [first.run_id]
    run = runs[0]
    assert (run.trigger, run.status, run.revision, run.caller_uid) == (
        Trigger.APPLY,
        RunStatus.PENDING,
        1,
        1000,
    )
    assert run.spec == job
    assert run.command == ["echo", "hi"]
    stored = await store.get_job("ns", "job")
    assert stored is not None
    assert (stored.spec, stored.revision) == (job, 1)


async def test_changed_spec_is_a_new_revision_with_a_new_run(store: Store) -> None:
    seen: list[tuple[str, list[int]]] = []

    def decide(job: JobSpec, active: list[int]) -> bool:
        seen.append((job.image or "", list(active)))
        return True

    [first] = await store.apply([], [spec(image="busybox:1")], decide, None)
    [second] = await store.apply([], [spec(image="busybox:2")], decide, None)
    assert (second.action, second.revision) == ("updated", 2)
    assert second.run_id is not None and second.run_id != first.run_id
    # The callback saw the still-pending first run when deciding on the second.
    assert seen == [("busybox:1", []), ("busybox:2", [first.run_id])]
    stored = await store.get_job("ns", "job")
    assert stored is not None
    assert (stored.revision, stored.spec.image) == (2, "busybox:2")
    revisions = [r.revision for r in await store.list_runs(job="job")]
    assert revisions == [2, 1]


async def test_decide_start_sees_only_active_runs(store: Store) -> None:
    [first] = await store.apply([], [spec(image="a")], always_start, None)
    assert first.run_id is not None
    await store.update_run(first.run_id, status=RunStatus.COMPLETED, finished_at=utcnow())
    seen: list[list[int]] = []

    def decide(_job: JobSpec, active: list[int]) -> bool:
        seen.append(active)
        return False

    [second] = await store.apply([], [spec(image="b")], decide, None)
    assert seen == [[]]
    assert (second.action, second.revision, second.run_id) == ("updated", 2, None)
    assert len(await store.list_runs()) == 1


async def test_revisions_continue_after_delete(store: Store) -> None:
    [first] = await store.apply([], [spec(image="a")], always_start, None)
    [second] = await store.apply([], [spec(image="b")], always_start, None)
    await store.delete_job("ns", "job")
    assert await store.get_job("ns", "job") is None

    kept = await store.list_runs(namespace="ns", job="job")
    assert [r.id for r in kept] == [second.run_id, first.run_id]

    [third] = await store.apply([], [spec(image="a")], always_start, None)
    assert (third.action, third.revision) == ("created", 3)
    runs = await store.list_runs(namespace="ns", job="job")
    assert [(r.id, r.revision) for r in runs] == [
        (third.run_id, 3),
        (second.run_id, 2),
        (first.run_id, 1),
    ]


async def test_apply_stores_namespaces(store: Store) -> None:
    ns = NamespaceSpec(name="team", environment={"A": "1"}, network="none")
    await store.apply([ns], [spec(namespace="team"), spec(namespace="other")], always_start, None)
    team = await store.get_namespace("team")
    assert team is not None
    assert team["network"] == "none"
    # A job's implicit namespace does not overwrite the settings of a declared one.
    await store.apply([], [spec(namespace="team", image="new")], always_start, None)
    listed = {n["name"]: n for n in await store.list_namespaces()}
    assert set(listed) == {"team", "other"}
    assert listed["team"]["environment"] == {"A": "1"}
    assert listed["team"]["jobs"] == 1
    assert listed["team"]["runs"] == 2
    assert listed["team"]["active_runs"] == 2


async def test_apply_is_one_transaction(store: Store) -> None:
    def decide(job: JobSpec, _active: list[int]) -> bool:
        if job.name == "second":
            raise RuntimeError("decision failed")
        return True

    with pytest.raises(RuntimeError):
        await store.apply([], [spec("first"), spec("second")], decide, None)
    assert await store.get_job("ns", "first") is None
    assert await store.list_runs() == []
    assert await store.list_namespaces() == []


# -- (d) update_run ----------------------------------------------------------------------


async def test_update_run_writes_fields_and_event(store: Store) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    started = utcnow()
    await store.update_run(
        run_id,
        ("container_started", "container started"),
        {"container": "abc"},
        status=RunStatus.RUNNING,
        started_at=started,
        container_id="abc123",
        command=["sh", "-c", "true"],
        oom_killed=True,
        attempt=1,
    )
    run = await store.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.RUNNING
    assert run.started_at == started
    assert (run.container_id, run.command, run.oom_killed, run.attempt) == (
        "abc123",
        ["sh", "-c", "true"],
        True,
        1,
    )
    events = await store.list_events(run_id)
    assert [(e.type, e.message, e.data) for e in events][-1] == (
        "container_started",
        "container started",
        {"container": "abc"},
    )
    assert events[0].type == "created"
    assert [e.id for e in await store.list_events(run_id, after=events[0].id)] == [events[1].id]


async def test_update_run_rolls_back_fields_when_the_event_fails(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    assert store._writer is not None
    # A real failure of the event's INSERT, after the run's UPDATE in the same transaction.
    await store._writer.execute(
        "CREATE TEMP TRIGGER no_events BEFORE INSERT ON run_events "
        "BEGIN SELECT RAISE(ABORT, 'event insert failed'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="event insert failed"):
        await store.update_run(
            run_id, ("finished", "done"), status=RunStatus.COMPLETED, exit_code=0
        )
    await store._writer.execute("DROP TRIGGER temp.no_events")

    run = await store.get_run(run_id)
    assert run is not None
    assert (run.status, run.exit_code) == (RunStatus.PENDING, None)
    assert [e.type for e in await store.list_events(run_id)] == ["created"]
    # The writer is not left inside a transaction.
    await store.update_run(run_id, ("finished", "done"), status=RunStatus.COMPLETED, exit_code=0)
    run = await store.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.COMPLETED


@pytest.mark.parametrize(
    "fields",
    [{"log_bytes": 5}, {"namespace": "other"}, {"id": 9}, {"status": "running", "bogus": 1}],
)
async def test_update_run_refuses_unknown_columns(store: Store, fields: dict[str, Any]) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    before = await store.get_run(run_id)
    with pytest.raises(ValueError, match="not run columns"):
        await store.update_run(run_id, ("x", "should not be written"), **fields)
    assert await store.get_run(run_id) == before
    assert [e.type for e in await store.list_events(run_id)] == ["created"]


# -- (e) list_runs -----------------------------------------------------------------------


async def test_list_runs_filters_and_order(store: Store) -> None:
    ids: dict[str, list[int]] = {"a/x": [], "a/y": [], "b/x": []}
    for round_ in range(3):
        for key in ids:
            ns, job = key.split("/")
            if key == "a/y" and round_ == 2:
                continue
            ids[key].append(await store.create_run(spec(job, ns), 1, Trigger.MANUAL, None))
    failed = ids["a/x"][1]
    await store.update_run(failed, status=RunStatus.FAILED)
    await store.update_run(ids["b/x"][0], status=RunStatus.FAILED)

    def newest_first(*keys: str) -> list[int]:
        return sorted((i for k in keys for i in ids[k]), reverse=True)

    assert [r.id for r in await store.list_runs()] == newest_first("a/x", "a/y", "b/x")
    assert [r.id for r in await store.list_runs(namespace="a")] == newest_first("a/x", "a/y")
    assert [r.id for r in await store.list_runs(namespace="a", job="x")] == newest_first("a/x")
    assert [r.id for r in await store.list_runs(job="x")] == newest_first("a/x", "b/x")
    assert [r.id for r in await store.list_runs(namespace="a", status="failed")] == [failed]
    assert len(await store.list_runs(status="failed")) == 2
    assert len(await store.list_runs(status="pending")) == 6
    assert await store.list_runs(namespace="nope") == []
    assert [r.id for r in await store.list_runs(limit=2)] == newest_first("a/x", "a/y", "b/x")[:2]


async def test_list_runs_pages_with_before(store: Store) -> None:
    created = [await store.create_run(spec(), 1, Trigger.MANUAL, None) for _ in range(11)]
    pages: list[list[int]] = []
    before: int | None = None
    while True:
        page = [r.id for r in await store.list_runs(namespace="ns", limit=4, before=before)]
        if not page:
            break
        pages.append(page)
        before = page[-1]
    assert [len(p) for p in pages] == [4, 4, 3]
    assert [i for p in pages for i in p] == sorted(created, reverse=True)


async def test_active_runs_and_last_run(store: Store) -> None:
    first = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    second = await store.create_run(spec(), 1, Trigger.SCHEDULE, None)
    other = await store.create_run(spec("other"), 1, Trigger.MANUAL, None)
    await store.update_run(first, status=RunStatus.CANCELLED)
    await store.update_run(second, status=RunStatus.RUNNING)
    assert [r.id for r in await store.active_runs()] == [second, other]
    assert await store.active_run_ids("ns", "job") == [second]
    last = await store.last_run("ns", "job")
    assert last is not None
    assert (last.id, last.trigger) == (second, Trigger.SCHEDULE)
    assert await store.last_run("ns", "missing") is None


# -- (f) logs ----------------------------------------------------------------------------


async def add_lines(store: Store, run_id: int, count: int) -> list[tuple[int, str, int, str]]:
    """Lines seq 1..count: odd on stdout, even on stderr, time = seq * 1000 us."""
    lines = [
        (seq, "stdout" if seq % 2 else "stderr", seq * 1000, f"line {seq}")
        for seq in range(1, count + 1)
    ]
    rows = [(run_id, seq, 1, stream, t, text) for seq, stream, t, text in lines]
    size = sum(len(text) + 1 for *_, text in lines)
    await store.append_logs(rows, {run_id: (size, False)})
    return lines


async def test_read_logs_filters(store: Store) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    other = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    await add_lines(store, run_id, 10)
    await add_lines(store, other, 3)

    def seqs(records: list[Any]) -> list[int]:
        return [r.seq for r in records]

    assert seqs(await store.read_logs(run_id)) == list(range(1, 11))
    assert seqs(await store.read_logs(run_id, after=7)) == [8, 9, 10]
    assert seqs(await store.read_logs(run_id, since_us=5000)) == [5, 6, 7, 8, 9, 10]
    assert seqs(await store.read_logs(run_id, stream="stdout")) == [1, 3, 5, 7, 9]
    assert seqs(await store.read_logs(run_id, stream="stderr", since_us=5000)) == [6, 8, 10]
    assert seqs(await store.read_logs(run_id, limit=3)) == [1, 2, 3]
    assert seqs(await store.read_logs(run_id, after=2, limit=2, stream="stdout")) == [3, 5]
    assert await store.read_logs(run_id, since_us=11_000) == []

    record = (await store.read_logs(run_id, after=3, limit=1))[0]
    assert (record.seq, record.attempt, record.stream, record.time_us, record.line) == (
        4,
        1,
        "stderr",
        4000,
        "line 4",
    )
    api = record.to_api()
    assert api["time"] == "1970-01-01T00:00:00.004000Z"
    run = await store.get_run(run_id)
    assert run is not None
    assert run.log_bytes == sum(len(f"line {i}") + 1 for i in range(1, 11))


# Lines as capture stores them (decoded with errors="replace"): quotes, escapes, every
# control character, DEL, non-ASCII, astral and replacement characters.
_AWKWARD = [
    'say "hi"\\n',
    "".join(map(chr, range(32))) + "\x7f",
    "é ü 中文 🚀 \ufffd \x85 \u2028",
    "",
    " ",
]


def encoded_page(store: Store, *args: Any, **kwargs: Any) -> LogPage | None:
    """A page as the API sends it, through a stream's own reader (on this thread)."""
    reader = store.page_reader()
    try:
        return reader.page(*args, **kwargs)
    finally:
        reader.close()


async def test_ndjson_pages_say_what_the_records_say(store: Store) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    times = [0, 999_999, 1_000_000, 1_764_600_000_123_456, 253_402_300_799_999_999]  # to 9999
    rows = [
        (run_id, i + 1, 2, ("stdout", "stderr", "system")[i % 3], t, text)
        for i, (t, text) in enumerate(zip(times, _AWKWARD, strict=True))
    ]
    await store.append_logs(rows, {run_id: (1, False)})
    records = await store.read_logs(run_id)

    page = encoded_page(store, run_id, 0, 0, None, 100)
    assert page is not None
    text = page.data.decode()
    assert text.endswith("\n") and (page.last_seq, page.lines) == (5, 5)
    assert [json.loads(line) for line in text.split("\n")[:-1]] == [r.to_api() for r in records]
    assert [r.line for r in records] == _AWKWARD  # stored as given

    page = encoded_page(store, run_id, 1, 1_000_000, "stdout", 1, completion=3)
    assert page is not None
    assert json.loads(page.data) == {**records[3].to_api(), "completion": 3}
    assert (page.last_seq, page.lines) == (4, 1)
    assert encoded_page(store, run_id, 5, 0, None, 100) is None


async def test_log_frames_hold_each_line_as_the_cli_prints_it(store: Store) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    lines = [*_AWKWARD, "a NUL \x00 inside", "x" * 70_000]
    rows = [
        (run_id, i + 1, 2, ("stdout", "stderr", "system")[i % 3], 1_000_000 * i + 7, text)
        for i, text in enumerate(lines)
    ]
    await store.append_logs(rows, {run_id: (1, False)})
    records = [r.to_api() for r in await store.read_logs(run_id)]
    for timestamps, completion in ((False, None), (True, 3)):
        page = encoded_page(store, run_id, 0, 0, None, 100, completion, True, timestamps)
        assert page is not None and page.last_seq == page.lines == len(lines)
        extra = {} if completion is None else {"completion": completion}
        expected = [(r["stream"], printable({**r, **extra}, timestamps)) for r in records]
        assert frames(page.data) == expected  # no two lines in a row of one stream here

    page = encoded_page(store, run_id, 1, 1_000_007, "stderr", 1, framed=True)  # seq 2
    line = lines[1].encode() + b"\n"
    assert page == (b"2%08x" % len(line) + line, 2, 1)
    assert encoded_page(store, run_id, len(lines), 0, None, 100, framed=True) is None


@pytest.mark.parametrize("framed", [False, True])
async def test_a_log_page_ends_once_its_lines_reach_max_bytes(store: Store, framed: bool) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    sizes = [10] * 100 + [10_000] * 100  # short lines, then long ones
    rows = [(run_id, i + 1, 1, "stdout", i, "x" * size) for i, size in enumerate(sizes)]
    await store.append_logs(rows, {run_id: (1, False)})
    page = encoded_page(store, run_id, 0, 0, None, 4096, framed=framed)
    assert page is not None and page.lines == 200  # no bound: as many as asked for
    page = encoded_page(store, run_id, 0, 0, None, 4096, None, framed, False, 100_000)
    assert page is not None
    assert 100 + 9 <= page.lines <= 100 + 9 + 16  # 100,000 bytes, then the rest of a batch
    assert page.last_seq == page.lines and 90_000 < len(page.data) < 300_000


async def test_a_log_frame_holds_a_run_of_one_streams_lines(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    streams = ["stdout", "stdout", "stderr", "stderr", "stderr", "system", "system", "stdout"]
    texts = [f"line {i} \x00 é \n" for i in range(len(streams))]
    rows = [
        (run_id, i + 1, 2, stream, 1_000_000 * i, text)
        for i, (stream, text) in enumerate(zip(streams, texts, strict=True))
    ]
    await store.append_logs(rows, {run_id: (1, False)})
    records = [r.to_api() for r in await store.read_logs(run_id)]
    for timestamps, completion in ((False, None), (True, 3)):
        page = encoded_page(store, run_id, 0, 0, None, 100, completion, True, timestamps)
        assert page is not None
        extra = {} if completion is None else {"completion": completion}
        printed = [printable({**r, **extra}, timestamps) for r in records]
        assert frames(page.data) == [
            ("stdout", b"".join(printed[0:2])),
            ("stderr", b"".join(printed[2:5])),
            ("system", b"".join(printed[5:7])),
            ("stdout", printed[7]),
        ]
    # A frame's length has 8 hex digits: a run too long for them goes a line a frame.
    monkeypatch.setattr(store_module, "_FRAME_MAX", len(printed[5]) * 2)  # two system lines
    page = encoded_page(store, run_id, 0, 0, None, 100, 3, True, True)
    assert page is not None
    assert frames(page.data) == [
        ("stdout", b"".join(printed[0:2])),
        *(("stderr", line) for line in printed[2:5]),
        ("system", b"".join(printed[5:7])),
        ("stdout", printed[7]),
    ]


def frames(data: bytes) -> list[tuple[str, bytes]]:
    """Log frames cut by hand (ringjobs.mediatypes): stream digit, 8 hex digits, bytes."""
    found, at = [], 0
    while at < len(data):
        size = int(data[at + 1 : at + 9], 16)
        found.append((FRAME_STREAMS[data[at] - 48], data[at + 9 : at + 9 + size]))
        at += 9 + size
    assert at == len(data)
    return found


async def test_tail_logs_filters(store: Store) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    await add_lines(store, run_id, 10)

    def seqs(records: list[Any]) -> list[int]:
        return [r.seq for r in records]

    assert seqs(await store.tail_logs(run_id, 3)) == [8, 9, 10]  # oldest first
    assert seqs(await store.tail_logs(run_id, 100)) == list(range(1, 11))
    assert seqs(await store.tail_logs(run_id, 2, stream="stdout")) == [7, 9]
    assert seqs(await store.tail_logs(run_id, 10, since_us=8000)) == [8, 9, 10]
    assert seqs(await store.tail_logs(run_id, 10, since_us=6000, stream="stderr")) == [6, 8, 10]
    assert await store.tail_logs(run_id, 0) == []


async def test_log_counters(store: Store) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    assert await store.last_log_seq(run_id) == 0
    await add_lines(store, run_id, 7)
    assert await store.last_log_seq(run_id) == 7
    assert await store.count_log_lines(run_id, 1, "stdout") == 4
    assert await store.count_log_lines(run_id, 1, "stderr") == 3
    assert await store.count_log_lines(run_id, 2, "stdout") == 0


async def test_append_logs_is_one_transaction(store: Store) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    await add_lines(store, run_id, 2)
    broken: Any = [(run_id, 3, 1, "stdout", 1, "new"), (run_id, 4, 1, "stdout", 1, None)]
    with pytest.raises(sqlite3.IntegrityError):  # NOT NULL fails on the second row
        await store.append_logs(broken, {run_id: (100, True)})
    assert [r.line for r in await store.read_logs(run_id)] == ["line 1", "line 2"]
    run = await store.get_run(run_id)
    assert run is not None
    assert (run.log_bytes, run.log_truncated) == (14, False)


async def test_a_retried_batch_stores_nothing_twice(store: Store) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    batch = [(run_id, 1, 1, "stdout", 1, "once"), (run_id, 2, 1, "stderr", 2, "twice?")]
    await store.append_logs(batch, {run_id: (12, False)})
    await store.append_logs(batch, {})  # the retry after a commit that did go through
    assert [r.line for r in await store.read_logs(run_id)] == ["once", "twice?"]


# -- (g) prune ---------------------------------------------------------------------------


async def test_delete_runs_in_steps_and_file_shrinks(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    total, keep, lines_per_run = 1200, 100, 30
    run_ids = [await store.create_run(spec(), 1, Trigger.MANUAL, None) for _ in range(total)]
    for run_id in run_ids[::3]:
        await store.add_event(run_id, "warning", "something to count")
    payload = "L" * 300
    rows = [
        (run_id, seq, 1, "stdout", seq, payload)
        for run_id in run_ids
        for seq in range(1, lines_per_run + 1)
    ]
    for start in range(0, len(rows), 5000):
        await store.append_logs(rows[start : start + 5000], {})
    doomed, kept = run_ids[:-keep], run_ids[-keep:]
    with plain(store.path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size_before = file_size(store.path)
    assert size_before > len(rows) * 300

    transactions = count_transactions(store, monkeypatch)
    monkeypatch.setattr(store_module, "_PRUNE_STEP_SECONDS", 0.0)  # one chunk per step
    monkeypatch.setattr(store_module, "_PRUNE_CHUNK", 500)
    monkeypatch.setattr(store_module, "_PRUNE_LINES", 500 * lines_per_run + 1)
    lines, events = await store.delete_runs(doomed)
    monkeypatch.undo()

    assert lines == len(doomed) * lines_per_run
    created_events = len(doomed)
    warning_events = len([r for r in run_ids[::3] if r in set(doomed)])
    assert events == created_events + warning_events
    assert len(transactions) == 3  # 1100 runs in transactions of at most 500

    assert await store.get_run(doomed[0]) is None
    assert await store.list_events(doomed[-1]) == []
    assert await store.read_logs(doomed[-1]) == []
    assert [r.id for r in await store.list_runs(limit=1000)] == sorted(kept, reverse=True)
    assert len(await store.read_logs(kept[0])) == lines_per_run
    assert [e.type for e in await store.list_events(kept[0])] == ["created"]

    size_after = file_size(store.path)
    assert size_after < size_before / 4, (size_before, size_after)
    with plain(store.path) as db:
        assert db.execute("PRAGMA freelist_count").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM log_lines").fetchone()[0] == keep * lines_per_run


async def runs_with_logs(store: Store, runs: int, lines: int) -> list[int]:
    run_ids = [await store.create_run(spec(), 1, Trigger.MANUAL, None) for _ in range(runs)]
    rows = [(r, seq, 1, "stdout", seq, "a line") for r in run_ids for seq in range(1, lines + 1)]
    await store.append_logs(rows, {})
    return run_ids


def orphans(path: Path) -> int:
    """Log lines and events whose run is gone."""
    with plain(path) as db:
        return sum(
            db.execute(
                f"SELECT count(*) FROM {table} WHERE run_id NOT IN (SELECT id FROM runs)"
            ).fetchone()[0]
            for table in ("log_lines", "run_events")
        )


async def test_a_long_log_is_deleted_over_several_steps(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    long, short = await runs_with_logs(store, 2, 12_000)
    transactions = count_transactions(store, monkeypatch)
    monkeypatch.setattr(store_module, "_PRUNE_STEP_SECONDS", 0.0)
    monkeypatch.setattr(store_module, "_PRUNE_LINES", 1000)
    assert await store.delete_runs([long]) == (12_000, 1)
    monkeypatch.undo()
    assert len(transactions) == 12  # 12 bites of its log, the last one with the run
    assert await store.get_run(long) is None
    assert len(await store.read_logs(short, limit=20_000)) == 12_000
    assert orphans(store.path) == 0


async def test_a_prune_step_ends_early_when_another_writer_waits(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_ids = await runs_with_logs(store, 40, 5)
    monkeypatch.setattr(store_module, "_PRUNE_CHUNK", 10)
    monkeypatch.setattr(store_module, "_PRUNE_STEP_MIN_SECONDS", 0.0)
    waiting = [False, True]  # someone queues for the lock during the second chunk

    def others_wait() -> bool:
        return waiting.pop(0) if waiting else True

    step = partial(store_module._delete_some, run_ids, 0, others_wait)
    assert await store._transaction(step) == (20, 100, 20)
    assert sorted(r.id for r in await store.list_runs(limit=100)) == run_ids[20:]

    # Not before the step's minimum: a waiting writer cannot reduce it to nothing.
    monkeypatch.setattr(store_module, "_PRUNE_STEP_MIN_SECONDS", 60.0)
    monkeypatch.setattr(store_module, "_PRUNE_STEP_SECONDS", 120.0)
    step = partial(store_module._delete_some, run_ids, 20, lambda: True)
    assert await store._transaction(step) == (20, 100, 20)
    assert await store.list_runs(limit=100) == []


async def test_a_prune_cut_short_leaves_no_orphans_and_the_next_one_finishes(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_ids = await runs_with_logs(store, 30, 20)
    real = store._transaction
    steps = 0

    async def dies_at_the_fifth_step(work: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal steps
        steps += 1
        if steps == 5:
            raise RuntimeError("the daemon died here")
        return await real(work, *args, **kwargs)

    monkeypatch.setattr(store, "_transaction", dies_at_the_fifth_step)
    monkeypatch.setattr(store_module, "_PRUNE_STEP_SECONDS", 0.0)
    monkeypatch.setattr(store_module, "_PRUNE_CHUNK", 10)
    monkeypatch.setattr(store_module, "_PRUNE_LINES", 70)
    with pytest.raises(RuntimeError):
        await store.delete_runs(run_ids)
    monkeypatch.setattr(store, "_transaction", real)

    # Steps 1-3: the first 10 runs (their 200 lines in bites of 70, then their rows).
    # Step 4: 70 lines of the next 10, whose rows all stay until their last step.
    left = sorted(r.id for r in await store.list_runs(limit=100))
    assert left == run_ids[10:]
    assert orphans(store.path) == 0
    assert [len(await store.list_events(r)) for r in left] == [1] * 20
    logs = [len(await store.read_logs(r)) for r in left]
    assert logs == [0] * 3 + [10] + [20] * 16

    assert await store.delete_runs(left) == (20 * 20 - 70, 20)
    assert await store.list_runs(limit=100) == []
    assert orphans(store.path) == 0


async def test_freed_pages_go_back_in_short_steps(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    doomed = await runs_with_logs(store, 50, 400)
    kept = await runs_with_logs(store, 1, 400)
    with plain(store.path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size_before = file_size(store.path)
    calls = record_calls(store, "_on_writer", monkeypatch)
    monkeypatch.setattr(store_module, "_VACUUM_STEP_SECONDS", 0.0)  # the smallest steps
    monkeypatch.setattr(store_module, "_VACUUM_FIRST_PAGES", 16)
    await store.delete_runs(doomed)
    monkeypatch.undo()

    steps = [c.args[0] for c in calls if getattr(c, "func", None) is store_module._vacuum]
    assert len(steps) > 3, steps
    assert steps[:-1] == [store_module._VACUUM_MIN_PAGES] * (len(steps) - 1), steps
    assert 0 < steps[-1] <= store_module._VACUUM_MIN_PAGES, steps
    with plain(store.path) as db:
        assert db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert file_size(store.path) < size_before / 4, (size_before, file_size(store.path))
    assert len(await store.read_logs(kept[0], limit=1000)) == 400


def wal_restarts(path: Path) -> int:
    """The WAL header's checkpoint sequence: SQLite adds one each time the WAL starts over."""
    with open(path.with_name(path.name + "-wal"), "rb") as wal:
        return int.from_bytes(wal.read(16)[12:16], "big")


async def writer_autocheckpoint(store: Store) -> int:
    return int(
        await store._on_writer(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
    )


def steps_of_one_chunk(monkeypatch: pytest.MonkeyPatch, runs: int) -> None:
    monkeypatch.setattr(store_module, "_PRUNE_STEP_SECONDS", 0.0)
    monkeypatch.setattr(store_module, "_PRUNE_CHUNK", runs)


@pytest.mark.parametrize("per_checkpoint", [1, 3])
async def test_a_prune_checkpoints_every_few_steps_without_the_lock(
    store: Store, monkeypatch: pytest.MonkeyPatch, per_checkpoint: int
) -> None:
    run_ids = await runs_with_logs(store, 61, 50)
    steps_of_one_chunk(monkeypatch, 10)
    monkeypatch.setattr(store_module, "_BULK_STEPS_PER_CHECKPOINT", per_checkpoint)
    steps = 0

    def counted(real_step: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any) -> Any:
            nonlocal steps
            steps += 1
            return real_step(*args)

        return step

    for name in ("_delete_some", "_vacuum"):
        monkeypatch.setattr(store_module, name, counted(getattr(store_module, name)))
    real = store._checkpoint
    seen: list[tuple[bool, int, int]] = []  # after each step: lock held, restarts, autocheckpoint

    async def checkpoint() -> None:
        seen.append(
            (store._lock.locked(), wal_restarts(store.path), await writer_autocheckpoint(store))
        )
        # Another writer commits while the checkpoint runs (a reader's snapshot keeps
        # the checkpoint from copying that commit's pages, as their timing would).
        reader = plain(store.path)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM runs").fetchone()
        await store.add_event(run_ids[60], "probe", "another writer's commit", {})
        await real()
        reader.close()

    monkeypatch.setattr(store, "_checkpoint", checkpoint)
    assert await writer_autocheckpoint(store) == store_module._AUTOCHECKPOINT_PAGES
    assert await store.delete_runs(run_ids[:60]) == (60 * 50, 60)

    assert steps > 6  # six delete steps, then the vacuum's
    assert len(seen) == -(-steps // per_checkpoint), (steps, seen)  # the last: before TRUNCATE
    assert [locked for locked, _, _ in seen] == [False] * len(seen)
    # No commit checkpointed meanwhile (a write queued behind a step would have copied
    # that step's pages). The step after each checkpoint began the WAL anew: it first
    # copied the pages that the checkpoint left.
    assert [pages for _, _, pages in seen] == [0] * len(seen)
    restarts = [n for _, n, _ in seen]
    assert restarts == sorted(set(restarts)), restarts
    assert await writer_autocheckpoint(store) == store_module._AUTOCHECKPOINT_PAGES

    def dies(*_args: Any) -> Any:
        raise RuntimeError("a step failed")

    monkeypatch.setattr(store_module, "_delete_some", dies)
    with pytest.raises(RuntimeError):
        await store.delete_runs(run_ids[60:])
    assert await writer_autocheckpoint(store) == store_module._AUTOCHECKPOINT_PAGES
    assert [r.id for r in await store.list_runs(limit=10)] == run_ids[60:]


def record_bulk_order(
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    order: list[str],
    catching_up: Callable[[], None] = lambda: None,
) -> None:
    """Append "catch-up" (a real one, not the no-op check at each step, after which
    `catching_up` runs on the writer's thread, under the lock) and "step" to `order`."""
    real_catch_up, real_delete = store._catch_up, store_module._delete_some

    def catch_up(conn: sqlite3.Connection) -> None:
        if not store._caught_up:
            order.append("catch-up")
            catching_up()
        real_catch_up(conn)

    def delete(*args: Any, **kwargs: Any) -> Any:
        order.append("step")
        return real_delete(*args, **kwargs)

    monkeypatch.setattr(store, "_catch_up", catch_up)
    monkeypatch.setattr(store_module, "_delete_some", delete)


async def test_a_write_queued_during_a_prunes_catch_up_goes_before_its_next_step(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_ids = await runs_with_logs(store, 9, 20)
    steps_of_one_chunk(monkeypatch, 2)
    monkeypatch.setattr(store_module, "_BULK_STEPS_PER_CHECKPOINT", 2)
    loop, order = asyncio.get_running_loop(), []
    writes: list[asyncio.Task[None]] = []

    def queue_a_write() -> None:
        writes.append(loop.create_task(store.add_event(run_ids[8], "probe", "an API write")))

    def a_write_waits() -> None:
        loop.call_soon_threadsafe(queue_a_write)
        deadline = time.monotonic() + 5
        while store._waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.001)  # until the write waits for the lock

    real_add_event = store.add_event

    async def add_event(*args: Any) -> None:
        await real_add_event(*args)
        order.append("write")

    record_bulk_order(store, monkeypatch, order, a_write_waits)
    monkeypatch.setattr(store, "add_event", add_event)
    await store.delete_runs(run_ids[:8])
    await asyncio.gather(*writes)
    # Four steps, checkpointed two by two: each catch-up (before the first and the
    # third) lets the write queued meanwhile commit before the step that follows it.
    assert order[:8] == ["catch-up", "write", "step", "step"] * 2, str(order)
    probes = [e.type for e in await store.list_events(run_ids[8])].count("probe")
    assert probes == order.count("catch-up") == order.count("write"), order


async def test_overlapping_prunes_catch_up_once_after_each_checkpoint(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_ids = await runs_with_logs(store, 40, 5)
    steps_of_one_chunk(monkeypatch, 2)
    monkeypatch.setattr(store_module, "_BULK_STEPS_PER_CHECKPOINT", 3)
    order: list[str] = []
    real_checkpoint = store._checkpoint

    async def checkpoint() -> None:
        order.append("checkpoint")
        await real_checkpoint()

    record_bulk_order(store, monkeypatch, order)
    monkeypatch.setattr(store, "_checkpoint", checkpoint)
    # Their steps alternate: one prune's step is queued before the other's checkpoint.
    await asyncio.gather(store.delete_runs(run_ids[:20]), store.delete_runs(run_ids[20:]))
    deletes = order[: max(i for i, kind in enumerate(order) if kind == "step") + 1]
    assert deletes.count("step") == 20 and deletes.count("checkpoint") >= 6, order
    # Before the first step and after each checkpoint: one copy of the others' pages
    # before any step, so the WAL starts anew each time.
    runs = " ".join(deletes).split("checkpoint")
    assert [run.split().count("catch-up") for run in runs] == [1] * len(runs), order
    assert [run.split()[0] for run in runs] == ["catch-up"] * len(runs), order


async def test_overlapping_or_cancelled_prunes_turn_autocheckpoint_back_on(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_ids = await runs_with_logs(store, 60, 20)
    steps_of_one_chunk(monkeypatch, 5)
    monkeypatch.setattr(store_module, "_BULK_STEPS_PER_CHECKPOINT", 1)
    real = store._checkpoint
    seen: list[int] = []  # the writer's autocheckpoint after each step
    stepped = asyncio.Event()

    async def checkpoint() -> None:
        seen.append(await writer_autocheckpoint(store))
        stepped.set()
        await real()

    monkeypatch.setattr(store, "_checkpoint", checkpoint)
    # A history limit's trim and an API prune at once: off until the last one ends.
    await asyncio.gather(store.delete_runs(run_ids[:20]), store.delete_runs(run_ids[20:40]))
    assert len(seen) > 8 and set(seen) == {0}, seen
    assert await writer_autocheckpoint(store) == store_module._AUTOCHECKPOINT_PAGES

    stepped.clear()
    monkeypatch.setattr(store_module, "_BULK_STEPS_PER_CHECKPOINT", 4)
    steps_of_one_chunk(monkeypatch, 2)  # ten steps
    sixth, loop, steps = asyncio.Event(), asyncio.get_running_loop(), 0
    real_delete = store_module._delete_some

    def delete(*args: Any) -> Any:  # on the writer's thread
        nonlocal steps
        steps += 1
        if steps == 6:  # four checkpointed, the fifth counted and not
            loop.call_soon_threadsafe(sixth.set)
        return real_delete(*args)

    monkeypatch.setattr(store_module, "_delete_some", delete)
    prune = asyncio.create_task(store.delete_runs(run_ids[40:]))
    await sixth.wait()
    seen.clear()
    prune.cancel()  # e.g. the daemon stopping, with a step not yet checkpointed
    with pytest.raises(asyncio.CancelledError):
        await prune
    assert await writer_autocheckpoint(store) == store_module._AUTOCHECKPOINT_PAGES
    # The steps it left in the WAL were copied without the lock, not by the next commit.
    assert (len(seen), store._unchecked_steps) == (1, 0), seen


def stored_specs(path: Path) -> list[str]:
    """The specs stored, after checking that each one's `uses` counts its runs."""
    with plain(path) as db:
        counts = db.execute(
            "SELECT uses, (SELECT count(*) FROM runs WHERE spec_id = run_specs.id) "
            "FROM run_specs ORDER BY id"
        ).fetchall()
        assert [tuple(r) for r in counts] == [(r[1], r[1]) for r in counts]
        return [r[0] for r in db.execute("SELECT spec FROM run_specs ORDER BY id")]


async def test_runs_share_their_spec_and_a_prune_deletes_the_unused_ones(store: Store) -> None:
    first, second = spec(), spec(image="alpine")
    ids = [await store.create_run(s, 1, Trigger.MANUAL, None) for s in (first, second, first)]
    parent = await store.get_run(ids[1])
    assert parent is not None
    child = await store.create_child_run(parent, 0, second)
    assert await store.create_child_run(parent, 0, second) == child  # adds nothing
    outcome = await store.apply([], [spec(name="other")], always_start, None)
    assert stored_specs(store.path) == [
        s.canonical_json() for s in (first, second, spec(name="other"))
    ]
    runs = {r.id: r.spec for r in await store.list_runs(limit=10)}
    assert runs == {
        ids[0]: first,
        ids[1]: second,
        ids[2]: first,
        outcome[0].run_id: spec(name="other"),
    }
    assert (await store.child_runs(ids[1]))[0].spec == second

    await store.delete_runs([ids[0], ids[1], child])  # `first` is still the spec of ids[2]
    assert stored_specs(store.path) == [first.canonical_json(), spec(name="other").canonical_json()]
    await store.delete_runs([ids[2]])
    assert stored_specs(store.path) == [spec(name="other").canonical_json()]
    assert (await store.get_run(outcome[0].run_id)).spec == spec(name="other")  # type: ignore[union-attr]
    # A spec seen again after its last run went: stored anew.
    again = await store.create_run(first, 2, Trigger.MANUAL, None)
    assert (await store.get_run(again)).spec == first  # type: ignore[union-attr]


async def test_delete_runs_of_nothing(store: Store) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    assert await store.delete_runs([]) == (0, 0)
    assert await store.delete_runs([run_id + 100]) == (0, 0)
    assert await store.get_run(run_id) is not None
    assert stored_specs(store.path) == [spec().canonical_json()]  # its count untouched


async def test_two_prunes_of_the_same_runs_release_each_spec_once(store: Store) -> None:
    run_ids = await runs_with_logs(store, 30, 3)
    kept = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    await asyncio.gather(store.delete_runs(run_ids), store.delete_runs(run_ids[10:]))
    assert [r.id for r in await store.list_runs(limit=100)] == [kept]
    assert stored_specs(store.path) == [spec().canonical_json()]  # uses = 1, checked there


async def test_pruned_run_ids_are_never_reused(store: Store) -> None:
    first = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    second = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    await store.delete_runs([first, second])
    assert await store.create_run(spec(), 1, Trigger.MANUAL, None) == second + 1


async def test_one_hop_writes_right_after_a_prune(store: Store) -> None:
    # The prune ends with PRAGMAs on the writer; a cursor left open there would make the
    # next one-hop transaction's COMMIT fail ("SQL statements in progress").
    kept = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    for write in (
        lambda: store.update_run(kept, ("x", "y"), status=RunStatus.RUNNING),
        lambda: store.append_logs([(kept, 1, 1, "stdout", 1, "line")], {kept: (5, False)}),
        lambda: store.add_event(kept, "warning", "w"),
        lambda: store.create_run(spec(), 1, Trigger.MANUAL, None),
    ):
        await store.delete_runs([await store.create_run(spec(), 1, Trigger.MANUAL, None)])
        await write()
    run = await store.get_run(kept)
    assert run is not None and (run.status, run.log_bytes) == (RunStatus.RUNNING, 5)


async def test_prunable_runs(store: Store) -> None:
    done = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    active = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    await store.create_run(spec(namespace="other"), 1, Trigger.MANUAL, None)
    await store.update_run(done, status=RunStatus.COMPLETED, container_id="c1")
    assert await store.prunable_runs("ns", include_active=False) == PruneCandidates([done], [])
    assert await store.prunable_runs("ns", include_active=True) == PruneCandidates(
        [done, active], [active]
    )
    assert await store.prunable_runs("none", include_active=True) == PruneCandidates([], [])


# -- (h) unwritable database -------------------------------------------------------------


def assert_tells_what_to_do(error: StoreUnavailable, path: Path) -> None:
    message = str(error)
    assert str(path) in message
    assert "disk space" in message
    assert "writable" in message
    assert error.status == 503


async def test_write_failure_is_store_unavailable(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    assert store._writer is not None

    async def full_disk(*_args: Any, **_kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    # Every call on the writer's thread (statements and one-hop transactions) fails.
    monkeypatch.setattr(store._writer, "_execute", full_disk)
    attempts = [
        store.update_run(run_id, ("x", "y"), status=RunStatus.RUNNING),
        store.create_run(spec(), 1, Trigger.MANUAL, None),
        store.apply([], [spec("new")], always_start, None),
        store.append_logs([(run_id, 1, 1, "stdout", 1, "x")], {}),
        store.delete_job("ns", "job"),
    ]
    for attempt in attempts:
        with pytest.raises(StoreUnavailable) as info:
            await attempt
        assert "database or disk is full" in str(info.value)
        assert_tells_what_to_do(info.value, store.path)
    monkeypatch.undo()

    # Reads still work, and writes resume once the disk has room again.
    run = await store.get_run(run_id)
    assert run is not None and run.status is RunStatus.PENDING
    await store.update_run(run_id, status=RunStatus.RUNNING)
    run = await store.get_run(run_id)
    assert run is not None and run.status is RunStatus.RUNNING


async def test_really_full_database_is_store_unavailable(store: Store) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    assert store._writer is not None
    async with store._writer.execute("PRAGMA page_count") as cur:
        row = await cur.fetchone()
    assert row is not None
    # SQLite itself refuses to grow the file: a real SQLITE_FULL.
    await store._writer.execute(f"PRAGMA max_page_count = {row[0]}")
    big = [(run_id, seq, 1, "stdout", seq, "x" * 1000) for seq in range(1, 200)]
    with pytest.raises(StoreUnavailable) as info:
        await store.append_logs(big, {run_id: (200_000, False)})
    assert "full" in str(info.value)
    assert_tells_what_to_do(info.value, store.path)
    assert await store.read_logs(run_id) == []

    await store._writer.execute("PRAGMA max_page_count = 1073741823")
    await store.append_logs(big, {})
    assert len(await store.read_logs(run_id)) == len(big)


async def test_read_only_database_is_store_unavailable(store: Store) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    assert store._writer is not None
    # As root a chmod does not stop writes; query_only gives SQLite's real refusal.
    await store._writer.execute("PRAGMA query_only = ON")
    with pytest.raises(StoreUnavailable) as info:
        await store.update_run(run_id, ("started", "x"), status=RunStatus.RUNNING)
    assert "readonly" in str(info.value)
    assert_tells_what_to_do(info.value, store.path)
    await store._writer.execute("PRAGMA query_only = OFF")
    await store.update_run(run_id, status=RunStatus.RUNNING)


async def test_store_recovers_after_a_failed_commit(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    assert store._writer is not None
    connection = CommitFailsOnce(store._writer._conn)
    monkeypatch.setattr(store._writer, "_connection", connection)
    # update_run, create_run and apply commit in one hop on the writer's thread;
    # delete_job statement by statement (Store._write), below.
    with pytest.raises(StoreUnavailable):
        await store.update_run(run_id, status=RunStatus.RUNNING)
    connection.armed = True
    with pytest.raises(StoreUnavailable):
        await store.create_run(spec(), 1, Trigger.MANUAL, None)
    connection.armed = True
    with pytest.raises(StoreUnavailable):
        await store.apply([], [spec("new")], always_start, None)
    # The disk has room again: the next writes must go through, and nothing failed was kept.
    assert [r.id for r in await store.list_runs()] == [run_id]
    assert await store.get_job("ns", "new") is None
    await store.update_run(run_id, status=RunStatus.FAILED)
    second = await store.create_run(spec(), 1, Trigger.MANUAL, None)
    [outcome] = await store.apply([], [spec("new")], always_start, None)
    run = await store.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.FAILED
    assert await store.get_run(second) is not None
    assert outcome.run_id is not None and await store.get_job("ns", "new") is not None
    connection.armed = True
    with pytest.raises(StoreUnavailable):
        await store.delete_job("ns", "new")
    assert await store.get_job("ns", "new") is not None  # rolled back
    await store.delete_job("ns", "new")
    assert await store.get_job("ns", "new") is None


class CommitFailsOnce:
    """The writer's sqlite3 connection, except that a COMMIT fails while `armed`, once."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self._real = real
        self.armed = True

    def _commit_fails(self) -> None:
        if self.armed:
            self.armed = False
            raise sqlite3.OperationalError("database or disk is full")

    def commit(self) -> None:
        self._commit_fails()
        self._real.commit()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


async def test_open_a_file_that_is_not_a_database(
    tmp_path: Path, created_connections: list[aiosqlite.Connection]
) -> None:
    path = tmp_path / "ringjobs.db"
    path.write_bytes(b"this is not an SQLite database\n" * 200)
    store = Store(path)
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.open()
        assert str(path) in str(info.value)
        leaked = [c for c in created_connections if c._running]
        assert leaked == []
    finally:
        await store.close()
        for connection in created_connections:
            await connection.close()


async def test_open_where_the_directory_cannot_exist(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the directory should be")
    store = Store(blocker / "ringjobs.db")
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.open()
        assert str(blocker) in str(info.value)
    finally:
        await store.close()


async def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = Store(tmp_path / "ringjobs.db")
    await store.open()
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.get_run(1)
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.create_run(spec(), 1, Trigger.MANUAL, None)


# -- (i) indexes -------------------------------------------------------------------------


async def test_listing_indexes_exist(store: Store) -> None:
    indexes = {
        name: sql for kind, name, _, sql in sqlite_master(store.path) if kind == "index" and sql
    }
    assert "ON runs (namespace, job, id)" in indexes["runs_by_job"]
    assert "ON runs (namespace, id)" in indexes["runs_by_namespace"]
    assert "ON runs (status, id)" in indexes["runs_by_status"]
    assert "ON run_events (run_id, id)" in indexes["run_events_by_run"]
    assert "UNIQUE INDEX log_lines_by_run ON log_lines (run_id, seq)" in indexes["log_lines_by_run"]


async def query_plans(store: Store, monkeypatch: pytest.MonkeyPatch, action: Any) -> list[str]:
    """The query plan of every statement `action` reads with, with the parameters it used."""
    seen: list[tuple[str, Any]] = []
    real = store_module._fetch_rows  # every read goes through it, on a reader's thread

    def recording(sql: str, params: Any, conn: sqlite3.Connection, *rest: Any) -> Any:
        seen.append((sql, params))
        return real(sql, params, conn, *rest)

    monkeypatch.setattr(store_module, "_fetch_rows", recording)
    await action()
    monkeypatch.undo()
    plans = []
    with plain(store.path) as plain_db:
        for sql, params in seen:
            statement = re.sub(r"^(\s*--[^\n]*\n)*", "", sql)  # after its comment lines
            if statement.lstrip().upper().startswith(("SELECT", "DELETE", "UPDATE")):
                rows = plain_db.execute("EXPLAIN QUERY PLAN " + sql, params or ()).fetchall()
                plans.append(" | ".join(r["detail"] for r in rows))
    return plans


@pytest.mark.parametrize(
    ("job", "index"),
    [("job", "runs_by_job"), (None, "runs_by_namespace")],
)
async def test_list_runs_uses_its_index(
    store: Store, monkeypatch: pytest.MonkeyPatch, job: str | None, index: str
) -> None:
    await store.create_run(spec(), 1, Trigger.MANUAL, None)

    async def action() -> None:
        await store.list_runs(namespace="ns", job=job)

    [plan] = await query_plans(store, monkeypatch, action)
    assert f"INDEX {index}" in plan, plan


async def test_log_reads_use_the_log_index(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = await store.create_run(spec(), 1, Trigger.MANUAL, None)

    async def action() -> None:
        await store.read_logs(run_id, after=3)
        encoded_page(store, run_id, 3, 0, "stdout", 256)
        encoded_page(store, run_id, 3, 0, "stdout", 256, framed=True)
        await store.tail_logs(run_id, 10)
        await store.last_log_seq(run_id)

    plans = await query_plans(store, monkeypatch, action)
    assert len(plans) == 5
    for plan in plans:
        assert "log_lines_by_run" in plan, plan


@pytest.mark.parametrize(
    "name",
    [
        "more_log_lines_than",
        "delete_log_lines",
        "delete_all_log_lines",
        "delete_run_events",
        "delete_run_sources",
        "delete_runs",
        "release_run_specs",
        "delete_unused_run_specs",
    ],
)
def test_prune_deletes_use_indexes(name: str) -> None:
    with sqlite3.connect(":memory:") as db:
        db.executescript(schema())
        params = {"ids": "[1, 2]", "limit": 10}
        plan = " | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + queries()[name], params))
    assert not re.search(r"SCAN (runs|run_specs|log_lines|run_events|run_sources)\b", plan), plan
    assert "INDEX" in plan or "INTEGER PRIMARY KEY" in plan, plan


async def test_concurrent_writes_are_serialised(store: Store) -> None:
    run_ids = [await store.create_run(spec(), 1, Trigger.MANUAL, None) for _ in range(20)]
    await asyncio.gather(
        *(store.update_run(r, ("started", f"run {r}"), status=RunStatus.RUNNING) for r in run_ids),
        *(store.add_event(r, "note", "concurrent") for r in run_ids),
    )
    for run_id in run_ids:
        run = await store.get_run(run_id)
        assert run is not None and run.status is RunStatus.RUNNING
        assert sorted(e.type for e in await store.list_events(run_id)) == [
            "created",
            "note",
            "started",
        ]


async def test_a_request_audit_goes_with_the_run_it_creates_or_not_at_all(store: Store) -> None:
    forbid = spec(concurrency_policy="Forbid")
    audit = RequestAudit(0, 42, "start_job_run", "/v1/jobs/ns/job/runs", 201)
    run_id = await store.create_run(
        forbid, 1, Trigger.MANUAL, 0, refuse_if_active=True, audit=audit
    )
    assert audit.written is not None and audit.written["run_id"] == run_id
    refused = RequestAudit(0, 43, "start_job_run", "/v1/jobs/ns/job/runs", 201)
    with pytest.raises(Conflict):  # the first run is still pending
        await store.create_run(forbid, 1, Trigger.MANUAL, 0, refuse_if_active=True, audit=refused)
    assert refused.written is None  # rolled back with the run: the API records the 409
    records = await store.list_audit_events(None, None, 10)
    assert [(r["caller_pid"], r["status"], r["run_id"], r["data"]) for r in records] == [
        (42, 201, run_id, {})
    ]
    callers = [e for e in await store.list_events(run_id) if e.type == "caller"]
    assert [(e.data["caller_pid"], e.message) for e in callers] == [
        (42, "start_job_run by uid 0 (pid 42)")
    ]


async def test_an_apply_stores_its_audit_record_with_the_runs_it_starts(store: Store) -> None:
    audit = RequestAudit(0, 7, "apply", "/v1/apply", 200, {"dry_run": False})
    first = await store.apply([], [spec("a"), spec("b")], always_start, 0, audit)
    run_ids = [o.run_id for o in first]
    assert audit.written is not None and audit.written["data"]["run_ids"] == run_ids
    again = RequestAudit(0, 8, "apply", "/v1/apply", 200, {"dry_run": False})
    assert [o.action for o in await store.apply([], [spec("a")], always_start, 0, again)] == [
        "unchanged"
    ]
    records = await store.list_audit_events(None, None, 10)
    assert [(r["caller_pid"], r["status"], r["run_id"], r["data"]) for r in records] == [
        (8, 200, None, {"dry_run": False, "run_ids": []}),
        (7, 200, None, {"dry_run": False, "run_ids": run_ids}),
    ]
    for run_id in run_ids:
        assert isinstance(run_id, int)
        events = await store.list_events(run_id)
        assert [(e.type, e.data.get("caller_pid")) for e in events] == [
            ("created", None),
            ("caller", 7),
        ]


def test_a_log_streams_reader_refuses_a_database_gone_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "rj.db"  # its directory is there: SQLite would make a new file
    reader = store_module.LogPageReader(path)
    with pytest.raises(StoreUnavailable, match="cannot open database"):
        reader.page(1, 0, 0, None, 16)
    reader.close()
    assert not path.exists()  # nothing made in its place
