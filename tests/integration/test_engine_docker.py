"""The engine against the real Docker engine: statuses, reasons, logs, hardening."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ringjobs.config import Config, load_config
from ringjobs.engine.engine import Engine
from ringjobs.exceptions import Conflict
from ringjobs.models import JobSpec, Run, RunStatus, Trigger
from ringjobs.runtime.docker import DockerRuntime
from ringjobs.store import Store

pytestmark = pytest.mark.docker

IMAGE = "ringjobs-test:latest"


def make_config(tmp: Path, **overrides: Any) -> Config:
    return load_config(
        None, {"database": tmp / "rj.db", "socket": tmp / "rj.sock", **overrides}, environ={}
    )


class Harness:
    """An engine with a real store and the real Docker runtime."""

    def __init__(self, config: Config, namespace: str, docker_url: str | None = None) -> None:
        self.config = config
        self.namespace = namespace
        self.store = Store(config.database)
        self.runtime = DockerRuntime(docker_url, config.max_concurrent_runs)
        self.engine = Engine(self.store, self.runtime, config)

    async def start(self) -> None:
        await self.store.open()
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()
        await self.store.close()
        await self.runtime.close()

    def spec(self, name: str, command: list[str], **fields: Any) -> JobSpec:
        return JobSpec(
            namespace=self.namespace,
            name=name,
            image=IMAGE,
            command=command,
            timeout_seconds=fields.pop("timeout_seconds", 60.0),
            **fields,
        )

    async def submit(self, spec: JobSpec) -> int:
        run_id = await self.store.create_run(spec, 1, Trigger.MANUAL, 0)
        self.engine.enqueue(run_id)
        return run_id

    async def finished(self, run_id: int, within: float = 60.0) -> Run:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            token = self.engine.notifier.token(run_id)
            run = await self.store.get_run(run_id)
            assert run is not None
            if run.status.is_terminal and not self.engine.is_executing(run_id):
                return run  # its task is over: container removed, events written
            await self.engine.notifier.wait(token, 0.5)
        raise AssertionError(f"run {run_id} did not finish within {within}s")

    async def run(self, spec: JobSpec) -> Run:
        return await self.finished(await self.submit(spec))

    async def lines(self, run_id: int, stream: str | None = None) -> list[str]:
        records = await self.store.read_logs(run_id, stream=stream, limit=1_000_000)
        return [r.line for r in records]

    async def event_types(self, run_id: int) -> list[str]:
        return [e.type for e in await self.store.list_events(run_id)]


def containers_of(namespace: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=io.ringjobs.namespace={namespace}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


async def test_exit_zero_completes_keeps_logs_and_removes_the_container(harness: Harness) -> None:
    run = await harness.run(harness.spec("ok", ["sh", "-c", "echo hello; echo world"]))
    assert (run.status, run.reason, run.exit_code, run.oom_killed) == (
        RunStatus.COMPLETED,
        None,
        0,
        False,
    )
    assert run.attempt == 1 and run.started_at and run.finished_at
    assert run.image_id and run.image_id.startswith("sha256:")
    assert await harness.lines(run.id) == ["hello", "world"]
    assert run.log_bytes == len("hello\nworld\n")
    types = await harness.event_types(run.id)
    assert types[:2] == ["created", "starting"]
    assert types[-2:] == ["finished", "container_removed"]
    assert containers_of(harness.namespace) == []


async def test_exit_three_fails_with_its_exit_code(harness: Harness) -> None:
    run = await harness.run(harness.spec("three", ["sh", "-c", "echo bye >&2; exit 3"]))
    assert (run.status, run.reason, run.exit_code) == (RunStatus.FAILED, "exit_code", 3)
    assert await harness.lines(run.id, "stderr") == ["bye"]


async def test_oom_kill_under_32mi_is_reported_from_docker(harness: Harness) -> None:
    spec = harness.spec(
        "oom",
        ["sh", "-c", "head -c 200m /dev/zero | tail"],
        resources={"memory_limit_bytes": 32 * 2**20},
    )
    run = await harness.run(spec)
    assert (run.status, run.reason, run.oom_killed) == (RunStatus.FAILED, "oom_killed", True)
    assert run.exit_code == 137
    assert "oom" in await harness.event_types(run.id)


async def test_exit_137_without_oom_is_a_signal_not_an_oom(harness: Harness) -> None:
    run = await harness.run(harness.spec("fake137", ["sh", "-c", "exit 137"]))
    assert (run.status, run.reason, run.oom_killed) == (RunStatus.FAILED, "signal", False)


async def test_twenty_thousand_lines_are_all_kept_in_order(harness: Harness) -> None:
    run = await harness.run(harness.spec("many", ["seq", "20000"]))
    assert run.status == RunStatus.COMPLETED
    assert await harness.lines(run.id) == [str(i) for i in range(1, 20001)]
    seqs = [r.seq for r in await harness.store.read_logs(run.id, limit=1_000_000)]
    assert seqs == list(range(1, 20001))


async def test_stdout_and_stderr_stay_apart(harness: Harness) -> None:
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done"
    run = await harness.run(harness.spec("streams", ["sh", "-c", script]))
    assert await harness.lines(run.id, "stdout") == ["out1", "out2", "out3"]
    assert await harness.lines(run.id, "stderr") == ["err1", "err2", "err3"]


async def test_unterminated_last_line_and_long_lines_are_kept(harness: Harness) -> None:
    script = "head -c 40000 /dev/zero | tr '\\0' x; echo; printf tail"
    run = await harness.run(harness.spec("long", ["sh", "-c", script]))
    lines = await harness.lines(run.id)
    assert lines[-1] == "tail"
    assert "".join(lines[:-1]) == "x" * 40000  # split at logs.max_line_bytes, never dropped
    assert all(len(line) <= harness.config.logs.max_line_bytes for line in lines)


async def test_unknown_image_fails_at_once_without_retry(harness: Harness) -> None:
    spec = JobSpec(
        namespace=harness.namespace,
        name="noimg",
        image="ringjobs-missing:none",
        command=["true"],
        image_pull_policy="Never",
    )
    run = await harness.run(spec)
    assert (run.status, run.reason, run.attempt) == (RunStatus.FAILED, "image_not_found", 1)
    assert "ringjobs-missing:none" in (run.message or "")
    assert containers_of(harness.namespace) == []


async def test_deadline_stops_the_container_and_says_so(harness: Harness) -> None:
    spec = harness.spec("slow", ["sleep", "60"], timeout_seconds=1.0, stop_grace_period_seconds=1.0)
    started = time.monotonic()
    run = await harness.run(spec)
    assert time.monotonic() - started < 20
    assert (run.status, run.reason, run.stop_intent) == (
        RunStatus.FAILED,
        "deadline_exceeded",
        "deadline",
    )
    types = await harness.event_types(run.id)
    assert types.index("deadline") < types.index("finished")


async def test_log_cap_truncates_with_a_visible_marker(namespace: str, tmp_path: Path) -> None:
    config = make_config(tmp_path, logs={"max_bytes_per_run": "1Ki"})
    h = Harness(config, namespace)
    await h.start()
    try:
        run = await h.run(h.spec("chatty", ["seq", "5000"]))
    finally:
        await h.stop()
    assert run.status == RunStatus.COMPLETED and run.log_truncated
    records = await _read_all(config, run.id)
    assert records[-1]["stream"] == "system" and "truncated" in records[-1]["line"]
    assert sum(len(r["line"]) + 1 for r in records[:-1]) <= 1024


async def _read_all(config: Config, run_id: int) -> list[dict[str, Any]]:
    store = Store(config.database)
    await store.open()
    try:
        return [r.to_api() for r in await store.read_logs(run_id, limit=100_000)]
    finally:
        await store.close()


async def docker_cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "docker", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


def docker_inspect(container_id: str) -> dict[str, Any]:
    out = subprocess.run(
        ["docker", "inspect", container_id], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout)[0])


async def running_container(h: Harness, run_id: int) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run = await h.store.get_run(run_id)
        if run and run.status == RunStatus.RUNNING and run.container_id:
            return run.container_id
        await asyncio.sleep(0.05)
    raise AssertionError("the run never reached running")


async def test_container_is_hardened_and_labelled(harness: Harness) -> None:
    run_id = await harness.submit(
        harness.spec("hard", ["sleep", "30"], timeout_seconds=60.0, stop_grace_period_seconds=1.0)
    )
    info = docker_inspect(await running_container(harness, run_id))
    host = info["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Privileged"] is False and host["Init"] is True
    assert host["PidsLimit"] == harness.config.defaults.pids_limit
    assert host["Memory"] == harness.config.defaults.memory_bytes == host["MemorySwap"]
    assert host["NetworkMode"] == f"ringjobs_{harness.namespace}"
    assert host["PidMode"] == "" and host["IpcMode"] in ("private", "shareable")
    assert host["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-file": "2", "max-size": "10m"},
    }
    assert not any("docker.sock" in (m.get("Source") or "") for m in info["Mounts"])
    labels = info["Config"]["Labels"]
    assert labels["io.ringjobs.managed"] == "true" and labels["io.ringjobs.run"] == str(run_id)
    assert labels["io.ringjobs.namespace"] == harness.namespace
    assert labels["io.ringjobs.instance"] == harness.store.instance_id != ""
    assert (labels["io.ringjobs.job"], labels["io.ringjobs.attempt"]) == ("hard", "1")
    status = await docker_cli("exec", info["Id"], "cat", "/proc/1/status")
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
    harness.engine.ctx.stop_requests.setdefault(run_id, asyncio.Event()).set()
    run = await harness.finished(run_id)
    assert run.status == RunStatus.CANCELLED


async def test_runs_beyond_the_limit_wait_in_fifo_order(namespace: str, tmp_path: Path) -> None:
    h = Harness(make_config(tmp_path, max_concurrent_runs=1), namespace)
    await h.start()
    try:
        ids = [await h.submit(h.spec(f"q{i}", ["true"])) for i in range(3)]
        runs = [await h.finished(i) for i in ids]
    finally:
        await h.stop()
    assert all(r.status == RunStatus.COMPLETED for r in runs)
    starts = [r.started_at for r in runs]
    assert starts == sorted(starts)  # type: ignore[type-var]


async def test_restart_adopts_a_container_that_finished_while_down(
    namespace: str, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    first = Harness(config, namespace)
    await first.start()
    script = "seq 1 500; sleep 2; seq 501 1000; echo done >&2; exit 4"
    run_id = await first.submit(first.spec("survivor", ["sh", "-c", script]))
    container_id = await running_container(first, run_id)
    await first.stop()  # like SIGTERM: the container keeps running
    await docker_cli("wait", container_id)
    second = Harness(config, namespace)
    await second.start()
    try:
        run = await second.finished(run_id)
        lines = await second.lines(run_id, "stdout")
        errs = await second.lines(run_id, "stderr")
    finally:
        await second.stop()
    assert (run.status, run.reason, run.exit_code) == (RunStatus.FAILED, "exit_code", 4)
    assert lines == [str(i) for i in range(1, 1001)]  # none lost, none twice
    assert errs == ["done"]
    assert containers_of(namespace) == []


async def test_restart_marks_a_removed_container_lost(namespace: str, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    first = Harness(config, namespace)
    await first.start()
    run_id = await first.submit(first.spec("victim", ["sleep", "60"]))
    container_id = await running_container(first, run_id)
    await first.stop()
    await docker_cli("rm", "-f", container_id)
    second = Harness(config, namespace)
    await second.start()
    try:
        run = await second.finished(run_id)
    finally:
        await second.stop()
    assert (run.status, run.reason) == (RunStatus.FAILED, "lost")
    assert container_id[:12] in (run.message or "")


async def test_a_missing_source_or_secret_fails_before_any_container_exists(
    harness: Harness,
) -> None:
    web = f"{harness.namespace}-web"  # no such container runs
    sourced = JobSpec(
        namespace=harness.namespace, name="sourced", source={"container": web}, command=["true"]
    )
    secret = harness.spec("secret", ["true"], environment={"PW": {"secretRef": "db-password"}})
    for spec, reason, needle in (
        (sourced, "source_not_found", f"container:{web}"),
        (secret, "config_error", "db-password"),
    ):
        run = await harness.run(spec)
        assert (run.status, run.reason) == (RunStatus.FAILED, reason)
        assert needle in (run.message or "")
    assert containers_of(harness.namespace) == []


async def _until_gone(namespace: str, within: float) -> None:
    deadline = time.monotonic() + within
    while containers_of(namespace):
        assert time.monotonic() < deadline, "the kept container was never removed"
        await asyncio.sleep(0.1)


async def test_keep_container_keeps_it_then_removes_it_even_across_a_restart(
    namespace: str, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    first = Harness(config, namespace)
    await first.start()
    try:
        kept = await first.run(first.spec("kept", ["true"], keep_container_seconds=1.0))
        assert containers_of(namespace)  # there for inspection right after the run
        await _until_gone(namespace, 15)
        deadline = time.monotonic() + 10  # the event follows Docker's removal by a moment
        while (types := await first.event_types(kept.id))[-1] != "container_removed":
            assert time.monotonic() < deadline, types
            await asyncio.sleep(0.05)
        assert "container_kept" in types
        await first.run(first.spec("orphan", ["true"], keep_container_seconds=1.5))
    finally:
        await first.stop()  # its removal timer dies with it
    assert containers_of(namespace)
    await asyncio.sleep(1.5)  # let the keep time pass while no daemon runs
    second = Harness(config, namespace)
    await second.start()  # the restart sweeps the expired container
    try:
        await _until_gone(namespace, 15)
    finally:
        await second.stop()


async def test_cancel_pending_never_starts_and_cancel_running_stops(
    namespace: str, tmp_path: Path
) -> None:
    h = Harness(make_config(tmp_path, max_concurrent_runs=1), namespace)
    await h.start()
    try:
        busy = await h.submit(h.spec("busy", ["sleep", "60"], stop_grace_period_seconds=2.0))
        waiting = await h.submit(h.spec("waiting", ["true"]))
        await running_container(h, busy)
        pending = await h.engine.cancel(waiting, 1000)
        assert (pending.status, pending.stop_intent, pending.attempt) == (
            RunStatus.CANCELLED,
            "cancel",
            0,
        )
        assert "container_created" not in await h.event_types(waiting)
        started = time.monotonic()
        await h.engine.cancel(busy, 1000)
        run = await h.finished(busy)
        assert time.monotonic() - started < 15
        with pytest.raises(Conflict):
            await h.engine.cancel(busy, 1000)
    finally:
        await h.stop()
    assert (run.status, run.reason, run.stop_intent) == (RunStatus.CANCELLED, None, "cancel")
    assert run.exit_code == 143  # SIGTERM through init; a job that exits 0 on TERM still counts
    types = await _event_types(tmp_path, busy)
    assert types.index("cancel_requested") < types.index("cancel") < types.index("finished")
    assert containers_of(namespace) == []


async def _event_types(tmp: Path, run_id: int) -> list[str]:
    store = Store(tmp / "rj.db")
    await store.open()
    try:
        return [e.type for e in await store.list_events(run_id)]
    finally:
        await store.close()


async def test_retries_record_every_attempt_and_stop_at_the_limit(
    namespace: str, tmp_path: Path
) -> None:
    # The bind mount below is checked against the daemon's policy when the container is made.
    policy = {"allowed_bind_paths": [str(tmp_path)]}
    h = Harness(make_config(tmp_path, defaults={"backoff_base": "100ms"}, policy=policy), namespace)
    await h.start()
    try:
        failing = await h.run(
            h.spec(
                "flaky",
                ["sh", "-c", "echo try; exit 3"],
                backoff_limit=2,
                restart_policy="OnFailure",
            )
        )
        state = tmp_path / "state"
        state.mkdir()
        counter = (
            "n=$(($(cat /state/n 2>/dev/null || echo 0)+1)); echo $n >/state/n; "
            'echo "try $n"; [ "$n" -ge 2 ]'
        )
        healed = await h.run(
            h.spec(
                "heals",
                ["sh", "-c", counter],
                backoff_limit=3,
                restart_policy="OnFailure",
                volumes=[{"type": "bind", "source": str(state), "destination": "/state"}],
            )
        )
        records = await h.store.read_logs(failing.id, limit=100)
        events = await h.store.list_events(failing.id)
        healed_lines = await h.lines(healed.id)
    finally:
        await h.stop()
    assert (failing.status, failing.reason, failing.exit_code, failing.attempt) == (
        RunStatus.FAILED,
        "exit_code",
        3,
        3,
    )
    retries = [e for e in events if e.type == "retry_scheduled"]
    assert [(e.data["attempt"], e.data["exit_code"]) for e in retries] == [(1, 3), (2, 3)]
    assert [e.data["delay_seconds"] for e in retries] == [0.1, 0.2]
    assert [(r.attempt, r.stream, r.line) for r in records] == [
        (1, "stdout", "try"),
        (2, "system", "[ringjobs] attempt 2"),
        (2, "stdout", "try"),
        (3, "system", "[ringjobs] attempt 3"),
        (3, "stdout", "try"),
    ]
    assert (healed.status, healed.attempt, healed.exit_code) == (RunStatus.COMPLETED, 2, 0)
    assert healed_lines == ["try 1", "[ringjobs] attempt 2", "try 2"]
    assert containers_of(namespace) == []


async def test_cancel_during_backoff_ends_the_retries(namespace: str, tmp_path: Path) -> None:
    h = Harness(make_config(tmp_path, defaults={"backoff_base": "1h"}), namespace)
    await h.start()
    try:
        run_id = await h.submit(
            h.spec("once", ["false"], backoff_limit=5, restart_policy="OnFailure")
        )
        deadline = time.monotonic() + 30
        while "retry_scheduled" not in await h.event_types(run_id):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        run = await h.engine.cancel(run_id, None)
    finally:
        await h.stop()
    assert (run.status, run.attempt, run.exit_code) == (RunStatus.CANCELLED, 1, 1)


async def test_queue_policy_runs_one_at_a_time_and_positions_are_shown(
    namespace: str, tmp_path: Path
) -> None:
    h = Harness(make_config(tmp_path, max_concurrent_runs=4), namespace)
    await h.start()
    try:
        spec = h.spec("serial", ["sleep", "1"], concurrency_policy="Queue")
        first, second, third = [await h.submit(spec) for _ in range(3)]
        await running_container(h, first)
        assert h.engine.queue_position(second) == 1 and h.engine.queue_position(third) == 2
        runs = [await h.finished(i) for i in (first, second, third)]
    finally:
        await h.stop()
    assert all(r.status == RunStatus.COMPLETED for r in runs)
    for earlier, later in itertools.pairwise(runs):
        assert earlier.finished_at and later.started_at
        assert later.started_at >= earlier.finished_at  # never two at once


async def test_replace_policy_cancels_the_active_run_then_starts(
    namespace: str, tmp_path: Path
) -> None:
    h = Harness(make_config(tmp_path), namespace)
    await h.start()
    try:
        spec = h.spec(
            "fresh", ["sleep", "60"], concurrency_policy="Replace", stop_grace_period_seconds=1.0
        )
        old = await h.submit(spec)
        await running_container(h, old)
        new = await h.engine.rerun(old, None)
        replaced = await h.finished(old)
        new_container = await running_container(h, new.id)
        await h.engine.cancel(new.id, None)
        latest = await h.finished(new.id)
    finally:
        await h.stop()
    assert (replaced.status, latest.trigger) == (RunStatus.CANCELLED, "rerun")
    assert replaced.finished_at and latest.started_at
    assert latest.started_at >= replaced.finished_at and new_container


def _start_proxy(path: Path) -> subprocess.Popen[bytes]:
    script = Path(__file__).with_name("docker_proxy.py")
    proxy = subprocess.Popen([sys.executable, str(script), str(path)])
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline and proxy.poll() is None, "proxy did not start"
        time.sleep(0.02)
    return proxy


async def test_engine_outage_mid_run_reattaches_and_loses_no_line(
    namespace: str, short_tmp: Path, tmp_path: Path
) -> None:
    sock = short_tmp / "docker.sock"
    proxy = _start_proxy(sock)
    h = Harness(make_config(tmp_path), namespace, docker_url=f"unix://{sock}")
    await h.start()
    try:
        script = "for i in 1 2 3 4 5 6; do echo $i; sleep 0.5; done; exit 5"
        run_id = await h.submit(h.spec("outage", ["sh", "-c", script]))
        await running_container(h, run_id)
        proxy.kill()  # the engine "goes away"; the container keeps running behind it
        proxy.wait()
        await asyncio.sleep(1.0)
        during = await h.store.get_run(run_id)
        proxy = _start_proxy(sock)  # and comes back
        run = await h.finished(run_id, within=60)
        lines = await h.lines(run_id)
        types = await h.event_types(run_id)
    finally:
        await h.stop()
        proxy.kill()
        proxy.wait()
        gc.collect()  # a socket left unclosed would warn here, inside this test
    assert during is not None and not during.status.is_terminal  # an outage is not a failure
    assert (run.status, run.reason, run.exit_code) == (RunStatus.FAILED, "exit_code", 5)
    assert lines == ["1", "2", "3", "4", "5", "6"]
    assert "engine_lost" in types and "reattached" in types
    assert containers_of(namespace) == []


async def test_recovery_after_docker_rotated_its_log_loses_and_repeats_nothing(
    namespace: str, tmp_path: Path
) -> None:
    config = make_config(tmp_path, logs={"docker_max_size": "10k", "docker_max_file": 1})
    first = Harness(config, namespace)
    await first.start()
    script = "seq 1 3000; sleep 3; seq 3001 3010"
    run_id = await first.submit(first.spec("rotating", ["sh", "-c", script]))
    deadline = time.monotonic() + 30
    while len(await first.lines(run_id)) < 3000:
        assert time.monotonic() < deadline, "the first 3000 lines never arrived"
        await asyncio.sleep(0.05)
    container_id = await running_container(first, run_id)
    await first.stop()  # the next lines are written while no daemon listens
    await docker_cli("wait", container_id)
    second = Harness(config, namespace)
    await second.start()
    try:
        await second.finished(run_id)
        lines = await second.lines(run_id)
    finally:
        await second.stop()
    assert lines == [str(i) for i in range(1, 3011)]


async def test_output_is_stored_once_over_many_short_runs(namespace: str, tmp_path: Path) -> None:
    h = Harness(make_config(tmp_path, max_concurrent_runs=8), namespace)
    await h.start()
    try:
        ids = [await h.submit(h.spec(f"s{i}", ["sh", "-c", "echo a; echo b"])) for i in range(40)]
        outputs = [(await h.finished(i), await h.lines(i))[1] for i in ids]
    finally:
        await h.stop()
    assert [o for o in outputs if o != ["a", "b"]] == []  # attach replay once doubled some
