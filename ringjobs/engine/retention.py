"""A job's own `history_limit`, enforced after each of its runs finishes (SPEC 10).

Runs finishing in a burst are coalesced: each job is trimmed once, in the
background, so a run's task never waits for a prune of its own job.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from ringjobs.store import Store
from ringjobs.store.schedules import JobKey, ScheduleStore

log = structlog.get_logger(__name__)

# Deletes runs (and their leftover containers); returns how many runs went.
RunRemover = Callable[[list[int]], Awaitable[int]]


class HistoryKeeper:
    """Trims finished runs beyond each job's history_limit, oldest first."""

    def __init__(self, store: Store, remove_runs: RunRemover) -> None:
        self.store = store
        self.schedules = ScheduleStore(store)
        self.remove_runs = remove_runs
        self._due: set[JobKey] = set()
        self._worker: asyncio.Task[None] | None = None

    def run_finished(self, namespace: str, job: str) -> None:
        self._due.add((namespace, job))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="history-limit")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker

    async def idle(self) -> None:
        """Until every due job is trimmed (tests)."""
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)

    async def _work(self) -> None:
        while self._due:
            namespace, job = self._due.pop()
            try:
                await self.enforce(namespace, job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("history_limit_failed", namespace=namespace, job=job)

    async def enforce(self, namespace: str, job: str) -> int:
        """Apply the job's current history_limit now; returns the number of runs removed."""
        stored = await self.store.get_job(namespace, job)
        limit = stored.spec.history_limit if stored else None
        if limit is None or (limit.succeeded is None and limit.failed is None):
            return 0  # nothing is deleted implicitly without a limit
        excess = await self.schedules.excess_history(namespace, job, limit)
        if not excess:
            return 0
        removed = await self.remove_runs(excess)
        log.info("history_limit_applied", namespace=namespace, job=job, runs_removed=removed)
        return removed
