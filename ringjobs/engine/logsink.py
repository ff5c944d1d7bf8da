"""Batched log capture: lines from every run go to SQLite in one transaction per tick.

A transaction every `flush_interval` or `flush_bytes` keeps inserts cheap (one
INSERT per line autocommitted is ~50x slower). The buffer is bounded: a producer
over the high-water mark waits for the flush, which slows the container's output
through the attach socket instead of growing our memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from ringjobs.engine.lines import LineSplitter
from ringjobs.exceptions import StoreUnavailable
from ringjobs.store import Store

_HIGH_WATER_FACTOR = 4
log = structlog.get_logger(__name__)


class RunLog:
    """The log writer of one run attempt: seq numbers, byte cap, line splitting."""

    def __init__(self, sink: LogSink, run_id: int, attempt: int, seq: int, used: int) -> None:
        self._sink = sink
        self.run_id = run_id
        self.attempt = attempt
        self._seq = seq
        self._used = used
        self.truncated = False
        self._splitters: dict[str, LineSplitter] = {}

    async def feed(self, stream: str, data: bytes) -> None:
        splitter = self._splitters.get(stream)
        if splitter is None:
            splitter = self._splitters[stream] = LineSplitter(self._sink.max_line_bytes)
        for line in splitter.feed(data):
            await self.add_line(stream, line)

    async def finish(self) -> None:
        """Store unterminated last lines."""
        for stream, splitter in self._splitters.items():
            for line in splitter.finish():
                await self.add_line(stream, line)

    async def add_line(self, stream: str, line: bytes) -> None:
        if self.truncated:
            return
        size = len(line) + 1
        if self._used + size > self._sink.max_bytes_per_run:
            self.truncated = True
            cap = self._sink.max_bytes_per_run
            await self._append(
                "system",
                f"[ringjobs] log truncated: output passed the "
                f"{cap} byte cap (logs.max_bytes_per_run); the rest was discarded",
                0,
            )
            return
        await self._append(stream, line.decode("utf-8", errors="replace"), size)

    async def _append(self, stream: str, text: str, size: int) -> None:
        self._seq += 1
        self._used += size
        await self._sink.add(
            self.run_id, self._seq, self.attempt, stream, text, size, self.truncated
        )


class LogSink:
    """Collects lines from every run and writes them in batches."""

    def __init__(
        self,
        store: Store,
        max_bytes_per_run: int,
        max_line_bytes: int,
        flush_interval: float,
        flush_bytes: int,
        on_flush: Callable[[int], None],
    ) -> None:
        self._store = store
        self.max_bytes_per_run = max_bytes_per_run
        self.max_line_bytes = max_line_bytes
        self._interval = flush_interval
        self._flush_bytes = flush_bytes
        self._on_flush = on_flush
        self._pending: list[tuple[int, int, int, str, int, str]] = []
        self._counts: dict[int, tuple[int, bool]] = {}
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self._has_lines = asyncio.Event()  # the idle loop sleeps on it: no timer when quiet
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def open(self, run_id: int, attempt: int, fresh: bool = False) -> RunLog:
        """A writer continuing after whatever is already stored for the run.

        `fresh`: the run was never claimed before, so nothing of it can be stored yet;
        skips a flush and two reads per run.
        """
        if fresh:
            return RunLog(self, run_id, attempt, 0, 0)
        await self.flush()  # the store then has every seq and byte of this run
        seq = await self._store.last_log_seq(run_id)
        run = await self._store.get_run(run_id)
        writer = RunLog(self, run_id, attempt, seq, run.log_bytes if run else 0)
        writer.truncated = bool(run and run.log_truncated)  # one marker per run, ever
        return writer

    async def add(
        self,
        run_id: int,
        seq: int,
        attempt: int,
        stream: str,
        text: str,
        size: int,
        truncated: bool,
    ) -> None:
        self._pending.append((run_id, seq, attempt, stream, time.time_ns() // 1000, text))
        count, was_truncated = self._counts.get(run_id, (0, False))
        self._counts[run_id] = (count + size, was_truncated or truncated)
        self._pending_bytes += size + 64
        self._has_lines.set()
        if self._pending_bytes >= self._flush_bytes:
            self._wake.set()
        while self._pending_bytes >= _HIGH_WATER_FACTOR * self._flush_bytes:
            await self._flush_or_back_off()

    async def _flush_or_back_off(self) -> None:
        """Backpressure: the producer (and so the container's output) waits for the store."""
        try:
            await self.flush()
        except StoreUnavailable as exc:
            log.warning("log_flush_failed", error=str(exc))
            await asyncio.sleep(self._interval)

    async def flush(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            # Swap before the await: lines added meanwhile go to the next batch.
            lines, counts, size = self._pending, self._counts, self._pending_bytes
            self._pending, self._counts, self._pending_bytes = [], {}, 0
            try:
                await self._store.append_logs(lines, counts)
            except BaseException:
                self._restore(lines, counts, size)  # kept for the next attempt
                raise
        for run_id in counts:
            self._on_flush(run_id)

    def _restore(
        self,
        lines: list[tuple[int, int, int, str, int, str]],
        counts: dict[int, tuple[int, bool]],
        size: int,
    ) -> None:
        self._pending = lines + self._pending
        for run_id, (count, truncated) in counts.items():
            newer, newer_truncated = self._counts.get(run_id, (0, False))
            self._counts[run_id] = (count + newer, truncated or newer_truncated)
        self._pending_bytes += size
        self._has_lines.set()  # the loop retries them even if no new line comes

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="log-sink")

    async def _loop(self) -> None:
        while not self._stopping:
            if not self._pending:  # nothing to write: sleep until a line comes, not a tick
                self._has_lines.clear()
                await self._has_lines.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("log_flush_failed")

    async def stop(self) -> None:
        """End the loop after its current flush (never mid-commit), then flush the rest."""
        self._stopping = True
        self._has_lines.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()
