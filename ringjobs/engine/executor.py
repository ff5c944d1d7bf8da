"""The lifecycle of one run: image, container, logs, wait, finalize, remove.

Each transition is written to the store before it is acted on or reported: the
intent to stop is saved before the signal, logs and exit state are saved before
the container is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import structlog

from ringjobs.config import Config
from ringjobs.engine.containers import (
    ConfigProblem,
    container_spec,
    network_name,
)
from ringjobs.engine.lines import split_all, unseen_lines
from ringjobs.engine.logsink import LogSink, RunLog
from ringjobs.engine.metrics import EngineMetrics
from ringjobs.engine.notify import Notifier
from ringjobs.engine.outcome import classify_exit
from ringjobs.engine.prepare import PreparedAttempt, prepare_attempt
from ringjobs.engine.source import SourceNotFound, SourceProblem
from ringjobs.exceptions import EngineUnavailable, StoreUnavailable
from ringjobs.models import FailureReason, Run, RunStatus, StopIntent, utcnow
from ringjobs.retry import backoff_delay, should_retry
from ringjobs.runtime.base import (
    LABEL_MANAGED,
    ContainerNotFound,
    ContainerSpec,
    ContainerState,
    ImageInfo,
    ImageNotFound,
    OutputChunk,
    Runtime,
    StartFailed,
)
from ringjobs.store import Store

if TYPE_CHECKING:
    from ringjobs.engine.secretvault import SecretVault

log = structlog.get_logger(__name__)
A = TypeVar("A")
B = TypeVar("B")


class RunAlreadyFinal(Exception):
    """The run was finished elsewhere (cancel, prune); this executor must stop writing."""


_DRAIN_TIMEOUT = 30.0
_ANCHOR_LINES = 5  # stored lines looked for in Docker's log when counting cannot be trusted
_ROTATION_GAP = (
    "[ringjobs] some {stream} lines written while the daemon was down are lost: Docker's "
    "log had rotated past them (raise logs.docker_max_size to keep more)"
)  # after exit, how long the attach stream may take to end
_OOM_RECHECK_DELAY = 0.5  # Docker can report OOMKilled a moment after the exit


@dataclass
class EngineContext:
    """What an executor needs from the engine; the engine owns it."""

    store: Store
    runtime: Runtime
    config: Config
    sink: LogSink
    notifier: Notifier
    oom_seen: set[str] = field(default_factory=set)
    stop_requests: dict[int, asyncio.Event] = field(default_factory=dict)
    metrics: EngineMetrics = field(default_factory=EngineMetrics)
    secrets: SecretVault | None = None  # None: runs with a secretRef fail with config_error


_FAILURES: list[tuple[type[BaseException], FailureReason]] = [
    (ImageNotFound, FailureReason.IMAGE_NOT_FOUND),
    (ConfigProblem, FailureReason.CONFIG_ERROR),
    (SourceNotFound, FailureReason.SOURCE_NOT_FOUND),
    (SourceProblem, FailureReason.CONFIG_ERROR),
    (StartFailed, FailureReason.START_ERROR),
    (ContainerNotFound, FailureReason.LOST),
    (EngineUnavailable, FailureReason.ENGINE_ERROR),
]


class RunExecutor:
    """Drives one run to a terminal status."""

    def __init__(self, ctx: EngineContext, run: Run) -> None:
        self.ctx = ctx
        self.run = run
        self.container_id: str | None = run.container_id
        self.attempt = max(run.attempt, 1)
        self.retry_after: float | None = None  # set when a failed attempt will be retried
        self.engine_lost = False  # the engine went away under a live container
        self.store_lost = False  # the database refused a write: reconcile once it accepts
        self._pump_task: asyncio.Task[None] | None = None
        self._never_started = False  # this executor created the container, not started yet

    async def execute(self) -> None:
        """A pending run: its next attempt, followed to the end."""
        self.attempt = self.run.attempt + 1
        self.container_id = None
        await self._guard(self._execute())

    async def resume(self, container: ContainerState) -> None:
        """A run adopted after a daemon restart whose container exists."""
        self.container_id = container.id
        await self._guard(self._resume(container))

    async def _guard(self, work: Awaitable[None]) -> None:
        try:
            await self._guarded(work)
        finally:
            pump = self._pump_task
            if pump is not None and not pump.done():  # ended abnormally: stop reading
                pump.cancel()
                with contextlib.suppress(BaseException):
                    await pump

    async def _guarded(self, work: Awaitable[None]) -> None:
        try:
            await work
        except RunAlreadyFinal:
            log.info("run_already_final", run_id=self.run.id)  # finished by someone else
            if self._never_started and self.container_id is not None:  # nothing else has it
                with contextlib.suppress(Exception):
                    await self.ctx.runtime.remove(self.container_id)
        except StoreUnavailable as exc:
            # Disk full or read-only: what happened is not on disk, so nothing is reported
            # (no failure could be written either); reconciliation finishes the run later.
            log.warning("run_state_not_saved", run_id=self.run.id, error=str(exc))
            self.store_lost = True
        except EngineUnavailable as exc:
            await self._engine_gone(exc)
        except tuple(cls for cls, _ in _FAILURES) as exc:
            reason = next(r for cls, r in _FAILURES if isinstance(exc, cls))
            await self._fail(reason, str(exc))
        except Exception as exc:
            # A bug or an unexpected engine answer: never leave the run unfinished.
            log.exception("run_crashed", run_id=self.run.id)
            with contextlib.suppress(RunAlreadyFinal):
                await self._fail(FailureReason.ENGINE_ERROR, f"internal error: {exc!r}")

    async def _engine_gone(self, exc: EngineUnavailable) -> None:
        """Losing Docker is not the job failing: a created container is reattached later."""
        if self.container_id is None or self.run.status.is_terminal:
            await self._fail(FailureReason.ENGINE_ERROR, str(exc))
            return
        self.engine_lost = True
        await self.ctx.store.add_event(
            self.run.id, "engine_lost", f"{exc}; the run is reattached when the engine answers"
        )

    # -- fresh run ---------------------------------------------------------------

    async def _execute(self) -> None:
        run = self.run
        # The claim's commit and the image lookup do not depend on each other: overlap
        # them (a run cancelled meanwhile has only cost an inspect).
        claimed, wanted = await asyncio.gather(
            self._claim(), self._wanted_image(run), return_exceptions=True
        )
        if isinstance(claimed, BaseException):
            raise claimed
        if not claimed:
            return  # cancelled while it waited for a slot: whatever the lookup found
        if isinstance(wanted, BaseException):
            raise wanted
        # Live source, namespace settings and secrets: resolved now, at container creation.
        ctx = self.ctx
        prepared = await prepare_attempt(ctx.store, ctx.runtime, ctx.secrets, run, self.attempt)
        image = prepared.image or wanted
        assert image is not None  # a run has an image or a source (validated at apply)
        # From a live source, the run shows the reference the source was created from.
        source = prepared.match.container if prepared.match else None
        shown = source.image if source is not None and source.image else self.run.image
        instance = self.ctx.store.instance_id
        cspec = container_spec(run, self.attempt, image, self.ctx.config, prepared.env, instance)
        cspec, warnings = prepared.container(cspec, run, self.ctx.config.policy)
        for warning in warnings:
            await self.ctx.store.add_event(run.id, "warning", warning)
        # Recording the image goes alongside the network check and the create: the
        # container starts only once both are committed, and after a crash in between
        # the restart removes a created, never started container and makes the attempt
        # again (Engine._reconcile_run). One commit less before Docker's create.
        await _both(
            self._transition(
                ("image_resolved", f"{image.ref} is {image.id}"), image_id=image.id, image=shown
            ),
            self._create(prepared, cspec),
        )
        assert self.container_id is not None
        await self._transition(
            ("container_created", f"container {cspec.name} ({self.container_id[:12]})"),
            container_id=self.container_id,
        )
        if self._stop_requested():
            await self._cancel_before_start()
            return
        # attempt 0: never claimed before, so no line of it is stored (no reads needed).
        writer = await self.ctx.sink.open(run.id, self.attempt, fresh=run.attempt == 0)
        if self.attempt > 1:
            await writer.add_line("system", f"[ringjobs] attempt {self.attempt}".encode())
        stream = await self.ctx.runtime.attach(self.container_id)
        pump = self._pump_task = asyncio.create_task(self._pump(stream, writer))
        await self._start(pump)
        await self._transition(
            ("container_started", "container started"),
            status=RunStatus.RUNNING,
            started_at=utcnow(),
        )
        exit_code = await self._wait_with_deadline()
        await self._drain(pump)
        await self._finalize(exit_code)

    async def _claim(self) -> bool:
        claimed = await self.ctx.store.claim_pending(
            self.run.id,
            ("starting", f"attempt {self.attempt}: resolving image {_image_wanted(self.run)}"),
            RunStatus.STARTING,
            attempt=self.attempt,
        )
        if claimed:
            update = {"status": RunStatus.STARTING, "attempt": self.attempt}
            self.run = self.run.model_copy(update=update)
            self.ctx.notifier.notify(self.run.id)
        return claimed

    async def _wanted_image(self, run: Run) -> ImageInfo | None:
        """The job's own image, pinned by ID; None for a live source (prepare finds it)."""
        if not run.spec.image:
            return None
        return await self.ctx.runtime.resolve_image(run.spec.image, run.spec.image_pull_policy)

    async def _create(self, prepared: PreparedAttempt, cspec: ContainerSpec) -> None:
        """The namespace's network if the container needs it, then the container (its id
        kept at once, so a failure of the step beside it still knows the container)."""
        if prepared.needs_namespace_network(cspec, self.run):
            await self.ctx.runtime.ensure_network(
                network_name(self.run.namespace), {LABEL_MANAGED: "true"}
            )
        self.container_id = await self.ctx.runtime.create(cspec)
        self._never_started = True

    async def _start(self, pump: asyncio.Task[None]) -> None:
        assert self.container_id is not None
        try:
            await self.ctx.runtime.start(self.container_id)
            self._never_started = False
        except BaseException:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
            raise

    def _stop_requested(self) -> bool:
        request = self.ctx.stop_requests.get(self.run.id)
        return request is not None and request.is_set()

    async def _cancel_before_start(self) -> None:
        await self._transition(
            ("finished", "cancelled before its container started"),
            status=RunStatus.CANCELLED,
            stop_intent=StopIntent.CANCEL,
            message="cancelled before its container started",
            finished_at=utcnow(),
        )
        await self._dispose_container()

    # -- adopted run ---------------------------------------------------------------

    async def _resume(self, container: ContainerState) -> None:
        assert self.container_id is not None
        await self.ctx.store.add_event(
            self.run.id, "reattached", f"daemon restarted; container {container.status}"
        )
        if container.running and self.run.stop_intent is not None:
            # The intent was saved but the daemon died before the signal: send it now.
            await self.ctx.runtime.stop(self.container_id, self.run.spec.stop_grace_period_seconds)
        if self.run.status != RunStatus.RUNNING:  # it started before the daemon could say so
            await self._transition(
                ("container_started", f"container found {container.status}"),
                status=RunStatus.RUNNING,
                started_at=utcnow(),
            )
        if container.running:
            exit_code = await self._wait_with_deadline()
        else:
            exit_code = container.exit_code if container.exit_code is not None else -1
        await self._recover_logs()
        await self._finalize(exit_code)

    async def _recover_logs(self) -> None:
        """Store the lines Docker kept that the store lacks (counted per stream)."""
        assert self.container_id is not None
        writer = await self.ctx.sink.open(self.run.id, self.attempt)
        for stream in ("stdout", "stderr"):
            data = await self.ctx.runtime.output(self.container_id, stream)
            retained = split_all(data, self.ctx.sink.max_line_bytes)
            stored = await self.ctx.store.count_log_lines(self.run.id, self.attempt, stream)
            tail = await self._stored_tail(stream)
            lines, gap = unseen_lines(retained, stored, tail)
            if gap:
                await writer.add_line("system", _ROTATION_GAP.format(stream=stream).encode())
            for line in lines:
                await writer.add_line(stream, line)
        await self.ctx.sink.flush()

    async def _stored_tail(self, stream: str) -> list[str]:
        records = await self.ctx.store.tail_logs(self.run.id, _ANCHOR_LINES, stream=stream)
        return [r.line for r in records if r.attempt == self.attempt]

    # -- shared steps ----------------------------------------------------------------

    async def _pump(self, stream: AsyncIterator[OutputChunk], writer: RunLog) -> None:
        async for name, data in stream:
            await writer.feed(name, data)
        await writer.finish()

    async def _drain(self, pump: asyncio.Task[None]) -> None:
        try:
            await asyncio.wait_for(pump, _DRAIN_TIMEOUT)
        except TimeoutError:
            await self.ctx.store.add_event(
                self.run.id, "warning", "the log stream did not end after the container exited"
            )
        await self.ctx.sink.flush()

    async def _wait_with_deadline(self) -> int:
        assert self.container_id is not None
        waiter = asyncio.ensure_future(self.ctx.runtime.wait(self.container_id))
        stop = self.ctx.stop_requests.setdefault(self.run.id, asyncio.Event())
        stopper = asyncio.ensure_future(stop.wait())
        deadline = self._remaining_time()
        try:
            done, _ = await asyncio.wait(
                {waiter, stopper}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED
            )
            if waiter not in done:
                intent = StopIntent.CANCEL if stopper in done else StopIntent.DEADLINE
                await self._stop(intent)
            return await waiter
        finally:
            stopper.cancel()
            if not waiter.done():
                waiter.cancel()

    def _remaining_time(self) -> float | None:
        timeout = self.run.spec.timeout_seconds
        if timeout is None:
            return None
        started = self.run.started_at or utcnow()
        return max(0.0, timeout - (utcnow() - started).total_seconds())

    async def _stop(self, intent: StopIntent) -> None:
        """Record why we stop it, then stop it: SIGTERM, grace period, SIGKILL."""
        assert self.container_id is not None
        grace = self.run.spec.stop_grace_period_seconds
        message = (
            f"deadline of {self.run.spec.timeout_seconds:g}s reached; stopping "
            if intent is StopIntent.DEADLINE
            else "cancel requested; stopping "
        ) + f"with SIGTERM, SIGKILL after {grace:g}s"
        await self._transition((str(intent), message), stop_intent=intent)
        self.run = self.run.model_copy(update={"stop_intent": intent})
        await self.ctx.runtime.stop(self.container_id, grace)

    async def _finalize(self, exit_code: int) -> None:
        assert self.container_id is not None
        oom = await self._oom_killed(exit_code)
        # This executor is the only writer of a live run's stop intent (_stop), and an
        # adopted run was loaded with it: no need to read it back.
        outcome = classify_exit(exit_code, oom, self.run.stop_intent)
        if oom and outcome.status is RunStatus.COMPLETED:
            await self.ctx.store.add_event(
                self.run.id, "warning", "a process was OOM-killed but the job exited 0"
            )
        elif oom:
            await self.ctx.store.add_event(self.run.id, "oom", "OOM-killed (Docker)")
        await self._conclude(
            outcome.status, outcome.reason, outcome.message, exit_code=exit_code, oom_killed=oom
        )
        await self._dispose_container()

    async def _conclude(
        self, status: RunStatus, reason: FailureReason | None, message: str, **fields: object
    ) -> None:
        """The attempt is over: schedule the next one, or write the run's final status."""
        data = {"attempt": self.attempt, "reason": reason, **fields}
        if status is RunStatus.FAILED and should_retry(self.run.spec, reason, self.attempt):
            defaults = self.ctx.config.defaults
            delay = backoff_delay(
                self.attempt, defaults.backoff_base_seconds, defaults.backoff_cap_seconds
            )
            self.retry_after = delay
            attempts = self.run.spec.backoff_limit + 1
            await self._transition(
                (
                    "retry_scheduled",
                    f"attempt {self.attempt} failed ({reason}: {message}); "
                    f"attempt {self.attempt + 1} of {attempts} in {delay:g}s",
                ),
                data={**data, "delay_seconds": delay},
                status=RunStatus.PENDING,
                reason=reason,
                message=message,
                **fields,
            )
            return
        await self._transition(
            (
                "finished",
                f"{status}: {message}"
                if status is not RunStatus.FAILED
                else f"failed: {reason}: {message}",
            ),
            data=data,
            status=status,
            reason=reason,
            message=message,
            finished_at=utcnow(),
            **fields,
        )

    async def _oom_killed(self, exit_code: int) -> bool:
        assert self.container_id is not None
        state = await self.ctx.runtime.inspect(self.container_id)
        if state.oom_killed or self.container_id in self.ctx.oom_seen:
            return True
        if exit_code == 137 and self.run.stop_intent is None:
            await asyncio.sleep(_OOM_RECHECK_DELAY)  # an unexplained 137: ask once more
            state = await self.ctx.runtime.inspect(self.container_id)
            return state.oom_killed or self.container_id in self.ctx.oom_seen
        return False

    async def _dispose_container(self) -> None:
        if self.container_id is None:
            return
        keep = self.run.spec.keep_container_seconds
        if keep:
            await self.ctx.store.add_event(
                self.run.id, "container_kept", f"container kept for {keep:g}s"
            )
            asyncio.get_running_loop().call_later(
                keep, lambda: asyncio.ensure_future(self._remove_quietly())
            )
            return
        await self._remove_quietly()

    async def _remove_quietly(self) -> None:
        assert self.container_id is not None
        try:
            await self.ctx.runtime.remove(self.container_id)
            self.ctx.oom_seen.discard(self.container_id)
            await self.ctx.store.add_event(
                self.run.id, "container_removed", f"container {self.container_id[:12]} removed"
            )
        except Exception as exc:  # the run's status is final: a failed removal is a warning
            log.warning("container_remove_failed", run_id=self.run.id, error=str(exc))
            with contextlib.suppress(Exception):
                await self.ctx.store.add_event(
                    self.run.id, "warning", f"container not removed: {exc}"
                )

    async def _fail(self, reason: FailureReason, message: str) -> None:
        log.info("run_failed", run_id=self.run.id, reason=str(reason), message=message)
        await self._conclude(RunStatus.FAILED, reason, message)
        if self.container_id is not None and reason is not FailureReason.LOST:
            with contextlib.suppress(Exception):
                await self.ctx.runtime.remove(self.container_id)

    async def _transition(
        self, event: tuple[str, str], data: dict[str, object] | None = None, **fields: object
    ) -> None:
        written = await self.ctx.store.update_run(
            self.run.id, event, data, only_if_active=True, **fields
        )
        if not written:
            raise RunAlreadyFinal(self.run.id)
        self.run = self.run.model_copy(update={k: v for k, v in fields.items()})
        self.ctx.notifier.notify(self.run.id)
        if self.run.status.is_terminal and "status" in fields and self.run.parent_id is None:
            self.ctx.metrics.run_finished(self.run.namespace, self.run.status, self.run.reason)


async def _both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Run two steps at once and let both finish; then raise the first one's error, if any.

    Unlike a bare gather, neither step is left running behind an error of the other.
    """
    one, two = await asyncio.gather(first, second, return_exceptions=True)
    for outcome in (one, two):
        if isinstance(outcome, BaseException):
            raise outcome
    return one, two  # type: ignore[return-value]


def _image_wanted(run: Run) -> str:
    source = run.spec.source
    return run.spec.image or (f"of source {source.describe()}" if source else "")
