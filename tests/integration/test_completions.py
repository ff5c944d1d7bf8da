"""parallelism/completions against the real Docker engine: fan-out inside one run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from test_engine_docker import Harness, containers_of, make_config

from ringjobs.models import Run, RunStatus, StopIntent
from ringjobs.store import Store

pytestmark = pytest.mark.docker

INDEX = 'echo "index $RINGJOBS_COMPLETION_INDEX"'


async def children_when(h: Harness, parent_id: int, ready: int, within: float = 30.0) -> list[Run]:
    """The parent's completions once `ready` of them are running."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        children = await h.store.child_runs(parent_id)
        if sum(c.status is RunStatus.RUNNING for c in children) >= ready:
            return children
        await asyncio.sleep(0.05)
    raise AssertionError(f"{ready} completions of run {parent_id} never ran at once")


def most_at_once(children: list[Run]) -> int:
    """The largest number of completions whose recorded run times overlap."""
    edges = []
    for child in children:
        assert child.started_at and child.finished_at
        edges += [(child.started_at, 1), (child.finished_at, -1)]
    edges.sort(key=lambda edge: (edge[0], edge[1]))  # an end before a start at the same time
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


async def test_every_index_runs_once_and_the_run_completes(namespace: str, tmp_path: Path) -> None:
    h = Harness(make_config(tmp_path, max_concurrent_runs=4), namespace)
    await h.start()
    try:
        spec = h.spec("fan", ["sh", "-c", f"{INDEX}; sleep 0.3"], completions=5, parallelism=2)
        parent = await h.run(spec)
        children = await h.store.child_runs(parent.id)
        lines = {c.completion_index: await h.lines(c.id) for c in children}
        listed = await h.store.list_runs(namespace=namespace)
        events = await h.event_types(parent.id)
    finally:
        await h.stop()
    assert (parent.status, parent.reason, parent.exit_code) == (RunStatus.COMPLETED, None, 0)
    assert parent.image_id and parent.image_id.startswith("sha256:")
    assert [c.completion_index for c in children] == [0, 1, 2, 3, 4]
    assert all(c.status is RunStatus.COMPLETED and c.attempt == 1 for c in children)
    assert lines == {i: [f"index {i}"] for i in range(5)}
    assert most_at_once(children) <= 2  # parallelism, although 4 slots were free
    assert [r.id for r in listed] == [parent.id]  # completions are listed by their parent
    assert events.count("completion_created") == 5 and events[-1] == "finished"
    assert containers_of(namespace) == []


async def test_a_failing_index_retries_then_fails_the_run_and_stops_the_others(
    namespace: str, tmp_path: Path
) -> None:
    h = Harness(make_config(tmp_path, defaults={"backoff_base": "100ms"}), namespace)
    await h.start()
    script = f'{INDEX}; [ "$RINGJOBS_COMPLETION_INDEX" = 1 ] && exit 3; sleep 30'
    try:
        spec = h.spec(
            "fails",
            ["sh", "-c", script],
            completions=3,
            parallelism=3,
            backoff_limit=1,
            restart_policy="OnFailure",
            stop_grace_period_seconds=1.0,
        )
        parent = await h.run(spec)
        children = {c.completion_index: c for c in await h.store.child_runs(parent.id)}
        failed_lines = await h.lines(children[1].id)
    finally:
        await h.stop()
    assert (parent.status, parent.reason, parent.exit_code) == (RunStatus.FAILED, "exit_code", 3)
    assert "completion 1" in (parent.message or "")
    culprit = children[1]
    assert (culprit.status, culprit.exit_code, culprit.attempt) == (RunStatus.FAILED, 3, 2)
    assert failed_lines == ["index 1", "[ringjobs] attempt 2", "index 1"]
    assert {children[0].status, children[2].status} == {RunStatus.CANCELLED}
    assert containers_of(namespace) == []


async def test_cancelling_the_run_cancels_its_running_completions(
    namespace: str, tmp_path: Path
) -> None:
    h = Harness(make_config(tmp_path), namespace)
    await h.start()
    try:
        spec = h.spec(
            "stop", ["sleep", "60"], completions=4, parallelism=2, stop_grace_period_seconds=1.0
        )
        parent_id = await h.submit(spec)
        await children_when(h, parent_id, 2)
        await h.engine.cancel(parent_id, None)
        parent = await h.finished(parent_id)
        children = await h.store.child_runs(parent_id)
        for child in children:
            await h.finished(child.id)
        children = await h.store.child_runs(parent_id)
    finally:
        await h.stop()
    assert parent.status is RunStatus.CANCELLED
    assert len(children) == 2  # the two waiting indexes were never created
    assert all(c.status is RunStatus.CANCELLED for c in children)
    assert containers_of(namespace) == []


async def test_a_restart_adopts_running_completions_and_finishes_the_rest(
    namespace: str, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    first = Harness(config, namespace)
    await first.start()
    spec = first.spec("resume", ["sh", "-c", f"{INDEX}; sleep 2"], completions=4, parallelism=2)
    parent_id = await first.submit(spec)
    before = await children_when(first, parent_id, 2)
    await first.stop()  # like SIGTERM: the two containers keep running
    second = Harness(config, namespace)
    await second.start()
    try:
        parent = await second.finished(parent_id)
        children = await second.store.child_runs(parent_id)
        lines = {c.completion_index: await second.lines(c.id) for c in children}
    finally:
        await second.stop()
    assert parent.status is RunStatus.COMPLETED
    assert [c.completion_index for c in children] == [0, 1, 2, 3]
    adopted = {c.id: c.container_id for c in before if c.status is RunStatus.RUNNING}
    assert {c.id: c.container_id for c in children if c.id in adopted} == adopted  # not rerun
    assert all(c.status is RunStatus.COMPLETED and c.attempt == 1 for c in children)
    assert lines == {i: [f"index {i}"] for i in range(4)}
    assert containers_of(namespace) == []


async def test_a_cancel_recorded_before_a_restart_still_stops_the_fan_out(
    namespace: str, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    first = Harness(config, namespace)
    await first.start()
    spec = first.spec(
        "halt", ["sleep", "30"], completions=3, parallelism=2, stop_grace_period_seconds=1.0
    )
    parent_id = await first.submit(spec)
    await children_when(first, parent_id, 2)
    await first.stop()
    # What Engine.cancel writes first; the daemon then dies before acting on it.
    store = Store(config.database)
    await store.open()
    await store.update_run(parent_id, only_if_active=True, stop_intent=StopIntent.CANCEL)
    await store.close()
    second = Harness(config, namespace)
    await second.start()
    try:
        parent = await second.finished(parent_id)
        children = await second.store.child_runs(parent_id)
        for child in children:
            await second.finished(child.id)
        children = await second.store.child_runs(parent_id)
    finally:
        await second.stop()
    assert parent.status is RunStatus.CANCELLED
    assert [c.completion_index for c in children] == [0, 1]  # index 2 never started
    assert all(c.status is RunStatus.CANCELLED for c in children)
    assert containers_of(namespace) == []


async def test_prune_and_history_limit_count_the_run_and_take_its_completions(
    namespace: str, tmp_path: Path
) -> None:
    h = Harness(make_config(tmp_path), namespace)
    await h.start()
    try:
        spec = h.spec("kept", ["true"], completions=2, history_limit={"succeeded": 1})
        await h.store.apply([], [spec], lambda _spec, _active: False, None)
        first = await h.run(spec)
        await h.engine.history.idle()  # history_limit is applied in the background
        first_children = [c.id for c in await h.store.child_runs(first.id)]
        second = await h.run(spec)
        await h.engine.history.idle()
        left_after_limit = [await h.store.get_run(i) for i in [first.id, *first_children]]
        second_children = [c.id for c in await h.store.child_runs(second.id)]
        pruned = await h.engine.prune(namespace, False, False)
        left_after_prune = [await h.store.get_run(i) for i in [second.id, *second_children]]
    finally:
        await h.stop()
    assert len(first_children) == 2 and len(second_children) == 2
    assert left_after_limit == [None, None, None]  # the older run went with its completions
    assert pruned.run_ids == sorted([second.id, *second_children])
    assert left_after_prune == [None, None, None]
