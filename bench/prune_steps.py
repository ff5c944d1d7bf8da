"""Where the time of a large prune goes, step by step, and what a writer waits meanwhile.

    .venv/bin/python bench/prune_steps.py [--runs 300000] [--prune 100000]
                                          [--writer-gap 0.05] [--busy-loop]

Builds (once, cached in /tmp) a history like bench/scale_bench.py's (runs of 100 jobs,
10 log lines each), copies it, and deletes the oldest `--prune` runs through
Store.delete_runs as a prune does, while a writer adds one event every `--writer-gap`
seconds. Prints, for the writer's thread: the delete steps (their work and their
commit), the vacuum steps and the final WAL truncate; the checkpoints every few steps,
which run without the write lock; the bytes the process and the disk wrote; the largest
WAL; and the writer's waits. `--busy-loop` keeps the event loop busy as a daemon
answering API calls back to back does: the writer's thread then waits for the GIL each
time a statement gives it back. No Docker needed.
A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from scale_bench import build_history

import ringjobs.store.store as store_module
from ringjobs.store import Store
from ringjobs.store.queries import migrations

T = TypeVar("T")


def written_bytes() -> int:
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("write_bytes"))


def device_written(path: Path) -> int | None:
    """Bytes the disk holding `path` has written (all processes), if the kernel says."""
    dev = os.stat(path).st_dev
    try:
        stat = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat").read_text()
    except OSError:
        return None
    return int(stat.split()[6]) * 512  # sectors written, always of 512 bytes here


def spread(values: list[float]) -> str:
    values = sorted(values)
    p50, top = values[len(values) // 2], values[-1]
    total = sum(values)
    return f"n={len(values)}, total {total:.2f} s, p50 {p50 * 1e3:.1f} ms, max {top * 1e3:.1f} ms"


class Timings:
    """Seconds spent on the writer's thread per kind of call, and in the delete work."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.written: dict[str, int] = defaultdict(int)  # bytes, by the same kinds
        self.work: list[float] = []
        self._deleting = False  # the writer's thread runs one call at a time

    def install(self) -> None:
        real_hop, real_delete = Store._hop, store_module._delete_some
        real_checkpoint = Store._checkpoint

        async def hop(store: Store, call: Callable[[sqlite3.Connection], T]) -> T:
            name = getattr(getattr(call, "func", call), "__name__", "call")

            def timed(conn: sqlite3.Connection) -> T:
                started, before = time.perf_counter(), written_bytes()
                try:
                    return call(conn)
                finally:
                    kind = "delete step (work + commit)" if self._deleting else name
                    self.calls[kind].append(time.perf_counter() - started)
                    self.written[kind] += written_bytes() - before
                    self._deleting = False

            return await real_hop(store, timed)

        async def checkpoint(store: Store) -> None:
            started, before = time.perf_counter(), written_bytes()
            await real_checkpoint(store)
            self.calls["checkpoint without the lock"].append(time.perf_counter() - started)
            self.written["checkpoint without the lock"] += written_bytes() - before

        def delete_some(*args: Any) -> Any:
            self._deleting = True
            started = time.perf_counter()
            try:
                return real_delete(*args)
            finally:
                self.work.append(time.perf_counter() - started)

        Store._hop = hop  # type: ignore[method-assign]
        Store._checkpoint = checkpoint  # type: ignore[method-assign]
        store_module._delete_some = delete_some  # type: ignore[assignment]


async def measure(database: Path, prune: int, gap: float, busy: bool) -> None:
    store = Store(database)
    await store.open()
    timings, waits, wal = Timings(), [], [0]
    timings.install()
    done = asyncio.Event()

    async def writer() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await store.add_event(prune + 1, "probe", "a write during the prune", {})
            waits.append(time.perf_counter() - started)
            await asyncio.sleep(gap)

    async def wal_size() -> None:
        while not done.is_set():
            wal.append(os.stat(f"{database}-wal").st_size)
            await asyncio.sleep(0.05)

    async def busy_loop() -> None:
        """Like a daemon answering API calls back to back: 1 ms of Python, then a short
        wait for the next request (the GIL is free only then)."""
        while not done.is_set():
            until = time.perf_counter() + 0.001
            while time.perf_counter() < until:
                pass
            await asyncio.sleep(0.0002)

    tasks = [asyncio.create_task(writer()), asyncio.create_task(wal_size())]
    if busy:
        tasks.append(asyncio.create_task(busy_loop()))
    before, disk_before, started = written_bytes(), device_written(database), time.perf_counter()
    await store.delete_runs(list(range(1, prune + 1)))
    seconds, written = time.perf_counter() - started, written_bytes() - before
    disk_after = device_written(database)
    done.set()
    await asyncio.gather(*tasks)
    await store.close()

    print(f"prune of {prune:,} runs: {seconds:.2f} s, {written / 2**20:.0f} MiB written")
    if disk_before is not None and disk_after is not None:
        # The process's figure counts a whole page-cache folio for each 4 KiB page it
        # dirties: on this host's kernel (6.18, ext4) the checkpoints copied 332 MiB of
        # WAL frames and were counted 1,352 MiB. The disk's figure is what reached it.
        print(f"  the disk wrote {(disk_after - disk_before) / 2**20:.0f} MiB meanwhile")
    print(f"largest WAL seen: {max(wal) / 2**20:.0f} MiB")
    timings.calls.pop("run", None)  # the writer's own transactions: its waits are below
    for name, values in timings.calls.items():
        print(f"{name}: {spread(values)}, {timings.written[name] / 2**20:.0f} MiB written")
    print(f"  the delete work alone: {spread(timings.work)}")
    print(f"a write every {gap * 1000:.0f} ms, waited: {spread(waits)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300_000)
    parser.add_argument("--prune", type=int, default=100_000)
    parser.add_argument("--writer-gap", type=float, default=0.05)
    parser.add_argument(
        "--busy-loop",
        action="store_true",
        help="keep the event loop (and so the GIL) busy, as API calls back to back do",
    )
    args = parser.parse_args()
    version = max(v for v, _ in migrations())  # a history of an older schema is built anew
    cached = Path(tempfile.gettempdir()) / f"ringjobs-prune-steps-{args.runs}-v{version}.db"
    if not cached.exists():
        started = time.perf_counter()
        build_history(cached, args.runs, 10)
        print(f"history of {args.runs:,} runs built in {time.perf_counter() - started:.0f} s")
    with tempfile.TemporaryDirectory(prefix="rj-prune-steps-") as tmp:
        database = Path(tmp) / "rj.db"
        shutil.copy(cached, database)
        os.sync()  # else the first commit's fsync writes the whole copy back (a 1.5 s stall)
        asyncio.run(measure(database, args.prune, args.writer_gap, args.busy_loop))


if __name__ == "__main__":
    main()
