"""Parallel completions: one run fans out into `completions` child runs, `parallelism` at once.

Each completion is a whole run of its own (the Kubernetes Job → Pod split): it has its
container, its attempts and retries, its deadline, its logs, and it is reconciled after
a restart like any run. The parent runs no container: it starts the next indexes as
slots free up and concludes from its children — completed when every index succeeded,
failed as soon as one index has failed for good (the others are then cancelled),
cancelled when cancelled. Children take slots of `max_concurrent_runs`; the parent
takes none, so a fan-out can never starve its own children.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog

from ringjobs.exceptions import Conflict
from ringjobs.models import FailureReason, JobSpec, Run, RunStatus, StopIntent, utcnow

if TYPE_CHECKING:
    from ringjobs.engine.engine import Engine

log = structlog.get_logger(__name__)

COMPLETION_INDEX_VAR = "RINGJOBS_COMPLETION_INDEX"
_RECHECK = 5.0  # seconds; children's ends wake the parent, this only backs that up


def completion_spec(spec: JobSpec, index: int) -> JobSpec:
    """The snapshot a completion runs: the parent's, with its index, never fanning out."""
    return spec.model_copy(
        update={
            "environment": {**spec.environment, COMPLETION_INDEX_VAR: str(index)},
            "completions": 1,
            "parallelism": 1,
            "concurrency_policy": "Allow",  # the parent already passed its job's policy
        }
    )


class FanOut:
    """Drives one parent run to a terminal status through its completions."""

    def __init__(self, engine: Engine, parent: Run) -> None:
        self.engine = engine
        self.store = engine.store
        self.parent = parent
        self.changed = asyncio.Event()
        self._stopping: set[int] = set()
        self._culprit: Run | None = None

    @property
    def width(self) -> int:
        return min(self.parent.spec.parallelism, self.parent.spec.completions)

    async def execute(self) -> None:
        parent, spec = self.parent, self.parent.spec
        claimed = await self.store.claim_pending(
            parent.id,
            (
                "fan_out",
                f"{spec.completions} completions, up to {self.width} at once",
            ),
            RunStatus.RUNNING,
            attempt=1,
            stop_intent=parent.stop_intent,  # a cancel from before a restart still holds
        )
        if not claimed:
            return  # cancelled while it waited
        if parent.stop_intent is StopIntent.CANCEL:
            self.engine.ctx.stop_requests.setdefault(parent.id, asyncio.Event()).set()
        await self.store.update_run(
            parent.id, only_if_active=True, started_at=parent.started_at or utcnow()
        )
        self.engine.notifier.notify(parent.id)
        while True:
            self.changed.clear()  # before reading: a change during the read is not missed
            children = await self.store.child_runs(parent.id)
            if await self._concluded(children):
                return
            await self._start_more(children)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), _RECHECK)

    def _stop_requested(self) -> bool:
        request = self.engine.ctx.stop_requests.get(self.parent.id)
        return request is not None and request.is_set()

    async def _start_more(self, children: list[Run]) -> None:
        if self._stop_requested():
            return
        present = {c.completion_index for c in children}
        active = sum(1 for c in children if not c.status.is_terminal)
        for index in range(self.parent.spec.completions):
            if active >= self.width:
                break
            if index in present:
                continue
            child_id = await self.store.create_child_run(
                self.parent, index, completion_spec(self.parent.spec, index)
            )
            await self.store.add_event(
                self.parent.id,
                "completion_created",
                f"completion {index}: run {child_id}",
                {"completion_index": index, "run_id": child_id},
            )
            self.engine.enqueue(child_id)
            active += 1

    async def _concluded(self, children: list[Run]) -> bool:
        """Write the parent's final status if its children decide it; True if written."""
        active = [c for c in children if not c.status.is_terminal]
        # A completion whose status is final may still be removing its container.
        settling = any(self.engine.is_executing(c.id) for c in children)
        if self._culprit is None:  # the first to end badly decides, not those we stop after
            self._culprit = next(
                (c for c in children if c.status is RunStatus.FAILED),
                next((c for c in children if c.status is RunStatus.CANCELLED), None),
            )
        cancelled = self._stop_requested()
        if cancelled or self._culprit is not None:
            for child in active:
                await self._stop_child(child, "its run was cancelled" if cancelled else "")
            if active or settling:
                return False  # conclude once every completion has stopped
            await self._finish_stopped(children, self._culprit, cancelled)
            return True
        succeeded = sum(1 for c in children if c.status is RunStatus.COMPLETED)
        if succeeded < self.parent.spec.completions or settling:
            return False
        await self._finish(
            RunStatus.COMPLETED,
            f"all {succeeded} completions exited 0",
            exit_code=0,
            image_id=children[0].image_id,
            image=self.parent.image or children[0].image,  # a live source's, if from:
        )
        return True

    async def _stop_child(self, child: Run, why: str) -> None:
        if child.id in self._stopping:
            return
        self._stopping.add(child.id)
        reason = why or "another completion failed"
        with contextlib.suppress(Conflict):  # it ended meanwhile
            await self.engine.cancel(child.id, None, why=f"run {self.parent.id}: {reason}")

    async def _finish_stopped(
        self, children: list[Run], culprit: Run | None, cancelled: bool
    ) -> None:
        done = sum(1 for c in children if c.status is RunStatus.COMPLETED)
        tally = f"{done} of {self.parent.spec.completions} completions had succeeded"
        if cancelled or culprit is None or culprit.status is RunStatus.CANCELLED:
            who = ""
            if not cancelled and culprit is not None:
                who = f" (completion {culprit.completion_index})"
            await self._finish(
                RunStatus.CANCELLED,
                f"cancelled{who}; {tally}",
                stop_intent=StopIntent.CANCEL,
            )
            return
        await self._finish(
            RunStatus.FAILED,
            f"completion {culprit.completion_index} (run {culprit.id}) failed: "
            f"{culprit.message or culprit.reason}; {tally}",
            reason=culprit.reason,
            exit_code=culprit.exit_code,
            oom_killed=culprit.oom_killed,
            image_id=culprit.image_id,
            image=self.parent.image or culprit.image,
        )

    async def _finish(
        self,
        status: RunStatus,
        message: str,
        reason: FailureReason | None = None,
        **fields: Any,
    ) -> None:
        parent = self.parent
        text = f"failed: {reason}: {message}" if status is RunStatus.FAILED else message
        written = await self.store.update_run(
            parent.id,
            ("finished", text),
            only_if_active=True,
            status=status,
            message=message,
            finished_at=utcnow(),
            reason=reason,
            **fields,
        )
        self.engine.notifier.notify(parent.id)
        if written:
            self.engine.ctx.metrics.run_finished(parent.namespace, status, reason)
            log.info("fan_out_finished", run_id=parent.id, status=str(status))
