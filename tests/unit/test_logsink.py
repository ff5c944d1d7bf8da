"""LogSink and RunLog against a real Store on a temporary SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ringjobs.engine.logsink import LogSink, RunLog
from ringjobs.exceptions import StoreUnavailable
from ringjobs.models import JobSpec, Trigger
from ringjobs.store import Store

SPEC = JobSpec(namespace="ns", name="job", image="busybox")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    db = Store(tmp_path / "ringjobs.db")
    await db.open()
    yield db
    await db.close()


class Flushed:
    """Records on_flush calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.event = asyncio.Event()

    def __call__(self, run_id: int) -> None:
        self.calls.append(run_id)
        self.event.set()


def make_sink(
    store: Store,
    flushed: Flushed | None = None,
    max_bytes_per_run: int = 1 << 30,
    max_line_bytes: int = 4096,
    flush_bytes: int = 1 << 30,
) -> LogSink:
    return LogSink(
        store,
        max_bytes_per_run=max_bytes_per_run,
        max_line_bytes=max_line_bytes,
        flush_interval=3600.0,  # tests flush explicitly
        flush_bytes=flush_bytes,
        on_flush=flushed if flushed is not None else Flushed(),
    )


async def new_run(store: Store) -> int:
    return await store.create_run(SPEC, 1, Trigger.MANUAL, None)


def rows(store: Store, run_id: int | None = None) -> list[dict[str, Any]]:
    """Every stored log line, read with a separate plain connection."""
    with sqlite3.connect(store.path) as db:
        db.row_factory = sqlite3.Row
        sql = "SELECT run_id, seq, attempt, stream, line FROM log_lines"
        if run_id is None:
            found = db.execute(sql + " ORDER BY run_id, seq").fetchall()
        else:
            found = db.execute(sql + " WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()
    return [dict(r) for r in found]


async def test_two_streams_keep_order_and_stay_apart(store: Store) -> None:
    run_id = await new_run(store)
    sink = make_sink(store)
    writer = await sink.open(run_id, 1)
    await writer.feed("stdout", b"out 1\nout")
    await writer.feed("stderr", b"err 1\n")
    await writer.feed("stdout", b" 2\nout 3")
    await writer.feed("stderr", b"err")
    await writer.feed("stderr", b" 2\n")
    await writer.finish()
    await sink.flush()

    records = await store.read_logs(run_id)
    assert [(r.seq, r.stream, r.line) for r in records] == [
        (1, "stdout", "out 1"),
        (2, "stderr", "err 1"),
        (3, "stdout", "out 2"),
        (4, "stderr", "err 2"),
        (5, "stdout", "out 3"),  # unterminated, stored by finish()
    ]
    assert {r.attempt for r in records} == {1}
    assert [r.line for r in await store.read_logs(run_id, stream="stderr")] == ["err 1", "err 2"]
    times = [r.time_us for r in records]
    assert times == sorted(times)
    run = await store.get_run(run_id)
    assert run is not None
    assert run.log_bytes == sum(len(r.line) + 1 for r in records)
    assert not run.log_truncated


async def test_runs_keep_their_own_seq(store: Store) -> None:
    first, second = await new_run(store), await new_run(store)
    sink = make_sink(store)
    a, b = await sink.open(first, 1), await sink.open(second, 1)
    for i in range(3):
        await a.add_line("stdout", f"a{i}".encode())
        await b.add_line("stdout", f"b{i}".encode())
    await sink.flush()
    assert [(r["seq"], r["line"]) for r in rows(store, first)] == [(1, "a0"), (2, "a1"), (3, "a2")]
    assert [(r["seq"], r["line"]) for r in rows(store, second)] == [(1, "b0"), (2, "b1"), (3, "b2")]


async def test_open_continues_after_stored_lines(store: Store) -> None:
    run_id = await new_run(store)
    sink = make_sink(store)
    first = await sink.open(run_id, 1)
    await first.add_line("stdout", b"attempt one")
    await sink.flush()
    second = await sink.open(run_id, 2)
    await second.add_line("stderr", b"attempt two")
    await sink.flush()
    assert [(r["seq"], r["attempt"], r["line"]) for r in rows(store, run_id)] == [
        (1, 1, "attempt one"),
        (2, 2, "attempt two"),
    ]
    run = await store.get_run(run_id)
    assert run is not None
    assert run.log_bytes == len("attempt one\n") + len("attempt two\n")


async def test_long_line_is_split_not_dropped(store: Store) -> None:
    run_id = await new_run(store)
    sink = make_sink(store, max_line_bytes=8)
    writer = await sink.open(run_id, 1)
    await writer.feed("stdout", b"0123456789abcdefXYZ\nshort\n")
    await sink.flush()
    assert [r["line"] for r in rows(store, run_id)] == ["01234567", "89abcdef", "XYZ", "short"]


async def test_long_line_split_keeps_utf8_text(store: Store) -> None:
    run_id = await new_run(store)
    sink = make_sink(store, max_line_bytes=5)
    writer = await sink.open(run_id, 1)
    text = "é" * 10  # 20 bytes, cut every 5 bytes: inside a character each time
    await writer.feed("stdout", text.encode() + b"\n")
    await sink.flush()
    pieces = [r["line"] for r in rows(store, run_id)]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) == text


async def test_invalid_utf8_is_stored_with_replacement(store: Store) -> None:
    run_id = await new_run(store)
    sink = make_sink(store)
    writer = await sink.open(run_id, 1)
    await writer.feed("stdout", b"bad \xff byte\n")
    await sink.flush()
    assert [r["line"] for r in rows(store, run_id)] == ["bad \ufffd byte"]


async def test_byte_cap_writes_one_marker_then_nothing(store: Store) -> None:
    run_id = await new_run(store)
    sink = make_sink(store, max_bytes_per_run=100)
    writer = await sink.open(run_id, 1)
    line = b"x" * 19  # 20 bytes with its newline: five lines fill the cap exactly
    for _ in range(5):
        await writer.add_line("stdout", line)
    assert not writer.truncated
    await writer.add_line("stdout", line)
    assert writer.truncated
    for _ in range(50):
        await writer.feed("stderr", line + b"\n")
        await writer.add_line("stdout", b"y")
    await writer.finish()
    await sink.flush()

    stored = rows(store, run_id)
    assert [r["stream"] for r in stored] == [1] * 5 + [0]  # 0 is the system stream
    assert [r["seq"] for r in stored] == list(range(1, 7))
    marker = stored[-1]["line"]
    assert "truncated" in marker
    assert "100 byte" in marker
    assert "logs.max_bytes_per_run" in marker
    run = await store.get_run(run_id)
    assert run is not None
    assert run.log_truncated
    assert run.log_bytes == 100


async def test_cap_counts_bytes_already_stored(store: Store) -> None:
    run_id = await new_run(store)
    sink = make_sink(store, max_bytes_per_run=30)
    first = await sink.open(run_id, 1)
    await first.add_line("stdout", b"a" * 19)  # 20 bytes
    await sink.flush()
    second = await sink.open(run_id, 2)
    await second.add_line("stdout", b"b" * 9)  # 10 more: exactly the cap
    await second.add_line("stdout", b"c")  # over
    await sink.flush()
    assert second.truncated
    assert [r["stream"] for r in rows(store, run_id)] == [1, 1, 0]


async def test_reopened_truncated_run_gets_no_second_marker(store: Store) -> None:
    run_id = await new_run(store)
    sink = make_sink(store, max_bytes_per_run=50)
    first = await sink.open(run_id, 1)
    for _ in range(10):
        await first.add_line("stdout", b"z" * 9)
    await sink.flush()
    second = await sink.open(run_id, 2)
    await second.add_line("stdout", b"more output")
    await sink.flush()
    system = [r for r in rows(store, run_id) if r["stream"] == 0]
    assert len(system) == 1


async def test_open_while_lines_pending_continues_their_seq(store: Store) -> None:
    run_id = await new_run(store)
    sink = make_sink(store)
    first = await sink.open(run_id, 1)
    for i in range(3):
        await first.add_line("stdout", f"first {i}".encode())
    second = await sink.open(run_id, 2)  # e.g. a retry before the sink's next tick
    await second.add_line("stdout", b"second")
    await sink.flush()
    assert [(r["seq"], r["line"]) for r in rows(store, run_id)] == [
        (1, "first 0"),
        (2, "first 1"),
        (3, "first 2"),
        (4, "second"),
    ]


async def test_concurrent_add_and_flush_lose_nothing(store: Store) -> None:
    runs = [await new_run(store) for _ in range(4)]
    flushed = Flushed()
    # A small flush_bytes also makes add() flush by itself past the high-water mark.
    sink = make_sink(store, flushed, flush_bytes=8192)
    writers = [await sink.open(run_id, 1) for run_id in runs]
    per_writer = 3000
    done = asyncio.Event()

    async def produce(writer: RunLog, index: int) -> None:
        for i in range(per_writer):
            stream = "stdout" if i % 3 else "stderr"
            await writer.feed(stream, f"w{index} line {i}\n".encode())
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the other producers and the flusher in

    async def flush_repeatedly() -> int:
        count = 0
        while not done.is_set():
            await sink.flush()
            count += 1
            await asyncio.sleep(0)
        return count

    flusher = asyncio.create_task(flush_repeatedly())
    await asyncio.gather(*(produce(w, n) for n, w in enumerate(writers)))
    done.set()
    flushes = await flusher
    await sink.flush()

    assert flushes > 1
    stored = rows(store)
    assert len(stored) == len(runs) * per_writer
    for index, run_id in enumerate(runs):
        mine = [r for r in stored if r["run_id"] == run_id]
        assert [r["seq"] for r in mine] == list(range(1, per_writer + 1))
        # seq order is the order lines were produced, whatever the stream.
        assert [r["line"] for r in mine] == [f"w{index} line {i}" for i in range(per_writer)]
        run = await store.get_run(run_id)
        assert run is not None
        assert run.log_bytes == sum(len(r["line"]) + 1 for r in mine)
    assert set(flushed.calls) == set(runs)


async def test_failed_write_keeps_lines_for_the_next_flush(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = await new_run(store)
    flushed = Flushed()
    sink = make_sink(store, flushed)
    writer = await sink.open(run_id, 1)
    for i in range(5):
        await writer.add_line("stdout", f"before {i}".encode())

    real_append = store.append_logs
    failures = 0

    async def append_failing_once(*args: Any, **kwargs: Any) -> None:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise StoreUnavailable("cannot write the database: database or disk is full")
        await real_append(*args, **kwargs)

    monkeypatch.setattr(store, "append_logs", append_failing_once)
    with pytest.raises(StoreUnavailable):
        await sink.flush()
    assert failures == 1
    assert rows(store, run_id) == []
    assert flushed.calls == []

    for i in range(3):
        await writer.add_line("stdout", f"after {i}".encode())
    await sink.flush()

    stored = rows(store, run_id)
    expected = [f"before {i}" for i in range(5)] + [f"after {i}" for i in range(3)]
    assert [r["line"] for r in stored] == expected
    assert [r["seq"] for r in stored] == list(range(1, 9))
    run = await store.get_run(run_id)
    assert run is not None
    assert run.log_bytes == sum(len(line) + 1 for line in expected)  # counted once
    assert flushed.calls == [run_id]


async def test_on_flush_called_with_each_flushed_run(store: Store) -> None:
    first, second, idle = await new_run(store), await new_run(store), await new_run(store)
    flushed = Flushed()
    sink = make_sink(store, flushed)
    a, b = await sink.open(first, 1), await sink.open(second, 1)
    await sink.open(idle, 1)
    await a.add_line("stdout", b"a")
    await b.add_line("stdout", b"b")
    await a.add_line("stdout", b"a again")
    await sink.flush()
    assert sorted(flushed.calls) == sorted([first, second])
    await sink.flush()  # nothing pending: no call
    assert sorted(flushed.calls) == sorted([first, second])


async def test_background_loop_flushes_when_flush_bytes_reached(store: Store) -> None:
    run_id = await new_run(store)
    flushed = Flushed()
    sink = make_sink(store, flushed, flush_bytes=256)
    sink.start()
    try:
        writer = await sink.open(run_id, 1)
        for i in range(10):
            await writer.add_line("stdout", f"line {i}".encode())
        # Ten lines of ~7 bytes plus 64 bytes overhead each pass 256 bytes: the loop
        # wakes long before its one-hour interval.
        await asyncio.wait_for(flushed.event.wait(), 10)
        assert flushed.calls == [run_id]
        assert len(rows(store, run_id)) >= 4
    finally:
        await sink.stop()
    assert len(rows(store, run_id)) == 10


async def test_stop_flushes_what_is_pending(store: Store) -> None:
    run_id = await new_run(store)
    sink = make_sink(store)
    sink.start()
    writer = await sink.open(run_id, 1)
    await writer.feed("stdout", b"last words")
    await writer.finish()
    await sink.stop()
    assert [r["line"] for r in rows(store, run_id)] == ["last words"]
