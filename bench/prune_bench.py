"""Prune time and database size for 100,000 runs with logs (issue 5).

    .venv/bin/python bench/prune_bench.py [--runs 100000] [--lines 10] [--keep-last 10]

Builds a database in a temp dir through the Store (migrations, pragmas), fills it with
finished runs of 20 jobs, each with log lines and events, then times what the daemon's
prune does (Engine.prune: select, delete in batches, incremental vacuum, WAL truncate)
for a `--keep-last` dry run, a `--keep-last` prune and an `--older-than` prune of the
rest, printing the file size after each step. A benchmark, not a test: it asserts
nothing. Docker is not needed: the runtime it passes lists no leftover containers.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ringjobs.config import load_config
from ringjobs.engine.engine import Engine
from ringjobs.models import JobSpec
from ringjobs.store import Store

JOBS = 20
NAMESPACE = "bench"


class NoContainers:
    """The one runtime call prune makes when nothing is left over: list containers."""

    async def list_managed(self, instance_id: str) -> list[Any]:
        return []

    async def events(self) -> AsyncIterator[Any]:  # pragma: no cover - never started
        if False:
            yield None


def size_mib(path: Path) -> float:
    wal = path.with_name(path.name + "-wal")
    total = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    return total / 2**20


def fill(path: Path, runs: int, lines: int) -> None:
    """Rows straight through sqlite3: building the data set is not what is measured."""
    job = JobSpec(namespace=NAMESPACE, name="job", image="busybox")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    line = "x" * 80
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA synchronous = OFF")
        insert = "INSERT INTO run_specs (hash, spec, uses) VALUES (?, ?, ?)"
        spec_id = db.execute(insert, (job.spec_hash(), job.canonical_json(), runs)).lastrowid
        for first in range(1, runs + 1, 10_000):
            ids = range(first, min(first + 10_000, runs + 1))
            stamps = {
                i: (start + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ") for i in ids
            }
            db.executemany(
                "INSERT INTO runs (id, namespace, job, revision, trigger, status, created_at, "
                "finished_at, spec_id, log_bytes) VALUES (?, ?, ?, 1, 'schedule', ?, ?, ?, ?, ?)",
                [
                    (i, NAMESPACE, f"job{i % JOBS}", "failed" if i % 7 == 0 else "completed",
                     stamps[i], stamps[i], spec_id, lines * 81)
                    for i in ids
                ],
            )  # fmt: skip
            db.executemany(
                "INSERT INTO run_events (run_id, time, type, message) VALUES (?, ?, ?, ?)",
                [(i, stamps[i], kind, kind) for i in ids for kind in ("created", "finished")],
            )
            db.executemany(
                "INSERT INTO log_lines (run_id, seq, attempt, stream, time, line) "
                "VALUES (?, ?, 1, 1, 0, ?)",
                [(i, seq, line) for i in ids for seq in range(1, lines + 1)],
            )
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def measure(args: argparse.Namespace, root: Path) -> list[tuple[str, float, int, float]]:
    config = load_config(None, {"database": root / "b.db", "socket": root / "b.sock"}, environ={})
    store = Store(config.database)
    await store.open()  # migrations and pragmas, as the daemon makes the file
    await store.close()
    began = time.perf_counter()
    fill(config.database, args.runs, args.lines)
    rows = [("fill (not prune)", time.perf_counter() - began, args.runs, size_mib(config.database))]
    await store.open()
    engine = Engine(store, NoContainers(), config)  # type: ignore[arg-type]
    try:
        keep = args.keep_last
        steps: list[tuple[str, dict[str, Any]]] = [
            (f"--keep-last {keep} --dry-run", {"dry_run": True, "keep_last": keep}),
            (f"--keep-last {keep}", {"dry_run": False, "keep_last": keep}),
            ("--older-than 0s (the rest)", {"dry_run": False, "older_than": datetime.now(UTC)}),
        ]
        for label, options in steps:
            began = time.perf_counter()
            dry_run = options.pop("dry_run")
            result = await engine.prune(NAMESPACE, False, dry_run, **options)
            elapsed = time.perf_counter() - began
            rows.append((label, elapsed, len(result.run_ids), size_mib(config.database)))
    finally:
        await store.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--lines", type=int, default=10, help="log lines per run")
    parser.add_argument("--keep-last", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rjprune", dir="/tmp") as tmp:
        rows = asyncio.run(measure(args, Path(tmp)))
    print(
        f"{args.runs} runs of {JOBS} jobs, {args.lines} log lines of 80 bytes and 2 events each; "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )
    print(f"{'step':32} {'seconds':>8} {'runs':>8} {'db MiB':>8}")
    for label, seconds, count, size in rows:
        print(f"{label:32} {seconds:8.2f} {count:8d} {size:8.1f}")


if __name__ == "__main__":
    main()
