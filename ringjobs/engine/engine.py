"""The engine: a FIFO queue of runs under `max_concurrent_runs`, and job operations.

It drives a `Runtime` without knowing which one; every change goes to the store
first. On start it reconciles unfinished runs with the containers carrying its
labels; on stop it leaves containers running for the next start to adopt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from ringjobs.config import Config
from ringjobs.engine.executor import EngineContext, RunExecutor
from ringjobs.engine.fanout import FanOut
from ringjobs.engine.logsink import LogSink
from ringjobs.engine.notify import Notifier
from ringjobs.engine.retention import HistoryKeeper
from ringjobs.engine.scheduler import JobChanges
from ringjobs.engine.secretvault import SecretVault
from ringjobs.exceptions import Conflict, EngineUnavailable, NotFound
from ringjobs.models import JobSpec, Run, RunStatus, StopIntent, Trigger, utcnow
from ringjobs.runtime.base import LABEL_ATTEMPT, LABEL_RUN, ContainerState, Runtime
from ringjobs.store import Store
from ringjobs.store.schedules import ScheduledFire
from ringjobs.store.store import ApplyOutcome, RequestAudit
from ringjobs.units import parse_duration, parse_memory

if TYPE_CHECKING:
    from ringjobs.manifest import LoadedManifests
    from ringjobs.secrets import SecretBox

log = structlog.get_logger(__name__)

# Policies whose new run waits until the job's executing run is over.
_WAITS_FOR_ACTIVE = frozenset({"Queue", "Replace"})
_ENGINE_POLL = 2.0  # seconds between checks of an engine that does not answer
_ENGINE_POLL_MAX = 8.0  # the events watcher backs off to this during a long outage


@dataclass(frozen=True)
class PruneResult:
    namespace: str
    dry_run: bool
    run_ids: list[int]
    log_lines_removed: int
    events_removed: int
    containers_removed: int
    cancelled: int


class Engine:
    """Owns the run queue, the executors and the runtime event listener."""

    def __init__(
        self, store: Store, runtime: Runtime, config: Config, secrets: SecretBox | None = None
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.config = config
        self.notifier = Notifier()
        logs = config.logs
        self.sink = LogSink(
            store,
            max_bytes_per_run=parse_memory(logs.max_bytes_per_run),
            max_line_bytes=logs.max_line_bytes,
            flush_interval=parse_duration(logs.flush_interval),
            flush_bytes=parse_memory(logs.flush_bytes),
            on_flush=self.notifier.notify,
        )
        self.ctx = EngineContext(store, runtime, config, self.sink, self.notifier)
        self.secrets = self.ctx.secrets = SecretVault(store, secrets)
        self._pending: deque[int] = deque()
        self._wakeup = asyncio.Event()
        self._job_of: dict[int, tuple[str, str]] = {}
        self._executing: Counter[str] = Counter()
        self._ready = asyncio.Event()
        self._reattacher: asyncio.Task[None] | None = None
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._fanouts: dict[int, FanOut] = {}  # parents of running completions; no slot
        self._fanout_tasks: dict[int, asyncio.Task[None]] = {}
        self._background: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        self._reconciled = True
        self.engine_ok = False
        self.history = HistoryKeeper(store, self.remove_runs)
        self.jobs_changed = JobChanges()  # noted on apply and delete: the scheduler reloads

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.sink.start()
        try:
            await self.reconcile()
            self.engine_ok = True
            self._ready.set()
        except EngineUnavailable as exc:
            # Without the engine we cannot tell running from lost: decide once it answers.
            log.warning("reconcile_deferred", error=str(exc))
            self._reconciled = False
        self._background.append(asyncio.create_task(self._watch_events(), name="events"))
        self._background.append(asyncio.create_task(self._supervise(), name="supervisor"))

    def stop_starting(self) -> None:
        """The first step of a shutdown: no run starts from now on; started ones go on."""
        for task in self._background:
            if task.get_name() == "supervisor":
                task.cancel()

    async def stop(self) -> None:
        """Stop starting runs and stop following containers; they keep running."""
        tasks = [*self._background, *self._fanout_tasks.values(), *self._tasks.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.history.stop()
        await self.sink.stop()

    async def wait_idle(self) -> None:
        """Until no run is queued or executing (tests and burst mode)."""
        while True:
            self._changed.clear()  # clear before checking, so no change is missed
            if not self._tasks and not self._pending and not self._fanout_tasks:
                return
            await self._changed.wait()

    @property
    def active_count(self) -> int:
        return len(self._tasks)

    def is_executing(self, run_id: int) -> bool:
        return run_id in self._tasks or run_id in self._fanout_tasks

    def _executing_runs(self) -> set[int]:
        """The runs is_executing() is true of, as a set: a prune tests 100,000 ids."""
        return self._tasks.keys() | self._fanout_tasks.keys()

    @property
    def queued_count(self) -> int:
        return len(self._pending)

    async def refresh_engine_status(self) -> bool:
        """Ask the runtime now (health, /metrics) instead of trusting the last event."""
        try:
            self.engine_ok = bool(await self.runtime.version())
        except EngineUnavailable:
            self.engine_ok = False
        return self.engine_ok

    # -- queue -----------------------------------------------------------------------

    def enqueue(self, run_id: int, spec: JobSpec | None = None) -> None:
        """Queue a pending run; with its spec, the queue needs no read to place it."""
        if spec is not None:
            self._job_of[run_id] = (spec.key, spec.concurrency_policy)
        if run_id not in self._pending:
            self._pending.append(run_id)
        self._wakeup.set()

    def queue_position(self, run_id: int) -> int | None:
        """1-based place of a pending run in the FIFO queue, None if not queued."""
        try:
            return self._pending.index(run_id) + 1
        except ValueError:
            return None

    async def _supervise(self) -> None:
        await self._ready.wait()  # never start runs before unfinished ones are reconciled
        while True:
            try:
                await self._start_next()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("supervisor_error")  # e.g. a store hiccup: try again shortly
                await asyncio.sleep(1.0)

    async def _start_next(self) -> None:
        run_id = await self._next_startable()
        try:
            run = await self.store.get_run(run_id)
        except BaseException:
            self._pending.appendleft(run_id)  # keep its place for the next try
            raise
        if run is not None and run.status == RunStatus.PENDING and run.fans_out:
            self._spawn_fan_out(run)
        elif run is not None and run.status == RunStatus.PENDING:
            executor = RunExecutor(self.ctx, run)
            self._spawn(run, executor.execute(), executor)
        self._changed.set()

    async def _next_startable(self) -> int:
        """The oldest queued run not held back by capacity, the engine, or its job's policy."""
        while True:
            self._wakeup.clear()
            if len(self._tasks) < self.config.max_concurrent_runs and self.engine_ok:
                for run_id in list(self._pending):
                    key, policy = await self._queued_job(run_id)
                    if policy in _WAITS_FOR_ACTIVE and self._executing[key]:
                        continue  # its job already has a run executing: keep its place
                    self._pending.remove(run_id)
                    self._job_of.pop(run_id, None)
                    return run_id
            # Nothing queued: sleep until enqueue() wakes us (an idle daemon makes no ticks).
            # Something queued but held back: look again at least every _ENGINE_POLL.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), _ENGINE_POLL if self._pending else None)

    async def _queued_job(self, run_id: int) -> tuple[str, str]:
        if run_id not in self._job_of:
            run = await self.store.get_run(run_id)
            spec = run.spec if run else None
            self._job_of[run_id] = (spec.key, spec.concurrency_policy) if spec else ("", "")
        return self._job_of[run_id]

    def _spawn_fan_out(self, run: Run) -> None:
        fan_out = self._fanouts[run.id] = FanOut(self, run)
        self._executing[run.spec.key] += 1

        async def guarded() -> None:
            try:
                await fan_out.execute()
                self.history.run_finished(run.namespace, run.job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fan_out_crashed", run_id=run.id)
                self._fanout_retry_later(run.id)
            finally:
                self._release(run)
                self._fanouts.pop(run.id, None)
                self._fanout_tasks.pop(run.id, None)
                self.ctx.stop_requests.pop(run.id, None)
                self.notifier.notify(run.id)
                self._changed.set()
                self._wakeup.set()

        self._fanout_tasks[run.id] = asyncio.create_task(guarded(), name=f"fan-out-{run.id}")

    def _fanout_retry_later(self, run_id: int) -> None:
        """A store hiccup in a parent: put it back in the queue; it resumes its children."""

        async def requeue() -> None:
            with contextlib.suppress(Exception):
                run = await self._run(run_id)
                if not run.status.is_terminal:
                    await self._requeue(run, "its coordinator hit an error")

        asyncio.get_running_loop().call_later(
            _ENGINE_POLL, lambda: asyncio.ensure_future(requeue())
        )

    def _release(self, run: Run) -> None:
        """One executing run less for its job's Queue/Replace policy."""
        key = run.spec.key
        self._executing[key] -= 1
        if not self._executing[key]:
            del self._executing[key]

    def _child_changed(self, run: Run) -> None:
        """A completion moved on: its parent looks again."""
        if run.parent_id is not None and (parent := self._fanouts.get(run.parent_id)):
            parent.changed.set()

    def _spawn(self, run: Run, work: Awaitable[None], executor: RunExecutor) -> None:
        run_id = run.id
        if run.parent_id is None:  # a completion is covered by its parent's count
            self._executing[run.spec.key] += 1

        async def guarded() -> None:
            finished = False
            try:
                await work
                finished = executor.retry_after is None and not executor.engine_lost
                if executor.retry_after is not None:  # the slot is free during the backoff
                    asyncio.get_running_loop().call_later(
                        executor.retry_after, self.enqueue, run_id
                    )
                if executor.engine_lost or executor.store_lost:
                    self._reattach_later()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("run_crashed", run_id=run_id)
            finally:
                if run.parent_id is None:
                    self._release(run)
                self._tasks.pop(run_id, None)
                self.ctx.stop_requests.pop(run_id, None)
                self.notifier.notify(run_id)
                self._child_changed(run)
                self._changed.set()
                self._wakeup.set()
                if finished and run.parent_id is None:  # a parent's end counts, not each index
                    self.history.run_finished(run.namespace, run.job)

        self._tasks[run_id] = asyncio.create_task(guarded(), name=f"run-{run_id}")

    def _reattach_later(self) -> None:
        """Re-adopt runs whose engine went away, once it answers (one waiter at a time)."""
        self._reconciled = False
        if self._reattacher is None or self._reattacher.done():
            self._reattacher = asyncio.create_task(self._reconcile_when_back(), name="reattach")
            self._background.append(self._reattacher)

    async def _reconcile_when_back(self) -> None:
        while not self._reconciled:
            await asyncio.sleep(_ENGINE_POLL)
            self._reconciled = True  # before: a run that fails again meanwhile clears it
            try:
                self.engine_ok = bool(await self.runtime.version())
                await self.reconcile()
                self._ready.set()
            except Exception as exc:
                self._reconciled = False
                self.engine_ok = False
                log.warning("reattach_pending", error=str(exc))

    async def _watch_events(self) -> None:
        """OOM events complement State.OOMKilled; also re-reconciles after engine outages."""
        delay = _ENGINE_POLL
        while True:
            try:
                self.engine_ok = bool(await self.runtime.version())
                delay = _ENGINE_POLL  # it answers: the next loss starts a fresh backoff
                if not self._reconciled:
                    await self.reconcile()
                    self._reconciled = True
                    self._ready.set()
                async for event in self.runtime.events():
                    if event.action == "oom":
                        self.ctx.oom_seen.add(event.container_id)
            except asyncio.CancelledError:
                raise
            except EngineUnavailable as exc:
                self.engine_ok = False
                log.warning("engine_unavailable", error=str(exc))
            except Exception:
                self.engine_ok = False
                log.exception("events_watch_failed")
            self._wakeup.set()
            await asyncio.sleep(delay)
            delay = min(2 * delay, _ENGINE_POLL_MAX)

    # -- jobs ------------------------------------------------------------------------

    async def apply(
        self, loaded: LoadedManifests, caller_uid: int | None, audit: RequestAudit | None = None
    ) -> list[ApplyOutcome]:
        outcomes = await self.store.apply(
            loaded.namespaces, loaded.jobs, _starts_on_apply, caller_uid, audit
        )
        for outcome in outcomes:
            if outcome.run_id is not None:
                self.enqueue(outcome.run_id)
                await self._replace_others(outcome.spec, outcome.run_id)
        changed = [(o.spec.namespace, o.spec.name) for o in outcomes if o.action != "unchanged"]
        if changed:
            self.jobs_changed.note(changed)
        return outcomes

    async def _replace_others(self, spec: JobSpec, run_id: int) -> None:
        """Replace: cancel the job's other active runs; the new one waits for them to end."""
        if spec.concurrency_policy != "Replace":
            return
        for other in await self.store.active_run_ids(spec.namespace, spec.name):
            if other != run_id:
                with contextlib.suppress(Conflict):
                    await self.cancel(other, None, why=f"run {run_id} (concurrency_policy Replace)")

    async def start_job_run(
        self,
        namespace: str,
        name: str,
        caller_uid: int | None,
        customize: Callable[[JobSpec], JobSpec] = lambda spec: spec,
        audit: RequestAudit | None = None,
    ) -> Run:
        """A run of the job's current revision (trigger manual), with per-run overrides."""
        job = await self.store.get_job(namespace, name)
        if job is None:
            raise NotFound(f"job {namespace}/{name} does not exist; apply its manifest first")
        spec = customize(job.spec)
        return await self._start(spec, job.revision, Trigger.MANUAL, caller_uid, audit=audit)

    async def start_scheduled_run(self, namespace: str, name: str, fire: ScheduledFire) -> Run:
        """A run for one fire of the job's schedule (trigger schedule), under its policy.

        Raises Conflict when Forbid skips it, FireAlreadyHandled when the fire has a run.
        """
        job = await self.store.get_job(namespace, name)
        if job is None:
            raise NotFound(f"job {namespace}/{name} does not exist")
        return await self._start(job.spec, job.revision, Trigger.SCHEDULE, None, fire)

    async def rerun(
        self,
        run_id: int,
        caller_uid: int | None,
        customize: Callable[[JobSpec], JobSpec] = lambda spec: spec,
        audit: RequestAudit | None = None,
    ) -> Run:
        """Replay a run's immutable snapshot (trigger rerun), with per-run overrides."""
        source = await self._run(run_id)
        spec = customize(source.spec)
        return await self._start(spec, source.revision, Trigger.RERUN, caller_uid, audit=audit)

    async def _start(
        self,
        spec: JobSpec,
        revision: int,
        trigger: Trigger,
        caller_uid: int | None,
        fire: ScheduledFire | None = None,
        audit: RequestAudit | None = None,
    ) -> Run:
        run_id = await self.store.create_run(
            spec,
            revision,
            trigger,
            caller_uid,
            refuse_if_active=spec.concurrency_policy == "Forbid",
            fire=fire,
            audit=audit,
        )
        self.enqueue(run_id, spec)
        await self._replace_others(spec, run_id)
        return await self._run(run_id)

    async def delete_job(self, namespace: str, name: str) -> None:
        if await self.store.get_job(namespace, name) is None:
            raise NotFound(f"job {namespace}/{name} does not exist")
        active = await self.store.active_run_ids(namespace, name)
        if active:
            raise Conflict(
                f"job {namespace}/{name} has active runs ({', '.join(map(str, active))}); "
                "wait for them to finish before deleting it"
            )
        await self.store.delete_job(namespace, name)
        self.jobs_changed.note([(namespace, name)])

    async def exec_run(
        self, spec: JobSpec, caller_uid: int | None, audit: RequestAudit | None = None
    ) -> Run:
        """Start a one-off run (trigger exec): no job definition, always allowed to run."""
        run_id = await self.store.create_run(spec, 0, Trigger.EXEC, caller_uid, audit=audit)
        self.enqueue(run_id, spec)
        return await self._run(run_id)

    async def cancel(self, run_id: int, caller_uid: int | None, why: str = "") -> Run:
        """Cancel a pending run (it never starts) or stop a running one (SIGTERM, grace, KILL)."""
        run = await self._run(run_id)
        if run.status.is_terminal:
            raise Conflict(f"run {run_id} already finished ({run.status}); nothing to cancel")
        who = why or (f"uid {caller_uid}" if caller_uid is not None else "the API")
        await self.store.add_event(
            run_id, "cancel_requested", f"cancel requested by {who}", {"caller_uid": caller_uid}
        )
        if run.fans_out:  # its coordinator has no container to carry the intent: keep it
            await self.store.update_run(run_id, only_if_active=True, stop_intent=StopIntent.CANCEL)
        self.ctx.stop_requests.setdefault(run_id, asyncio.Event()).set()
        if (fan_out := self._fanouts.get(run_id)) is not None:
            fan_out.changed.set()  # it stops its completions, then concludes
        message = f"cancelled by {who} before it started"
        if await self.store.claim_pending(
            run_id,
            ("finished", message),
            RunStatus.CANCELLED,
            attempt=run.attempt,
            stop_intent=StopIntent.CANCEL,
            message=message,
        ):
            self.notifier.notify(run_id)
            self.ctx.stop_requests.pop(run_id, None)  # it will never be executed
            if run.parent_id is None:
                self.ctx.metrics.run_finished(run.namespace, RunStatus.CANCELLED, None)
                self.history.run_finished(run.namespace, run.job)
            self._child_changed(run)
            if run.fans_out:  # queued again after a restart, its completions may be live
                await self._cancel_children(run, who)
        return await self._run(run_id)

    async def _cancel_children(self, parent: Run, who: str) -> None:
        for child in await self.store.child_runs(parent.id):
            if not child.status.is_terminal:
                with contextlib.suppress(Conflict):
                    await self.cancel(child.id, None, why=f"{who} (run {parent.id} cancelled)")

    async def _run(self, run_id: int) -> Run:
        run = await self.store.get_run(run_id)
        if run is None:
            raise NotFound(f"run {run_id} does not exist")
        return run

    # -- prune -----------------------------------------------------------------------

    async def prune(
        self,
        namespace: str,
        include_active: bool,
        dry_run: bool,
        older_than: datetime | None = None,
        keep_last: int = 0,
        statuses: list[str] | None = None,
    ) -> PruneResult:
        found = await self.store.prunable_runs(
            namespace, include_active, older_than, keep_last, statuses
        )
        active = len(found.active)
        if dry_run:  # completions go with their run: list them as the real prune would
            ids = await self.store.with_children(found.run_ids)
            return PruneResult(namespace, True, ids, 0, 0, 0, active)
        for run_id in found.active:
            await self._cancel_for_prune(run_id)
        # Never delete a run still executing.
        executing = self._executing_runs()
        ids = [i for i in found.run_ids if i not in executing]
        ids = await self.store.with_children(ids)
        executing = self._executing_runs()  # as of now: the last await may have changed it
        ids = [i for i in ids if i not in executing]
        containers = await self._remove_leftovers(set(ids))
        lines, events = await self.store.delete_runs(ids)
        return PruneResult(namespace, False, ids, lines, events, containers, active)

    async def remove_runs(self, run_ids: list[int]) -> int:
        """Delete finished runs with their logs, events and leftover containers."""
        ids = [i for i in await self.store.with_children(run_ids) if not self.is_executing(i)]
        if not ids:
            return 0
        try:
            await self._remove_leftovers(set(ids))
        except EngineUnavailable as exc:  # the next start sweeps containers of unknown runs
            log.warning("leftover_containers_kept", error=str(exc))
        await self.store.delete_runs(ids)
        return len(ids)

    async def _cancel_for_prune(self, run_id: int) -> None:
        with contextlib.suppress(Conflict):  # it finished meanwhile: nothing to cancel
            await self.cancel(run_id, None, why="namespace prune --all")
        task = self._tasks.get(run_id) or self._fanout_tasks.get(run_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), 120)

    async def _remove_leftovers(self, run_ids: set[int]) -> int:
        removed = 0
        for container in await self.runtime.list_managed(self.store.instance_id):
            if _run_label(container) in run_ids:
                await self.runtime.remove(container.id)
                removed += 1
        return removed

    # -- reconciliation --------------------------------------------------------------

    async def reconcile(self) -> None:
        """Bring every unfinished run in line with what the runtime really has."""
        runs = await self.store.active_runs()
        containers, older = await self._containers_by_run()
        for run_id, container in older:  # an earlier attempt's container, kept or left
            await self._sweep(run_id, container)
        for run in runs:
            await self._reconcile_run(run, containers.pop(run.id, None))
        for run_id, container in containers.items():
            await self._sweep(run_id, container)

    async def _sweep(self, run_id: int, container: ContainerState) -> None:
        """A container of a finished or pruned run: remove it when its keep time is over."""
        run = await self.store.get_run(run_id)
        keep = run.spec.keep_container_seconds if run else None
        finished = run.finished_at if run else None
        left = (keep or 0) - ((utcnow() - finished).total_seconds() if finished else 0)
        if run is None or left <= 0:
            await self.runtime.remove(container.id)
            if run is not None:
                await self.store.add_event(
                    run_id, "container_removed", f"container {container.id[:12]} removed"
                )
            return
        loop = asyncio.get_running_loop()
        loop.call_later(left, lambda: asyncio.ensure_future(self._sweep(run_id, container)))

    async def _containers_by_run(
        self,
    ) -> tuple[dict[int, ContainerState], list[tuple[int, ContainerState]]]:
        """Each run's latest attempt's container, and the older attempts' containers."""
        found = await self.runtime.list_managed(
            self.store.instance_id
        )  # EngineUnavailable: nothing is decided
        latest: dict[int, ContainerState] = {}
        older: list[tuple[int, ContainerState]] = []
        for container in sorted(found, key=_attempt_label):
            run_id = _run_label(container)
            if run_id is None:
                continue
            if run_id in latest:
                older.append((run_id, latest[run_id]))
            latest[run_id] = container
        return latest, older

    async def _reconcile_run(self, run: Run, container: ContainerState | None) -> None:
        if self.is_executing(run.id) or run.id in self._pending:
            return  # already being executed or queued by this daemon
        if run.status == RunStatus.PENDING:
            if container is not None:  # a pending run's container is a finished attempt's
                await self._sweep(run.id, container)
            self.enqueue(run.id)
        elif run.fans_out:
            await self._requeue(run, "its completions are followed again")
        elif container is not None and container.status == "created":
            # Created but never started: starting it afresh cannot run it twice.
            await self.runtime.remove(container.id)
            await self._requeue(run, "container was created but never started")
        elif container is not None:
            # Adopted without waiting for a slot: it runs already, and startup must not block.
            executor = RunExecutor(self.ctx, run)
            self._spawn(run, executor.resume(container), executor)
        elif run.container_id is None:
            await self._requeue(run, "no container was created before the restart")
        else:
            await self.store.update_run(
                run.id,
                ("finished", "container disappeared while the daemon was down"),
                only_if_active=True,
                status=RunStatus.FAILED,
                reason="lost",
                message=f"container {run.container_id[:12]} was removed by someone else",
                finished_at=utcnow(),
            )
            if run.parent_id is None:
                self.history.run_finished(run.namespace, run.job)

    async def _requeue(self, run: Run, why: str) -> None:
        """A run whose container never started: its attempt is made again, not counted."""
        await self.store.update_run(
            run.id,
            ("requeued", f"daemon restarted: {why}"),
            only_if_active=True,
            status=RunStatus.PENDING,
            attempt=max(run.attempt - 1, 0),
        )
        self.enqueue(run.id)


def _starts_on_apply(spec: JobSpec, active_run_ids: list[int]) -> bool:
    """A new revision starts a run unless scheduled, suspended, or Forbid-blocked."""
    if spec.schedule or spec.suspend:
        return False
    return not (active_run_ids and spec.concurrency_policy == "Forbid")


def _attempt_label(container: ContainerState) -> int:
    value = container.labels.get(LABEL_ATTEMPT, "")
    return int(value) if value.isdigit() else 0


def _run_label(container: ContainerState) -> int | None:
    value = container.labels.get(LABEL_RUN, "")
    return int(value) if value.isdigit() else None
