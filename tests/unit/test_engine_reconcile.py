"""Reconciliation logic with a fake runtime (the real-engine paths are in integration)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ringjobs.config import load_config
from ringjobs.engine.engine import Engine
from ringjobs.engine.executor import RunExecutor
from ringjobs.exceptions import EngineUnavailable, StoreUnavailable
from ringjobs.models import JobSpec, Run, RunStatus, Trigger
from ringjobs.runtime.base import (
    ContainerState,
    ImageInfo,
    ImageNotFound,
    OutputChunk,
    RuntimeEvent,
)
from ringjobs.store import Store


class FakeRuntime:
    """Holds one exited container for run 1; unreachable until `up` is set."""

    def __init__(self) -> None:
        self.up = False
        self.removed: list[str] = []
        self.container = ContainerState(
            id="c" * 64,
            status="exited",
            running=False,
            exit_code=5,
            oom_killed=False,
            error="",
            labels={"io.ringjobs.managed": "true", "io.ringjobs.run": "1"},
        )

    def _check(self) -> None:
        if not self.up:
            raise EngineUnavailable("engine down (fake)")

    async def version(self) -> str:
        self._check()
        return "fake"

    async def list_managed(self, instance: str) -> list[ContainerState]:
        self._check()
        return [self.container]

    async def inspect(self, container_id: str) -> ContainerState:
        self._check()
        return self.container

    async def output(self, container_id: str, stream: str) -> bytes:
        return b"recovered line\n" if stream == "stdout" else b""

    async def remove(self, container_id: str) -> None:
        self.removed.append(container_id)

    async def wait(self, container_id: str) -> int:
        return 5

    async def events(self) -> AsyncIterator[RuntimeEvent]:
        self._check()
        await asyncio.Event().wait()
        yield RuntimeEvent("never", "", {}, 0)

    async def resolve_image(self, ref: str, pull_policy: str) -> ImageInfo:
        raise AssertionError("no new run is expected")

    async def ensure_network(self, name: str, labels: dict[str, str]) -> None: ...
    async def create(self, spec: Any) -> str: ...
    async def attach(self, container_id: str) -> AsyncIterator[OutputChunk]: ...
    async def start(self, container_id: str) -> None: ...
    async def stop(self, container_id: str, grace_seconds: float) -> None: ...
    async def close(self) -> None: ...


async def test_engine_down_at_start_defers_reconciliation(tmp_path: Path) -> None:
    config = load_config(None, {"database": tmp_path / "db", "socket": tmp_path / "s"}, {})
    store = Store(config.database)
    await store.open()
    spec = JobSpec(namespace="ns", name="job", image="img")
    run_id = await store.create_run(spec, 1, Trigger.MANUAL, None)
    await store.update_run(run_id, None, status=RunStatus.RUNNING, container_id="c" * 64, attempt=1)
    runtime = FakeRuntime()
    engine = Engine(store, runtime, config)  # type: ignore[arg-type]
    await engine.start()
    try:
        run = await store.get_run(run_id)
        assert run is not None and run.status == RunStatus.RUNNING  # not marked lost
        runtime.up = True
        deadline = time.monotonic() + 10
        while not (run := await store.get_run(run_id)) or not run.status.is_terminal:
            assert time.monotonic() < deadline, "the run was never reconciled"
            await asyncio.sleep(0.05)
        assert (run.status, run.reason, run.exit_code) == (RunStatus.FAILED, "exit_code", 5)
        assert [r.line for r in await store.read_logs(run_id)] == ["recovered line"]
        assert runtime.removed == ["c" * 64]
    finally:
        await engine.stop()
        await store.close()


async def test_stop_starting_leaves_queued_runs_pending(tmp_path: Path) -> None:
    config = load_config(None, {"database": tmp_path / "db", "socket": tmp_path / "s"}, {})
    store = Store(config.database)
    await store.open()
    runtime = FakeRuntime()
    runtime.up = True
    engine = Engine(store, runtime, config)  # type: ignore[arg-type]
    await engine.start()
    try:
        engine.stop_starting()  # SIGTERM's first step
        spec = JobSpec(namespace="ns", name="job", image="img")
        run_id = await store.create_run(spec, 1, Trigger.MANUAL, None)
        engine.enqueue(run_id)
        for _ in range(20):  # give a (wrongly) live supervisor every chance to take it
            await asyncio.sleep(0.01)
        assert engine.queue_position(run_id) == 1 and engine.active_count == 0
        run = await store.get_run(run_id)
        assert run is not None and run.status == RunStatus.PENDING
    finally:
        await engine.stop()
        await store.close()


class MissingImageRuntime(FakeRuntime):
    """Up, but the image a new run asks for is not on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.up = True
        self.lookups = 0

    async def resolve_image(self, ref: str, pull_policy: str) -> ImageInfo:
        self.lookups += 1
        raise ImageNotFound(f'image "{ref}" is not present (fake)')


async def test_run_cancelled_before_its_claim_stays_cancelled_whatever_the_lookup(
    tmp_path: Path,
) -> None:
    # The executor looks the image up while it claims the run: a run cancelled just
    # before the claim must end cancelled, not failed by the lookup's error.
    config = load_config(None, {"database": tmp_path / "db", "socket": tmp_path / "s"}, {})
    store = Store(config.database)
    await store.open()
    runtime = MissingImageRuntime()
    engine = Engine(store, runtime, config)  # type: ignore[arg-type]
    try:
        spec = JobSpec(namespace="ns", name="job", image="img")
        run_id = await store.create_run(spec, 1, Trigger.MANUAL, None)
        stale = await store.get_run(run_id)  # what the queue read before the cancel
        assert stale is not None
        await engine.cancel(run_id, None)
        await RunExecutor(engine.ctx, stale).execute()
        run = await store.get_run(run_id)
        assert run is not None and (run.status, run.reason) == (RunStatus.CANCELLED, None)
        assert runtime.lookups == 1  # the lookup did run, and its error was dropped
        # The same lookup error on a run that is still pending fails it with the reason.
        run_id = await store.create_run(spec, 1, Trigger.MANUAL, None)
        fresh = await store.get_run(run_id)
        assert fresh is not None
        await RunExecutor(engine.ctx, fresh).execute()
        run = await store.get_run(run_id)
        assert run is not None and (run.status, run.reason) == (RunStatus.FAILED, "image_not_found")
    finally:
        await store.close()


class CreatingRuntime(FakeRuntime):
    """Resolves every image and creates containers; records what it was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.up = True
        self.calls: list[str] = []

    async def resolve_image(self, ref: str, pull_policy: str) -> ImageInfo:
        return ImageInfo(id="sha256:" + "a" * 64, ref=ref)

    async def create(self, spec: Any) -> str:
        self.calls.append("create")
        return "d" * 64

    async def start(self, container_id: str) -> None:
        self.calls.append("start")


async def execute_with_image_record(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    image_record: Callable[[], Awaitable[bool]],
) -> tuple[CreatingRuntime, RunExecutor, Run | None]:
    """A fresh run through the executor, its image_resolved write answered by `image_record`
    (the other writes go to the store); the runtime, the executor and the run after."""
    config = load_config(None, {"database": tmp_path / "db", "socket": tmp_path / "s"}, {})
    store = Store(config.database)
    await store.open()
    runtime = CreatingRuntime()
    engine = Engine(store, runtime, config)  # type: ignore[arg-type]
    real_update = store.update_run

    async def update_run(run_id: int, event: tuple[str, str], *a: Any, **k: Any) -> bool:
        if event[0] == "image_resolved":
            return await image_record()
        return await real_update(run_id, event, *a, **k)

    monkeypatch.setattr(store, "update_run", update_run)
    try:
        spec = JobSpec(namespace="ns", name="job", image="img", network="none")
        run_id = await store.create_run(spec, 1, Trigger.MANUAL, None)
        pending = await store.get_run(run_id)
        assert pending is not None
        executor = RunExecutor(engine.ctx, pending)
        await executor.execute()
        return runtime, executor, await store.get_run(run_id)
    finally:
        await store.close()


async def test_a_container_never_starts_before_its_image_is_on_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The image_resolved record is written while Docker creates the container: if that
    # write fails, the container exists (its id is known) but is never started, and the
    # run stays active for reconciliation (which removes a created container, requeues).
    async def disk_full() -> bool:
        raise StoreUnavailable("disk full (fake)")

    runtime, executor, run = await execute_with_image_record(tmp_path, monkeypatch, disk_full)
    assert runtime.calls == ["create"]  # created beside the failed write, never started
    assert executor.container_id == "d" * 64 and executor.store_lost
    assert run is not None and run.status == RunStatus.STARTING and run.image_id is None


async def test_a_run_finished_elsewhere_while_its_container_is_created_leaves_no_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def already_final() -> bool:
        return False  # only_if_active found the run final (pruned, finished by another)

    runtime, _, _ = await execute_with_image_record(tmp_path, monkeypatch, already_final)
    assert runtime.calls == ["create"]  # never started
    assert runtime.removed == ["d" * 64]  # and not left behind
