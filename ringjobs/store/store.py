"""The Store: one writer connection behind a lock, one reader connection (WAL).

Every state transition is one `BEGIN IMMEDIATE` transaction that writes the run's
fields and its event together, so history never shows a state without its event.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import aiosqlite
import structlog

from ringjobs import idlists
from ringjobs.exceptions import Conflict, StoreUnavailable
from ringjobs.models import (
    JobSpec,
    NamespaceSpec,
    Run,
    RunEvent,
    RunStatus,
    StopIntent,
    Trigger,
    format_time,
    format_time_us,
    parse_time,
    utcnow,
)
from ringjobs.store.queries import migrations, queries
from ringjobs.store.schedules import ScheduledFire, claim_fire, link_fire

log = structlog.get_logger(__name__)

# Columns a transition may set; anything else is a programming error.
_RUN_COLUMNS = frozenset(
    {
        "status",
        "reason",
        "message",
        "exit_code",
        "oom_killed",
        "stop_intent",
        "attempt",
        "started_at",
        "finished_at",
        "image",
        "image_id",
        "container_id",
        "command",
    }
)
# A prune step (one transaction) deletes chunks of runs until another writer waits for
# the lock (after _PRUNE_STEP_MIN_SECONDS) or _PRUNE_STEP_SECONDS have passed: a waiting
# API write then waits for a chunk or two and a commit, not for 2,000 runs (100-200 ms
# on the 1M-run bench). Vacuum steps, which cannot stop halfway, are sized to
# _VACUUM_STEP_SECONDS.
_PRUNE_STEP_SECONDS = 0.05  # its commit (and checkpoint) grows with it: ~25 ms at 50 ms
# With an apply every ~60 ms, steps of one chunk committed more than they deleted: the
# prune took 15-16 s instead of 11-15 s, for ~10 ms less wait per write.
_PRUNE_STEP_MIN_SECONDS = 0.01
# Runs per statement (~8 ms on the bench); the step checks the time and the waiting
# writers between chunks. Each statement costs: 50 took 20% more CPU than 2,000.
_PRUNE_CHUNK = 200
_PRUNE_LINES = 10_000  # log lines per statement (one run's log can be millions of lines)
# After a chunk's log lines and events, in this order (the specs are found via the runs).
_PRUNE_RUN_QUERIES = (
    "delete_run_sources",
    "release_run_specs",
    "delete_unused_run_specs",
    "delete_runs",
)
_VACUUM_STEP_SECONDS = 0.02
_VACUUM_FIRST_PAGES = 256  # then sized to the time the last step took
_VACUUM_MIN_PAGES = 16
_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default: every commit but a bulk step's checkpoints
# Bulk steps between two checkpoints (a delete step writes ~1,500 pages; vacuum steps,
# sized to ~20 ms, count too). Each checkpoint syncs the file, and the pages that
# consecutive steps rewrite (tree parents, free-list trunks) are copied once: 100,000
# of 1M runs in prune_steps.py, checkpoints 1.33 -> 0.41 s, the WAL at most 12 MiB.
_BULK_STEPS_PER_CHECKPOINT = 4
_ACTIVE = ("pending", "starting", "running")
_BUSY_TIMEOUT_MS = 5000
_STREAM_CACHE_KIB = 256  # a log stream's connection (LogPageReader)
_PRAGMAS = (
    "auto_vacuum = INCREMENTAL",
    "journal_mode = WAL",
    "synchronous = FULL",
    "foreign_keys = ON",
    f"busy_timeout = {_BUSY_TIMEOUT_MS}",
    # Debian builds SQLite with SECURE_DELETE: every page a delete frees is zeroed and
    # written, then written again by the checkpoint (a 2,000-run prune step: 1,323 WAL
    # frames, with FAST 985; a 100,000-run prune wrote 1.76 GB, with FAST 1.58 GB).
    # FAST still zeroes deleted rows in the pages it writes anyway; only whole free
    # pages keep old bytes until reused, and deleting runs (prune, history_limit) ends
    # with an incremental vacuum that leaves none.
    "secure_delete = FAST",
)
_INTEGRITY_ERRORS = 5  # problems quoted when the database fails its check at start
_RUN_FILTERS = ("namespace", "job", "status")
_STREAM_CODES = {"system": 0, "stdout": 1, "stderr": 2}
_STREAM_NAMES = {code: name for name, code in _STREAM_CODES.items()}
_SYSTEM_MARK = b"[ringjobs] "  # before the daemon's own lines, as `ringjobs logs` prints them
_FRAME_MAX = 0xFFFFFFFF  # a log frame's length: 8 hex digits
_ROW_BATCH = 16  # rows read at once by a read bounded in bytes
# A page of log lines: as many as make PAGE_BYTES at the bytes per line of the page
# before, PAGE_LINES at least and at most, and it ends once its lines reach PAGE_BYTES
# (short lines, then long ones). The first page is the smallest: its lines out sooner.
# Pages of 256 lines came at 24 MiB/s for 100-byte lines.
PAGE_BYTES = 1 << 20
PAGE_LINES = (16, 4096)  # 4096 lines of 100 bytes: about 6 ms of reading


def _fetch_rows(
    sql: str, params: Any, conn: sqlite3.Connection, max_bytes: int | None = None
) -> list[Any]:
    """The rows of `sql`; with `max_bytes`, the first rows whose last columns add up to
    that many bytes (and a few more: they are read _ROW_BATCH at a time)."""
    with closing(conn.execute(sql, params)) as cursor:
        if max_bytes is None:
            return cursor.fetchall()
        rows: list[Any] = []
        size = 0
        while size < max_bytes and (batch := cursor.fetchmany(_ROW_BATCH)):
            rows += batch
            size += sum(len(row[-1]) for row in batch)
        return rows


def _log_frames(rows: Sequence[Any], completion: int | None, timestamps: bool) -> bytes:
    """Log frames (docs/api.md) of read_logs_framed's rows: a frame for each run of one
    stream's lines, each line as `ringjobs logs` prints it (time, fan-out index, system
    mark). Not a frame per line: the CLI parsed each in Python (24 MiB/s of 100-byte
    lines, where the whole page is one frame now)."""
    lead = b"" if completion is None else b"[%d] " % completion
    frames: list[bytes] = []
    for stream, group in groupby(rows, itemgetter(1)):
        head = lead if stream in (1, 2) else lead + _SYSTEM_MARK
        if timestamps:
            lines = [stamp + head + line for _seq, _stream, stamp, line in group]
        elif head:
            lines = [head + row[3] for row in group]
        else:
            lines = list(map(itemgetter(3), group))  # as stored, not copied
        lines.append(b"")  # so that the join ends with the last line's newline
        body = b"\n".join(lines)
        if len(body) <= _FRAME_MAX:
            frames += (b"%d%08x" % (stream, len(body)), body)
        else:  # too long for 8 hex digits: a frame per line (none is that long)
            for line in lines[:-1]:
                frames += (b"%d%08x" % (stream, len(line) + 1), line, b"\n")
    return b"".join(frames)


class LogPage(NamedTuple):
    """A page of a run's stored lines as the API sends them (LogPageReader)."""

    data: bytes
    last_seq: int
    lines: int


def next_page_lines(page: LogPage) -> int:
    """How many lines to read after `page`: about PAGE_BYTES at its bytes per line."""
    low, high = PAGE_LINES
    return max(low, min(high, PAGE_BYTES * page.lines // max(len(page.data), 1)))


class LogPageReader:
    """Pages of runs' stored lines as the API sends them, for one stream.

    Read on whichever thread calls, one call at a time, with a read-only connection of
    its own (opened at the first page, kept until `close`): the API reads a large log
    on a thread of the stream's (ringjobs.api.logpump), away from the event loop and
    from the reader's thread that other API reads share. With both in the way, `logs
    RUN` went at about 250 MiB/s; on threads of its own, about 400 (README "At scale").
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def pages(
        self,
        run_id: int,
        after: int,
        since_us: int,
        stream: str | None,
        completion: int | None = None,
        framed: bool = False,
        timestamps: bool = False,
    ) -> Iterator[LogPage]:
        """The lines after seq `after`, page after page, each of about PAGE_BYTES. Each
        page is a query of its own: no snapshot is held while a page is sent."""
        lines = PAGE_LINES[0]
        while page := self.page(
            run_id, after, since_us, stream, lines, completion, framed, timestamps, PAGE_BYTES
        ):
            yield page
            after, lines = page.last_seq, next_page_lines(page)

    def page(
        self,
        run_id: int,
        after: int,
        since_us: int,
        stream: str | None,
        limit: int,
        completion: int | None = None,
        framed: bool = False,
        timestamps: bool = False,
        max_bytes: int | None = None,
    ) -> LogPage | None:
        """read_logs as the API sends them; None when there are no more lines. NDJSON
        lines in UTF-8 (LogRecord.to_api, with `completion` if given), or log frames
        (docs/api.md), with each line's time if `timestamps`. With `max_bytes`, fewer
        than `limit` lines once their bytes reach about that many."""
        params = _log_page_params(run_id, after, since_us, stream, limit)
        params |= {"completion": completion, "timestamps": timestamps}
        query = _q("read_logs_framed" if framed else "read_logs_ndjson")
        try:
            rows = _fetch_rows(query, params, self._connection(), max_bytes)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"cannot read the database {self._path}: {exc}") from exc
        if not rows:
            return None
        if framed:
            data = _log_frames(rows, completion, timestamps)
        else:
            data = b"".join([row[1] for row in rows])
        return LogPage(data, rows[-1][0], len(rows))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if self._closed:
                raise StoreUnavailable(
                    "the log stream's database connection is closed (the daemon is "
                    "shutting down); ask again once it is back"
                )
            try:
                # Used by one thread at a time, not always the same one (a pool's).
                # mode=rw: a database gone meanwhile is an error, not a new empty file.
                uri = f"file:{urllib.parse.quote(str(self._path))}?mode=rw"
                self._conn = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False
                )
                self._conn.execute("PRAGMA query_only = ON").close()
                self._conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}").close()
                # A `--follow` keeps it for hours, 64 streams at once: a small cache
                # (SQLite's default is 2 MiB) for lines that are read once, in order.
                self._conn.execute(f"PRAGMA cache_size = -{_STREAM_CACHE_KIB}").close()
            except sqlite3.Error as exc:
                if self._conn is not None:  # it opened, then refused a pragma
                    self._conn.close()
                    self._conn = None
                raise StoreUnavailable(f"cannot open database {self._path}: {exc}") from exc
        return self._conn

    def close(self) -> None:
        """Once no call is under way (the last page read)."""
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass(frozen=True)
class LogRecord:
    """One stored line of a run's output."""

    seq: int
    attempt: int
    stream: str
    time_us: int
    line: str

    def to_api(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "attempt": self.attempt,
            "stream": self.stream,
            "time": format_time_us(self.time_us),
            "line": self.line,
        }


@dataclass(frozen=True)
class PruneCandidates:
    """The runs a prune selects, oldest first, and those of them still active."""

    run_ids: list[int]
    active: list[int]


@dataclass(frozen=True)
class SealedSecret:
    """A secret as stored: AES-GCM ciphertext, its nonce, and which key sealed it."""

    key_id: str
    nonce: bytes
    ciphertext: bytes


@dataclass
class RequestAudit:
    """The audit record of one mutating API request, before its outcome is known.

    A request that creates runs (exec, start, rerun, apply) hands it to the store, which
    writes it in the same transaction as the runs, with the answer's `status` and
    `data` that its handler set, and keeps what it wrote in `written`: one commit less
    before the claim and Docker's create, and no second wait for the lock. Otherwise
    the API writes it once the answer is known (`add_audit_event`).
    """

    caller_uid: int | None
    caller_pid: int | None
    action: str
    target: str
    status: int = 0  # the answer the request gives once the store has done its part
    data: dict[str, Any] = field(default_factory=dict)
    written: dict[str, Any] | None = None  # the record as stored
    record_id: int | None = None  # its row, to correct the status if the request then fails

    def event(self, status: int, run_id: int | None, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "caller_uid": self.caller_uid,
            "caller_pid": self.caller_pid,
            "action": self.action,
            "target": self.target,
            "status": status,
            "run_id": run_id,
            "data": data,
        }


@dataclass(frozen=True)
class StoredJob:
    spec: JobSpec
    revision: int
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class ApplyOutcome:
    spec: JobSpec
    action: str
    revision: int
    run_id: int | None


T = TypeVar("T")

# Decides, inside the apply transaction, whether a changed job starts a run now.
StartDecision = Callable[[JobSpec, list[int]], bool]


def _q(name: str) -> str:
    return queries()[name]


class Store:
    """Async access to the ringjobs database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        # Long scans (prune's candidates) read here, so API reads never queue behind them.
        self._scanner: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._waiting = 0  # tasks waiting for _lock: a prune step ends early for them
        self._deferring = 0  # bulk writes under way (see _deferred_checkpoints)
        self._unchecked_steps = 0  # bulk steps since the last checkpoint
        self._caught_up = False  # whether others' frames were copied since that checkpoint
        self.instance_id = ""

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        try:
            # Logs and encrypted secrets: private also outside systemd's StateDirectoryMode.
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))  # born 0600
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot create {self.path}: {exc.strerror} "
                "(check the database path and its permissions)"
            ) from exc
        self._lock, self._waiting, self._deferring = asyncio.Lock(), 0, 0
        self._unchecked_steps, self._caught_up = 0, False
        self._writer = await self._connect()
        try:
            await self._check_integrity(self._writer)
            await self._migrate(self._writer)
            self._reader = await self._connect()
            await self._reader.execute("PRAGMA query_only = ON")
            self._scanner = await self._connect()
            await self._scanner.execute("PRAGMA query_only = ON")
            # Pages left free by a migration (0006 copies the runs table) or by a prune
            # that a crash stopped before its vacuum.
            if await self._on_writer(_free_pages):
                async with self._deferred_checkpoints():
                    await self._reclaim_space()
            self._make_private()
            self.instance_id = await self._instance_id()
        except BaseException:
            await self.close()
            raise

    def _make_private(self) -> None:
        """0600 for the database and its -wal/-shm (SQLite gives those the file's mode)."""
        for name in (self.path.name, self.path.name + "-wal", self.path.name + "-shm"):
            try:
                os.chmod(self.path.with_name(name), 0o600)
            except FileNotFoundError:
                pass
            except OSError as exc:  # e.g. owned by another user: say so, keep going
                log.warning("database_file_not_private", path=name, error=str(exc))

    async def _connect(self) -> aiosqlite.Connection:
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open database {self.path}: {exc}") from exc
        db.row_factory = aiosqlite.Row
        # auto_vacuum must precede the first table (migration 0001 creates the file).
        try:
            for pragma in _PRAGMAS:
                async with db.execute(f"PRAGMA {pragma}"):
                    pass  # closed: see _transaction
        except sqlite3.Error as exc:
            await db.close()  # its thread would otherwise keep the process alive
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_CORRUPT:
                raise self._damaged([str(exc)]) from exc  # its schema pages are unreadable
            raise StoreUnavailable(
                f"cannot open database {self.path}: {exc} (is it a ringjobs database? "
                "move it away to start afresh)"
            ) from exc
        return db

    async def _check_integrity(self, db: aiosqlite.Connection) -> None:
        """Refuse a damaged database: running on it could lose or mix up history."""
        try:
            rows = await db.execute_fetchall(f"PRAGMA integrity_check({_INTEGRITY_ERRORS})")
            problems = [str(r[0]) for r in rows if str(r[0]) != "ok"]
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        if problems:
            raise self._damaged(problems)

    def _damaged(self, problems: list[str]) -> StoreUnavailable:
        return StoreUnavailable(
            f"database {self.path} is damaged (integrity_check: {'; '.join(problems)}). "
            "The daemon does not start on a damaged history. Stop here, copy the file "
            f"aside, then either salvage it (sqlite3 {self.path} .recover | sqlite3 "
            "NEW.db, and start with --database NEW.db) or restore a backup"
        )

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        try:
            await db.create_function("sha256_hex", 1, _sha256_hex, deterministic=True)
            await self._apply_migrations(db)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot migrate database {self.path}: {exc}") from exc

    async def _apply_migrations(self, db: aiosqlite.Connection) -> None:
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        for version, script in migrations():
            if version > current:
                await db.executescript(
                    f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;"
                )

    async def _instance_id(self) -> str:
        """A random id made once per database; it tells our containers from others'."""
        async with self._write() as db:
            await db.execute(_q("init_meta"), {"key": "instance_id", "value": uuid.uuid4().hex})
        row = await self._fetchone(_q("get_meta"), {"key": "instance_id"})
        assert row is not None
        return str(row[0])

    async def close(self) -> None:
        # Gone before the awaits: a task still at work meanwhile gets StoreUnavailable.
        connections = (self._scanner, self._reader, self._writer)
        self._scanner = self._reader = self._writer = None
        for db in connections:
            if db is not None:
                await db.close()

    @property
    def schema_version(self) -> int:
        return max(v for v, _ in migrations())

    async def check(self) -> None:
        """Raise StoreUnavailable unless the database answers a read and commits a write.

        The write shows a full disk or a read-only file now, not when a run next needs it.
        """
        await self._fetchone("SELECT 1", {})
        async with self._write() as db:
            await db.execute(_q("probe_write"), {"now": format_time(utcnow())})

    # -- plumbing ----------------------------------------------------------------

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """The write lock, counting who waits for it (a prune step reads the count)."""
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        db = self._writer
        if db is None:
            raise StoreUnavailable("the database is closed (the daemon is shutting down)")
        async with self._locked():
            try:
                try:
                    # BEGIN inside the try: a task cancelled while BEGIN runs on aiosqlite's
                    # thread still gets its rollback queued after it (a no-op if none began).
                    await db.execute("BEGIN IMMEDIATE")
                    yield db
                    await db.commit()  # a failed commit (disk full) must roll back too
                except BaseException:
                    await asyncio.shield(db.rollback())
                    raise
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(
                    f"cannot write the database {self.path}: {exc} "
                    "(check free disk space and that the file is writable)"
                ) from exc

    async def _transaction(self, work: Callable[[sqlite3.Connection], T], bulk: bool = False) -> T:
        """BEGIN IMMEDIATE, `work`, COMMIT as one call on the writer's thread.

        For the writes every run makes: one thread hop per transaction instead of one per
        statement (~55 us of CPU each, 4-5 per transition). `work` runs whole or not at
        all: a caller cancelled meanwhile does not interrupt it (FIFO on that thread, so
        nothing else can interleave), and it rolls back if `work` or COMMIT raises.

        A statement run on the writer outside a transaction must close its cursor
        (`async with`): aiosqlite keeps the last result alive until its next call, and
        an open SELECT/PRAGMA cursor would make this COMMIT fail ("SQL statements in
        progress").
        """

        def run(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.commit()  # not execute("COMMIT"): that fails while a cursor is open
            except BaseException:
                conn.rollback()
                raise
            return result

        return await self._on_writer(run, bulk)

    async def _on_writer(self, call: Callable[[sqlite3.Connection], T], bulk: bool = False) -> T:
        """`call` on the writer's thread under the write lock, as one hop.

        bulk: a step of a bulk write, inside _deferred_checkpoints. Every
        _BULK_STEPS_PER_CHECKPOINT steps, the frames are checkpointed after the lock is
        released; before the step after that, the few frames other writers added
        meanwhile are checkpointed too (_catch_up), so the WAL starts anew.
        """
        if bulk:
            if not self._caught_up:
                # A hop of its own, so that a write queued meanwhile waits for this copy
                # or for the step, not for both: 10-40 ms each with their syncs on the
                # scale bench. That write then starts the WAL anew; the step does if
                # none came.
                await self._hop(self._catch_up)
            # Decided again when the step runs: another bulk write's step may have been
            # checkpointed since (overlapping prunes). Then it is copied in this turn.
            call = partial(self._bulk_step, call)
        result = await self._hop(call)
        if bulk:
            self._unchecked_steps += 1
            if self._unchecked_steps >= _BULK_STEPS_PER_CHECKPOINT:
                await self._checkpoint_steps()
        return result

    async def _hop(self, call: Callable[[sqlite3.Connection], T]) -> T:
        db = self._writer
        if db is None:
            raise StoreUnavailable("the database is closed (the daemon is shutting down)")
        async with self._locked():
            try:
                # aiosqlite has no public call for "run this on your thread"; _execute is
                # what its own execute() uses.
                result: T = await db._execute(call, db._conn)  # type: ignore[no-untyped-call]
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(
                    f"cannot write the database {self.path}: {exc} "
                    "(check free disk space and that the file is writable)"
                ) from exc
        return result

    def _catch_up(self, conn: sqlite3.Connection) -> None:
        """On the writer's thread, under the lock: once after each checkpoint of bulk
        steps (whichever bulk write they belong to), copy what others added since."""
        if not self._caught_up:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
            self._caught_up = True

    def _bulk_step(self, call: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
        self._catch_up(conn)  # a no-op unless a checkpoint came after the hop for it
        return call(conn)

    async def _read(self, call: Callable[[sqlite3.Connection], T], scan: bool = False) -> T:
        """Run `call` on a reading connection's thread: the scanner's if `scan`."""
        db = self._scanner if scan else self._reader
        if db is None:
            raise StoreUnavailable("the database is closed (the daemon is shutting down)")
        try:
            result: T = await db._execute(call, db._conn)  # type: ignore[no-untyped-call]
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"cannot read the database {self.path}: {exc}") from exc
        return result

    async def _fetchall(self, sql: str, params: Any, scan: bool = False) -> list[aiosqlite.Row]:
        # One call on the thread: a cursor left open between awaits would keep an old
        # snapshot for every other read sharing this connection.
        return await self._read(partial(_fetch_rows, sql, params), scan)

    async def _fetchone(self, sql: str, params: Any) -> aiosqlite.Row | None:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    # -- namespaces and jobs -----------------------------------------------------

    async def apply(
        self,
        namespaces: Sequence[NamespaceSpec],
        jobs: Sequence[JobSpec],
        decide_start: StartDecision,
        caller_uid: int | None,
        audit: RequestAudit | None = None,
    ) -> list[ApplyOutcome]:
        """Store namespaces and jobs, the runs they start and the request's audit record,
        all in one transaction (one thread hop)."""
        now = format_time(utcnow())
        settings = [(ns.name, ns.model_dump(mode="json")) for ns in namespaces]

        def write(conn: sqlite3.Connection) -> tuple[list[ApplyOutcome], _AuditWritten]:
            for name, values in settings:
                conn.execute(_q("upsert_namespace"), _namespace_params(name, values, now, True))
            outcomes = []
            for spec in jobs:
                conn.execute(
                    _q("upsert_namespace"), _namespace_params(spec.namespace, None, now, False)
                )
                outcomes.append(_apply_job(conn, spec, now, decide_start, caller_uid))
            if audit is None:
                return outcomes, None
            run_ids = [o.run_id for o in outcomes if o.run_id is not None]
            event = audit.event(audit.status, None, {"run_ids": run_ids, **audit.data})
            return outcomes, (event, _write_audit(conn, event, run_ids))

        outcomes, written = await self._transaction(write)
        _keep_written(audit, written)
        return outcomes

    async def get_namespace(self, name: str) -> dict[str, Any] | None:
        row = await self._fetchone(_q("get_namespace"), {"name": name})
        return dict(row) if row else None

    async def list_namespaces(self) -> list[dict[str, Any]]:
        rows = await self._fetchall(_q("list_namespaces"), {})
        return [{**dict(r), **_namespace_view(json.loads(r["environment"]))} for r in rows]

    async def get_job(self, namespace: str, name: str) -> StoredJob | None:
        row = await self._fetchone(_q("get_job"), {"namespace": namespace, "name": name})
        return _job_from_row(row) if row else None

    async def list_jobs(self, namespace: str | None) -> list[StoredJob]:
        rows = await self._fetchall(_q("list_jobs"), {"namespace": namespace})
        return [_job_from_row(r) for r in rows]

    async def delete_job(self, namespace: str, name: str) -> None:
        async with self._write() as db:
            await db.execute(_q("delete_job"), {"namespace": namespace, "name": name})

    # -- runs --------------------------------------------------------------------

    async def create_run(
        self,
        spec: JobSpec,
        revision: int,
        trigger: Trigger,
        caller_uid: int | None,
        refuse_if_active: bool = False,
        fire: ScheduledFire | None = None,
        audit: RequestAudit | None = None,
    ) -> int:
        """Insert a pending run; with refuse_if_active, raise Conflict instead if the job has
        an unfinished run. Check and insert share one transaction, so no race gets through.
        With a schedule fire, the fire is claimed in it too (FireAlreadyHandled if taken);
        with the request's audit record, that record and the run's `caller` event too."""
        params = _run_params(spec, revision, trigger, caller_uid)
        namespace = _namespace_params(spec.namespace, None, params["now"], False)
        key = {"namespace": spec.namespace, "job": spec.name}

        def write(conn: sqlite3.Connection) -> tuple[int, _AuditWritten]:  # one hop per run
            if fire is not None:
                claim_fire(conn, spec, fire)
            if refuse_if_active:
                active = [int(r[0]) for r in conn.execute(_q("active_runs_of_job"), key)]
                if active:
                    raise Conflict(
                        f"job {spec.key} already has an active run ({active[0]}) and its "
                        "concurrency_policy is Forbid; wait for it, or set "
                        "concurrency_policy: Allow"
                    )
            conn.execute(_q("upsert_namespace"), namespace)
            run_id = _insert_run(conn, params)
            conn.execute(_q("insert_event"), _created_event(run_id, trigger, revision, caller_uid))
            if fire is not None:
                link_fire(conn, spec, fire, run_id)
                scheduled = {"fire_at": format_time(fire.fire_at)}
                conn.execute(
                    _q("insert_event"), _event_params(run_id, "scheduled", fire.message, scheduled)
                )
            if audit is None:
                return run_id, None
            event = audit.event(audit.status, run_id, audit.data)
            return run_id, (event, _write_audit(conn, event, [run_id]))

        run_id, written = await self._transaction(write)
        _keep_written(audit, written)
        return run_id

    async def create_child_run(self, parent: Run, index: int, spec: JobSpec) -> int:
        """The run of completion `index` of a fan-out run; a second call adds nothing."""
        async with self._write() as db:
            params = {
                **_run_params(spec, parent.revision, parent.trigger, parent.caller_uid),
                "parent_id": parent.id,
                "completion_index": index,
            }
            await db.execute(_q("insert_run_spec"), params)
            cur = await db.execute(_q("insert_child_run"), params)
            if not cur.rowcount:
                async with db.execute(
                    _q("child_run_id"), {"parent_id": parent.id, "completion_index": index}
                ) as found:
                    row = await found.fetchone()
                return int(row[0]) if row else 0
            child_id = int(cur.lastrowid or 0)
            await db.execute(_q("use_run_spec"), params)
            await _insert_event(
                db,
                child_id,
                "created",
                f"completion {index} of run {parent.id} (trigger {parent.trigger})",
                {"parent_id": parent.id, "completion_index": index},
            )
            return child_id

    async def child_runs(self, parent_id: int) -> list[Run]:
        rows = await self._fetchall(_q("child_runs"), {"parent_id": parent_id})
        return [run_from_row(r) for r in rows]

    async def get_run(self, run_id: int) -> Run | None:
        row = await self._fetchone(_q("get_run"), {"id": run_id})
        return run_from_row(row) if row else None

    async def run_status(self, run_id: int) -> RunStatus | None:
        """Just the status: cheap enough to poll (get_run validates the whole snapshot)."""
        row = await self._fetchone(_q("run_status"), {"id": run_id})
        return RunStatus(row[0]) if row else None

    async def list_runs(
        self,
        namespace: str | None = None,
        job: str | None = None,
        status: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> list[Run]:
        # Only the given filters appear in the SQL, so SQLite can pick the matching index
        # (`:x IS NULL OR col = :x` is planned before binding and always scans).
        given = {"namespace": namespace, "job": job, "status": status}
        where = [f"{col} = :{col}" for col in _RUN_FILTERS if given[col] is not None]
        where.append("parent_id IS NULL")  # completions are listed by their parent
        if before is not None:
            where.append("id < :before")
        sql = "SELECT * FROM runs_with_spec"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT :limit"
        params = {**given, "before": before, "limit": limit}
        return [run_from_row(r) for r in await self._fetchall(sql, params)]

    async def active_runs(self) -> list[Run]:
        return [run_from_row(r) for r in await self._fetchall(_q("active_runs"), {})]

    async def active_run_ids(self, namespace: str, job: str) -> list[int]:
        rows = await self._fetchall(_q("active_runs_of_job"), {"namespace": namespace, "job": job})
        return [int(r[0]) for r in rows]

    async def last_run(self, namespace: str, job: str) -> Run | None:
        row = await self._fetchone(_q("last_run_of_job"), {"namespace": namespace, "job": job})
        return run_from_row(row) if row else None

    async def update_run(
        self,
        run_id: int,
        event: tuple[str, str] | None = None,
        data: dict[str, Any] | None = None,
        *,
        only_if_active: bool = False,
        **fields: Any,
    ) -> bool:
        """Write a transition: the run's new fields and its event, atomically.

        With only_if_active, nothing is written unless the run is still unfinished, so a
        late writer can never overwrite a final status. Returns whether it was written.
        """
        guard = _ACTIVE if only_if_active else None
        return await self._guarded_update(run_id, event, data or {}, guard, fields)

    async def claim_pending(
        self,
        run_id: int,
        event: tuple[str, str],
        status: RunStatus,
        attempt: int = 0,
        stop_intent: StopIntent | None = None,
        message: str | None = None,
    ) -> bool:
        """Move a pending run to `status` unless it left pending meanwhile; True if it did.

        Starting and cancelling a pending run both go through here: one of them wins.
        """
        fields = {
            "status": status,
            "attempt": attempt,
            "stop_intent": stop_intent,
            "message": message,
            "finished_at": utcnow() if status.is_terminal else None,
        }
        return await self._guarded_update(run_id, event, {}, ("pending",), fields)

    async def _guarded_update(
        self,
        run_id: int,
        event: tuple[str, str] | None,
        data: dict[str, Any],
        only_in: tuple[str, ...] | None,
        fields: dict[str, Any],
    ) -> bool:
        unknown = set(fields) - _RUN_COLUMNS
        if unknown:
            raise ValueError(f"not run columns: {sorted(unknown)}")
        values = {k: _to_column(v) for k, v in fields.items()}
        assignments = ", ".join(f"{k} = :{k}" for k in values) or "id = id"
        guard = f" AND status IN ({', '.join(repr(s) for s in only_in)})" if only_in else ""
        sql = f"UPDATE runs SET {assignments} WHERE id = :run_id{guard}"

        def write(conn: sqlite3.Connection) -> bool:
            if conn.execute(sql, {**values, "run_id": run_id}).rowcount != 1:
                return False
            if event is not None:
                conn.execute(_q("insert_event"), _event_params(run_id, *event, data))
            return True

        return await self._transaction(write)

    async def add_event(
        self, run_id: int, type_: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        params = _event_params(run_id, type_, message, data or {})
        await self._transaction(lambda conn: conn.execute(_q("insert_event"), params))

    async def list_events(self, run_id: int, after: int = 0) -> list[RunEvent]:
        rows = await self._fetchall(_q("list_events"), {"run_id": run_id, "after": after})
        return [
            RunEvent(
                id=r["id"],
                run_id=r["run_id"],
                time=parse_time(r["time"]),
                type=r["type"],
                message=r["message"],
                data=json.loads(r["data"]),
            )
            for r in rows
        ]

    # -- logs --------------------------------------------------------------------

    async def append_logs(
        self,
        lines: Sequence[tuple[int, int, int, str, int, str]],
        byte_counts: dict[int, tuple[int, bool]],
    ) -> None:
        """Insert (run_id, seq, attempt, stream, time_us, line) rows in one transaction."""
        rows = [(r, s, a, _STREAM_CODES[st], t, ln) for r, s, a, st, t, ln in lines]
        counts = [
            {"bytes": count, "truncated": truncated, "run_id": run_id}
            for run_id, (count, truncated) in byte_counts.items()
        ]

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(_q("insert_log_line"), rows)
            conn.executemany(_q("add_log_bytes"), counts)

        await self._transaction(write)

    async def last_log_seq(self, run_id: int) -> int:
        row = await self._fetchone(_q("last_log_seq"), {"run_id": run_id})
        return int(row[0]) if row else 0

    async def count_log_lines(self, run_id: int, attempt: int, stream: str) -> int:
        params = {"run_id": run_id, "attempt": attempt, "stream": _STREAM_CODES[stream]}
        row = await self._fetchone(_q("count_log_lines"), params)
        return int(row[0]) if row else 0

    async def read_logs(
        self,
        run_id: int,
        after: int = 0,
        since_us: int = 0,
        stream: str | None = None,
        limit: int = 1000,
    ) -> list[LogRecord]:
        params = _log_page_params(run_id, after, since_us, stream, limit)
        return [_log_from_row(r) for r in await self._fetchall(_q("read_logs"), params)]

    def page_reader(self) -> LogPageReader:
        """A reader of log pages for one stream (LogPageReader); close it when done."""
        if self._reader is None:
            raise StoreUnavailable("the database is closed (the daemon is shutting down)")
        return LogPageReader(self.path)

    async def tail_logs(
        self, run_id: int, tail: int, since_us: int = 0, stream: str | None = None
    ) -> list[LogRecord]:
        params = {
            "run_id": run_id,
            "tail": tail,
            "since": since_us,
            "stream": _STREAM_CODES[stream] if stream else None,
        }
        return [_log_from_row(r) for r in await self._fetchall(_q("tail_logs"), params)]

    # -- prune -------------------------------------------------------------------

    async def prunable_runs(
        self,
        namespace: str,
        include_active: bool,
        older_than: datetime | None = None,
        keep_last: int = 0,
        statuses: Sequence[str] | None = None,
    ) -> PruneCandidates:
        params = {
            "namespace": namespace,
            "all": include_active,
            "older_than": format_time(older_than) if older_than else None,
            "keep_last": keep_last,
            "statuses": json.dumps(list(statuses)) if statuses else None,
        }
        fast = older_than is not None and not include_active and not keep_last
        query = _q("prunable_runs_older_than" if fast else "prunable_runs")
        rows = await self._fetchall(query, params | {"block": idlists.ID_BLOCK}, scan=True)
        run_ids = await idlists.decoded(r[0] for r in rows)
        active = await idlists.decoded(r[1] for r in rows)
        return PruneCandidates(sorted(run_ids), sorted(active))

    async def with_children(self, run_ids: Sequence[int]) -> list[int]:
        """The runs and the completions of those that fanned out (deleted together)."""
        children: list[int] = []
        async for block in idlists.json_blocks(run_ids):
            [row] = await self._fetchall(_q("child_run_ids"), {"ids": block}, scan=True)
            children += json.loads(row[0])
        return sorted({*run_ids, *children}) if children else list(run_ids)

    async def delete_runs(self, run_ids: Sequence[int]) -> tuple[int, int]:
        """Delete runs with their logs and events, oldest first; returns (lines, events).

        One short transaction after another (see _PRUNE_STEP_SECONDS). A crash keeps
        what earlier steps deleted; the run being deleted is then still there, possibly
        without the start of its log, and the next prune takes the rest.
        """
        ids = list(run_ids)
        runs = lines = events = 0
        async with self._deferred_checkpoints():
            while runs < len(ids):
                delete = partial(_delete_some, ids, runs, self._others_wait)
                step = await self._transaction(delete, bulk=True)
                runs, lines, events = runs + step.runs, lines + step.lines, events + step.events
            await self._reclaim_space()
        return lines, events

    # -- secrets and live sources ------------------------------------------------

    async def put_secret(self, namespace: str, name: str, sealed: SealedSecret) -> bool:
        """Store a sealed (encrypted) secret; returns whether it already existed."""
        key = {"namespace": namespace, "name": name}
        now = format_time(utcnow())
        async with self._write() as db:
            async with db.execute(_q("get_secret"), key) as cur:
                existed = await cur.fetchone() is not None
            await db.execute(_q("upsert_namespace"), _namespace_params(namespace, None, now, False))
            await db.execute(
                _q("upsert_secret"),
                {
                    **key,
                    "key_id": sealed.key_id,
                    "nonce": sealed.nonce,
                    "ciphertext": sealed.ciphertext,
                    "now": now,
                },
            )
        return existed

    async def get_secret(self, namespace: str, name: str) -> SealedSecret | None:
        row = await self._fetchone(_q("get_secret"), {"namespace": namespace, "name": name})
        if row is None:
            return None
        return SealedSecret(row["key_id"], bytes(row["nonce"]), bytes(row["ciphertext"]))

    async def list_secrets(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Names and times only: the ciphertext never leaves the store this way."""
        rows = await self._fetchall(_q("list_secrets"), {"namespace": namespace})
        return [dict(r) for r in rows]

    async def delete_secret(self, namespace: str, name: str) -> bool:
        async with self._write() as db:
            cur = await db.execute(_q("delete_secret"), {"namespace": namespace, "name": name})
            return cur.rowcount == 1

    async def secret_counts(self) -> dict[str, int]:
        rows = await self._fetchall(_q("count_secrets"), {})
        return {str(r["namespace"]): int(r["secrets"]) for r in rows}

    async def record_run_source(self, run_id: int, attempt: int, record: dict[str, Any]) -> None:
        """Which container an attempt borrowed from; `environment` maps names to origins."""
        async with self._write() as db:
            await db.execute(
                _q("insert_run_source"),
                {
                    "run_id": run_id,
                    "attempt": attempt,
                    "selector": record["selector"],
                    "container_id": record["container_id"],
                    "container": record["container"],
                    "image_id": record["image_id"],
                    "environment": json.dumps(record["environment"]),
                    "now": format_time(utcnow()),
                },
            )

    async def run_sources(self, run_id: int) -> list[dict[str, Any]]:
        rows = await self._fetchall(_q("run_sources"), {"run_id": run_id})
        return [{**dict(r), "environment": json.loads(r["environment"])} for r in rows]

    def _others_wait(self) -> bool:
        """Whether a task waits for the write lock (read from the writer's thread)."""
        return self._waiting > 0

    async def _reclaim_space(self) -> None:
        """Give the pages of deleted rows back to the file system, a short step at a time.

        One incremental_vacuum of everything a 100,000-run prune freed held the writer
        lock for ~3 s; steps sized to _VACUUM_STEP_SECONDS let other writers in between.
        """
        free = await self._on_writer(_free_pages)
        pages = _VACUUM_FIRST_PAGES
        while free > 0:  # pages freed meanwhile by others: their own reclaim takes them
            step = min(pages, free)
            took = await self._on_writer(partial(_vacuum, step), bulk=True)
            free -= step
            pages = max(_VACUUM_MIN_PAGES, min(2 * step, int(step * _VACUUM_STEP_SECONDS / took)))
        # The file shrinks when the WAL is checkpointed; TRUNCATE also empties the WAL.
        await self._checkpoint_steps()  # the copying without the lock, the rest under it
        await self._on_writer(_truncate_wal)

    @asynccontextmanager
    async def _deferred_checkpoints(self) -> AsyncIterator[None]:
        """No commit checkpoints meanwhile: the bulk steps checkpoint without the lock.

        SQLite's auto-checkpoint runs inside the commit that finds the WAL over 1,000
        pages, so a write queued behind a prune step (~1,500 pages) would copy that
        step's pages, or wait while another writer does, before the lock is free again.
        """
        self._deferring += 1
        try:
            await self._on_writer(self._match_autocheckpoint)
            yield
        finally:
            self._deferring -= 1
            if self._deferring == 0:
                # A prune cancelled or failed before its end leaves up to 3 steps in the
                # WAL: copied now, not by the next commit under the lock.
                await asyncio.shield(self._checkpoint_steps())
                await asyncio.shield(self._restore_autocheckpoint())

    def _match_autocheckpoint(self, conn: sqlite3.Connection) -> None:
        """On the writer's thread: off while a bulk write is under way, as counted when
        this runs (so the last of these calls matches the count, whatever their order)."""
        pages = 0 if self._deferring else _AUTOCHECKPOINT_PAGES
        conn.execute(f"PRAGMA wal_autocheckpoint = {pages}").close()

    async def _restore_autocheckpoint(self) -> None:
        try:
            await self._on_writer(self._match_autocheckpoint)
        except StoreUnavailable:
            pass  # closed meanwhile: the setting went with the connection

    async def _checkpoint_steps(self) -> None:
        """Checkpoint the bulk steps not yet checkpointed, if any."""
        if self._unchecked_steps:
            self._unchecked_steps, self._caught_up = 0, False
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        """Copy the WAL into the database; PASSIVE: writers go on meanwhile.

        On the scanner's connection (only a prune's candidates scan there), so it queues
        neither behind the writer's next step nor in front of API reads. Best effort: a
        failure leaves the pages in the WAL, and the next step copies them first.
        """
        db = self._scanner
        if db is None:
            return  # closed meanwhile
        try:
            await db.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.warning("checkpoint_failed", path=str(self.path), error=str(exc))

    # -- audit (who changed what through the socket) ---------------------------------

    async def add_audit_event(self, event: dict[str, Any], run_ids: Sequence[int] = ()) -> None:
        """One mutating request (caller_uid, caller_pid, action, target, status, run_id, data),
        and a `caller` event on each run it created or cancelled, in one transaction."""
        await self._transaction(partial(_write_audit, event=event, run_ids=run_ids))

    async def set_audit_status(self, record_id: int, status: int) -> None:
        """A request whose runs were stored (with its record) failed after all: say so."""
        params = {"id": record_id, "status": status}
        await self._transaction(lambda conn: conn.execute(_q("set_audit_status"), params).close())

    async def list_audit_events(
        self, run_id: int | None, before: int | None, limit: int
    ) -> list[dict[str, Any]]:
        params = {"run_id": run_id, "before": before, "limit": limit}
        rows = await self._fetchall(_q("list_audit_events"), params)
        return [{**dict(r), "data": json.loads(r["data"])} for r in rows]

    async def tail_start_seq(
        self, run_id: int, tail: int, since_us: int, stream: str | None
    ) -> int:
        """The seq of the first of the last `tail` lines: a tail is then read page by page."""
        params = {
            "run_id": run_id,
            "tail": tail,
            "since": since_us,
            "stream": _STREAM_CODES[stream] if stream else None,
        }
        row = await self._fetchone(_q("tail_start_seq"), params)
        return int(row[0]) if row else 0


# -- row helpers ---------------------------------------------------------------


def _to_column(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return int(value)
    return value


def run_from_row(row: aiosqlite.Row) -> Run:
    data = dict(row)
    del data["spec_id"]
    data["spec"] = JobSpec.model_validate_json(data["spec"])
    data["command"] = json.loads(data["command"]) if data["command"] else None
    data["oom_killed"] = bool(data["oom_killed"])
    data["log_truncated"] = bool(data["log_truncated"])
    for key in ("created_at", "started_at", "finished_at"):
        data[key] = parse_time(data[key]) if data[key] else None
    return Run.model_validate(data)


def _namespace_view(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings column as the API shows it: environment and job defaults."""
    defaults = {
        "memory_bytes": settings.get("default_memory_bytes"),
        "cpu_nanos": settings.get("default_cpu_nanos"),
    }
    return {
        "environment": settings.get("environment", {}),
        "defaults": {k: v for k, v in defaults.items() if v is not None},
    }


def _job_from_row(row: aiosqlite.Row) -> StoredJob:
    return StoredJob(
        spec=JobSpec.model_validate_json(row["spec"]),
        revision=row["revision"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _log_page_params(
    run_id: int, after: int, since_us: int, stream: str | None, limit: int
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "after": after,
        "since": since_us,
        "limit": limit,
        "stream": _STREAM_CODES[stream] if stream else None,
    }


def _log_from_row(row: aiosqlite.Row) -> LogRecord:
    return LogRecord(
        seq=row["seq"],
        attempt=row["attempt"],
        stream=_STREAM_NAMES[row["stream"]],
        time_us=row["time"],
        line=row["line"],
    )


def _namespace_params(
    name: str, settings: dict[str, Any] | None, now: str, replace: bool
) -> dict[str, Any]:
    return {
        "name": name,
        "environment": json.dumps(settings or {}),
        "network": (settings or {}).get("network"),
        "now": now,
        "replace": replace,
    }


def _apply_job(
    conn: sqlite3.Connection,
    spec: JobSpec,
    now: str,
    decide_start: StartDecision,
    caller_uid: int | None,
) -> ApplyOutcome:
    key = {"namespace": spec.namespace, "name": spec.name}
    current = conn.execute(_q("get_job"), key).fetchone()
    spec_hash = spec.spec_hash()
    if current is not None and current["spec_hash"] == spec_hash:
        return ApplyOutcome(spec, "unchanged", current["revision"], None)
    row = conn.execute(_q("last_revision"), key).fetchone()
    revision = (row[0] or 0) + 1 if row else 1
    params = {**key, "revision": revision, "spec_hash": spec_hash, "now": now}
    conn.execute(_q("upsert_job"), {**params, "spec": spec.canonical_json()})
    conn.execute(_q("insert_revision"), params)
    job = {"namespace": spec.namespace, "job": spec.name}
    active = [int(r[0]) for r in conn.execute(_q("active_runs_of_job"), job)]
    run_id = None
    if decide_start(spec, active):
        run_params = _run_params(spec, revision, Trigger.APPLY, caller_uid)
        run_id = _insert_run(conn, run_params)
        created = _created_event(run_id, Trigger.APPLY, revision, caller_uid)
        conn.execute(_q("insert_event"), created)
    return ApplyOutcome(spec, "created" if current is None else "updated", revision, run_id)


# The audit record a transaction wrote, and its row id; None when it had none to write.
_AuditWritten = tuple[dict[str, Any], int] | None


def _keep_written(audit: RequestAudit | None, written: _AuditWritten) -> None:
    """After the commit: the request's record is stored, for the API's log line and a
    status correction should the request fail after all."""
    if audit is not None and written is not None:
        audit.written, audit.record_id = written


def _created_event(
    run_id: int, trigger: Trigger, revision: int, caller_uid: int | None
) -> dict[str, Any]:
    return _event_params(
        run_id,
        "created",
        f"run created by {trigger} (revision {revision})",
        {"trigger": str(trigger), "caller_uid": caller_uid},
    )


def _run_params(
    spec: JobSpec, revision: int, trigger: Trigger, caller_uid: int | None
) -> dict[str, Any]:
    return {
        "namespace": spec.namespace,
        "job": spec.name,
        "revision": revision,
        "trigger": str(trigger),
        "now": format_time(utcnow()),
        "image": spec.image,
        "command": json.dumps(spec.command) if spec.command else None,
        "caller_uid": caller_uid,
        "spec": (text := spec.canonical_json()),
        "spec_hash": _sha256_hex(text),
    }


def _sha256_hex(text: str) -> str:
    """The key of a spec in run_specs (also sha256_hex in SQL, for migration 0006)."""
    return hashlib.sha256(text.encode()).hexdigest()


def _insert_run(conn: sqlite3.Connection, params: dict[str, Any]) -> int:
    """A new pending run (params: _run_params); returns its id."""
    conn.execute(_q("insert_run_spec"), params)
    run_id = int(conn.execute(_q("insert_run"), params).lastrowid or 0)
    conn.execute(_q("use_run_spec"), params)
    return run_id


async def _insert_event(
    db: aiosqlite.Connection, run_id: int, type_: str, message: str, data: dict[str, Any]
) -> None:
    await db.execute(_q("insert_event"), _event_params(run_id, type_, message, data))


def _event_params(run_id: int, type_: str, message: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "time": format_time(utcnow()),
        "type": type_,
        "message": message,
        "data": json.dumps(data),
    }


def _write_audit(conn: sqlite3.Connection, event: dict[str, Any], run_ids: Sequence[int]) -> int:
    """The audit record, and a `caller` event on each run the request created or cancelled;
    returns the record's id."""
    params = {**event, "time": format_time(utcnow()), "data": json.dumps(event["data"])}
    record_id = int(conn.execute(_q("insert_audit_event"), params).lastrowid or 0)
    who = f"uid {event['caller_uid']} (pid {event['caller_pid']})"
    data = {k: event[k] for k in ("action", "caller_uid", "caller_pid")}
    for run_id in run_ids:
        conn.execute(
            _q("insert_event"),
            _event_params(run_id, "caller", f"{event['action']} by {who}", data),
        )
    return record_id


class _Deleted(NamedTuple):
    runs: int
    lines: int
    events: int


def _delete_some(
    ids: list[int], start: int, others_wait: Callable[[], bool], conn: sqlite3.Connection
) -> _Deleted:
    """Delete ids[start:] a chunk at a time until the step is over (after at least one)."""
    started = time.monotonic()

    def over() -> bool:
        spent = time.monotonic() - started
        return spent > _PRUNE_STEP_SECONDS or (spent > _PRUNE_STEP_MIN_SECONDS and others_wait())

    runs = lines = events = 0
    while start + runs < len(ids):
        chunk = ids[start + runs : start + runs + _PRUNE_CHUNK]
        params = {"ids": json.dumps(chunk), "limit": _PRUNE_LINES}
        with closing(conn.execute(_q("more_log_lines_than"), params)) as probe:
            long_logs = probe.fetchone() is not None
        if not long_logs:
            lines += conn.execute(_q("delete_all_log_lines"), params).rowcount
        else:
            while (cut := conn.execute(_q("delete_log_lines"), params).rowcount) == _PRUNE_LINES:
                lines += cut
                if over():  # a long log: its runs wait for the next step
                    return _Deleted(runs, lines, events)
            lines += cut
        events += conn.execute(_q("delete_run_events"), params).rowcount
        for query in _PRUNE_RUN_QUERIES:
            conn.execute(_q(query), params)
        runs += len(chunk)
        if over():
            break
    return _Deleted(runs, lines, events)


def _free_pages(conn: sqlite3.Connection) -> int:
    [(free,)] = conn.execute("PRAGMA freelist_count").fetchall()
    return int(free)


def _vacuum(pages: int, conn: sqlite3.Connection) -> float:
    """Cut `pages` pages off the file's end (live ones move into free ones); returns seconds."""
    started = time.monotonic()
    # Each freed page is a result row without columns: execute() would stop after the
    # first; executescript() runs the statement to its end (its own transaction).
    conn.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
    return max(time.monotonic() - started, 1e-6)


def _truncate_wal(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
