"""Crash safety with real processes: kill -9, SIGTERM, a vanished engine, a bad disk.

Each test drives a real `ringjobs daemon` subprocess on the real Docker engine and
checks what a user would see afterwards: every run ends once, with its exit code and
every log line exactly once. Docker is cut through a proxy (never by stopping dockerd:
other suites share the engine).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli_daemon import Daemon, _raw_get, manifest

from ringjobs.client import ApiError, Client

pytestmark = pytest.mark.docker

PROXY = Path(__file__).resolve().parent.parent / "integration" / "docker_proxy.py"


class CrashDaemon(Daemon):
    """A Daemon with extra config, optionally talking to Docker through a cuttable proxy."""

    def __init__(self, root: Path, extra_config: str = "", database: Path | None = None) -> None:
        super().__init__(root)
        if database is not None:
            self.database = database
        self.proxy_socket = root / "docker.sock"
        self.hold = root / "hold-starts"
        self.gates = root / "gates"  # files the jobs wait for: no timing in these tests
        self.gates.mkdir(exist_ok=True)
        self.proxy: subprocess.Popen[bytes] | None = None
        self.config.write_text(
            f"socket: {self.socket}\ndatabase: {self.database}\n"
            f"docker_host: unix://{self.proxy_socket}\n"
            f"policy:\n  allowed_bind_paths: [{self.gates}]\n{extra_config}"
        )

    def jobs(self, scripts: dict[str, str], **fields: Any) -> dict[str, dict[str, Any]]:
        """Jobs that apply does not start (each test starts its runs), with the gates."""
        volumes = [f"{self.gates}:/gates:rw"]
        return {
            name: {"command": ["sh", "-c", cmd], "suspend": True, "volumes": volumes, **fields}
            for name, cmd in scripts.items()
        }

    def open_gate(self, name: str) -> None:
        (self.gates / name).touch()

    def start_proxy(self) -> None:
        self.proxy = subprocess.Popen(
            [sys.executable, str(PROXY), str(self.proxy_socket), str(self.hold)]
        )
        deadline = time.monotonic() + 10
        while not self.proxy_socket.exists():
            assert time.monotonic() < deadline and self.proxy.poll() is None, "no proxy"
            time.sleep(0.02)

    def cut_proxy(self) -> None:
        if self.proxy is not None:
            self.proxy.kill()
            self.proxy.wait(timeout=10)
            self.proxy = None
        with contextlib.suppress(FileNotFoundError):
            self.proxy_socket.unlink()

    def kill(self) -> None:
        assert self.stop(signal.SIGKILL) == -signal.SIGKILL

    def run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.json("run", "inspect", run_id)
        return result

    def start_job(self, namespace: str, job: str) -> str:
        return str(Client(self.socket, retry_for=0).start_job_run(namespace, job)["id"])

    def cli_metrics(self) -> str:
        return _raw_get(self, "/metrics")[2]

    def event_types(self, run_id: str) -> list[str]:
        listed = self.cli("run", "events", run_id, "-o", "json").stdout.splitlines()
        return [json.loads(line)["type"] for line in listed]

    def output(self, run_id: str) -> tuple[str, str]:
        logs = self.cli("logs", run_id)
        assert logs.returncode == 0, logs.stderr
        return logs.stdout, logs.stderr


@pytest.fixture
def crash_daemon(short_tmp: Path, docker_engine: None) -> Iterator[Callable[..., CrashDaemon]]:
    made: list[CrashDaemon] = []

    def make(extra_config: str = "", database: Path | None = None) -> CrashDaemon:
        d = CrashDaemon(short_tmp, extra_config, database)
        d.start_proxy()
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc is not None:
            d.stop()
        d.cut_proxy()


def until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def containers_of(namespace: str, run_id: str, all_states: bool = True) -> list[str]:
    flags = ["-a"] if all_states else []
    filters = ["--filter", f"label=io.ringjobs.run={run_id}"]
    filters += ["--filter", f"label=io.ringjobs.namespace={namespace}"]
    return docker("ps", "-q", "--no-trunc", *flags, *filters).split()


def container_status(container_id: str) -> str:
    return docker("inspect", "--format", "{{.State.Status}}", container_id)


def numbered(prefix: str, first: int, last: int) -> str:
    return "".join(f"{prefix}{i}\n" for i in range(first, last + 1))


def gate(name: str) -> str:
    """A shell snippet that waits until the test opens the gate `name`."""
    return f"until [ -e /gates/{name} ]; do sleep 0.1; done"


def lines(prefix: str, first: int, last: int, stderr: bool = False) -> str:
    """A shell snippet printing `prefix<i>` for i in first..last (no `$`: no interpolation)."""
    return f"seq {first} {last} | sed s/^/{prefix}/" + (" >&2" if stderr else "")


def test_kill9_with_runs_pending_starting_and_running_loses_and_repeats_nothing(
    crash_daemon: Callable[..., CrashDaemon], namespace: str, tmp_path: Path
) -> None:
    d = crash_daemon("max_concurrent_runs: 4\n")
    d.start()
    scripts = {
        # keeps running through the outage
        "adopt": f"{lines('a-', 1, 150)}; {lines('a-err-', 1, 150, True)}; {gate('adopt')}; "
        f"{lines('a-', 151, 300)}; exit 0",
        # finishes while the daemon is down
        "finish": f"{lines('b-', 1, 100)}; {gate('finish')}; {lines('b-', 101, 200)}; "
        f"{lines('b-err-', 1, 50, True)}; exit 5",
        # removed by someone else while the daemon is down
        "vanish": "echo c-before; sleep 120",
        # created, its start held: killed while `starting`
        "held": "echo d-out; echo d-err >&2",
        # pending behind the four above
        "queued1": "echo e-out; exit 2",
        "queued2": "echo f-out",
    }
    file = manifest(
        tmp_path / "m.json",
        namespace,
        d.jobs(scripts),
    )
    assert d.cli("apply", "-f", str(file)).returncode == 0
    ids = {name: d.start_job(namespace, name) for name in ("adopt", "finish", "vanish")}
    for name in ("adopt", "finish", "vanish"):
        d.wait_running(ids[name])
    d.hold.touch()
    ids["held"] = d.start_job(namespace, "held")
    until(lambda: bool(containers_of(namespace, ids["held"])), "the held run's container")
    until(lambda: d.run(ids["held"])["container_id"] is not None, "container_created saved")
    ids["queued1"] = d.start_job(namespace, "queued1")
    ids["queued2"] = d.start_job(namespace, "queued2")
    until(lambda: "c-before" in d.output(ids["vanish"])[0], "vanish's first line stored")
    states = {name: d.run(run_id)["status"] for name, run_id in ids.items()}
    assert states == {
        "adopt": "running",
        "finish": "running",
        "vanish": "running",
        "held": "starting",
        "queued1": "pending",
        "queued2": "pending",
    }
    held_container = containers_of(namespace, ids["held"])[0]

    d.kill()
    docker("rm", "-f", *containers_of(namespace, ids["vanish"]))
    d.open_gate("finish")
    finished = containers_of(namespace, ids["finish"])[0]
    until(lambda: container_status(finished) == "exited", "finish's container to exit")
    assert container_status(containers_of(namespace, ids["adopt"])[0]) == "running"
    assert container_status(held_container) == "created"  # never started
    d.hold.unlink()
    d.start()
    until(lambda: "reattached" in d.event_types(ids["adopt"]), "adopt to be reattached")
    assert d.run(ids["adopt"])["status"] == "running"  # followed while it runs on
    d.open_gate("adopt")

    expected = {
        "adopt": (0, "completed", None, numbered("a-", 1, 300), numbered("a-err-", 1, 150)),
        "finish": (
            5,
            "failed",
            "exit_code",
            numbered("b-", 1, 200),
            numbered("b-err-", 1, 50),
        ),
        "vanish": (1, "failed", "lost", "c-before\n", ""),
        "held": (0, "completed", None, "d-out\n", "d-err\n"),
        "queued1": (2, "failed", "exit_code", "e-out\n", ""),
        "queued2": (0, "completed", None, "f-out\n", ""),
    }
    for name, (code, status, reason, stdout, stderr) in expected.items():
        waited = d.cli("run", "wait", ids[name])
        assert waited.returncode == code, (name, waited.stderr)
        run = d.run(ids[name])
        assert (run["status"], run["reason"]) == (status, reason), (name, run)
        assert d.output(ids[name]) == (stdout, stderr), name
        events = d.event_types(ids[name])
        assert events.count("finished") == 1, (name, events)
        assert events.count("container_started") == 1, (name, events)  # never twice
    assert "requeued" in d.event_types(ids["held"])
    with pytest.raises(subprocess.CalledProcessError):
        docker("inspect", held_container)  # the never-started container was removed
    assert d.run(ids["vanish"])["message"].endswith("was removed by someone else")
    until(
        lambda: not docker("ps", "-aq", "--filter", f"label=io.ringjobs.namespace={namespace}"),
        "every container removed",
    )


def test_engine_outage_keeps_the_daemon_up_and_finishes_every_run(
    crash_daemon: Callable[..., CrashDaemon], namespace: str, tmp_path: Path
) -> None:
    d = crash_daemon()
    d.start()
    scripts = {
        "survives": f"{lines('x-', 1, 50)}; {gate('survive')}; {lines('x-', 51, 100)}; exit 4",
        "killed": "echo y-before; sleep 120",
        "removed": "echo z-before; sleep 120",
        "later": "echo w-out",
    }
    file = manifest(
        tmp_path / "m.json",
        namespace,
        d.jobs(scripts),
    )
    assert d.cli("apply", "-f", str(file)).returncode == 0
    ids = {name: d.start_job(namespace, name) for name in ("survives", "killed", "removed")}
    for run_id in ids.values():
        d.wait_running(run_id)

    d.cut_proxy()
    until(lambda: "ringjobs_docker_up 0.0" in d.cli_metrics(), "/metrics to say docker is down")
    doctor = d.cli("doctor")
    assert doctor.returncode != 0 and "docker" in doctor.stdout and "unreachable" in doctor.stdout
    health = Client(d.socket, retry_for=0).health()
    assert health["status"] == "degraded" and health["docker"]["ok"] is False
    ids["later"] = d.start_job(namespace, "later")  # accepted, but waits for the engine
    docker("kill", containers_of(namespace, ids["killed"])[0])
    docker("rm", "-f", containers_of(namespace, ids["removed"])[0])
    time.sleep(3)  # let the daemon notice the outage; it must neither die nor start runs
    assert d.proc is not None and d.proc.poll() is None, d.log.read_text()
    assert d.run(ids["later"])["status"] == "pending"
    assert not containers_of(namespace, ids["later"])

    d.start_proxy()
    until(lambda: "ringjobs_docker_up 1.0" in d.cli_metrics(), "/metrics to say docker is up")
    d.open_gate("survive")  # it ran through the whole outage
    expected = {
        "survives": (4, "failed", "exit_code", numbered("x-", 1, 100)),
        "killed": (1, "failed", "signal", "y-before\n"),
        "removed": (1, "failed", "lost", "z-before\n"),
        "later": (0, "completed", None, "w-out\n"),
    }
    for name, (code, status, reason, stdout) in expected.items():
        waited = d.cli("run", "wait", ids[name])
        assert waited.returncode == code, (name, waited.stderr)
        run = d.run(ids[name])
        assert (run["status"], run["reason"]) == (status, reason), (name, run)
        assert d.output(ids[name])[0] == stdout, name
    assert d.run(ids["killed"])["exit_code"] == 137
    assert "killed by signal 9" in d.run(ids["killed"])["message"]
    assert "engine_lost" in d.event_types(ids["survives"])
    assert d.cli("doctor").returncode == 0


def test_sigterm_flushes_logs_starts_nothing_and_the_next_start_reattaches(
    crash_daemon: Callable[..., CrashDaemon], namespace: str, tmp_path: Path
) -> None:
    # With a 60 s flush interval, only the shutdown flush can put the lines on disk.
    d = crash_daemon("max_concurrent_runs: 1\nlogs:\n  flush_interval: 60s\n")
    d.start()
    scripts = {
        "busy": f"{lines('p-', 1, 30)}; {gate('busy')}; {lines('p-', 31, 60)}; exit 3",
        "waiting": "echo q-out",
    }
    file = manifest(
        tmp_path / "m.json",
        namespace,
        d.jobs(scripts),
    )
    assert d.cli("apply", "-f", str(file)).returncode == 0
    busy = d.start_job(namespace, "busy")
    d.wait_running(busy)
    waiting = d.start_job(namespace, "waiting")
    container = containers_of(namespace, busy)[0]
    until(lambda: "p-30" in docker("logs", container), "the first 30 lines")

    began = time.monotonic()
    assert d.stop() == 0, d.log.read_text()
    assert time.monotonic() - began < 20  # bounded; normally about a second
    assert not d.socket.exists()
    assert d.cli("run", "list").returncode == 3  # nothing accepts requests any more
    assert container_status(container) == "running"
    assert not containers_of(namespace, waiting)  # not started during the shutdown
    with contextlib.closing(sqlite3.connect(f"file:{d.database}?mode=ro", uri=True)) as db:
        stored = [r[0] for r in db.execute("SELECT line FROM log_lines WHERE run_id = ?", (busy,))]
        statuses = dict(db.execute("SELECT id, status FROM runs").fetchall())
    assert stored == [f"p-{i}" for i in range(1, 31)]
    assert (statuses[int(busy)], statuses[int(waiting)]) == ("running", "pending")

    d.start()
    until(lambda: "reattached" in d.event_types(busy), "busy to be reattached")
    d.open_gate("busy")
    assert d.cli("run", "wait", busy).returncode == 3
    assert d.output(busy) == (numbered("p-", 1, 60), "")
    assert "reattached" in d.event_types(busy)
    assert d.cli("run", "wait", waiting).returncode == 0
    assert d.output(waiting) == ("q-out\n", "")


def test_a_damaged_database_stops_the_start_with_what_to_do(
    crash_daemon: Callable[..., CrashDaemon], namespace: str, tmp_path: Path
) -> None:
    d = crash_daemon()
    d.start()
    file = manifest(
        tmp_path / "m.json", namespace, {"chatty": {"command": ["sh", "-c", lines("l-", 1, 3000)]}}
    )
    assert d.cli("apply", "-f", str(file), "--wait").returncode == 0
    assert d.stop() == 0
    size = d.database.stat().st_size
    assert size > 8 * 4096
    with d.database.open("r+b") as db:  # a torn write in the middle of the file
        db.seek(size // 2 // 4096 * 4096)
        db.write(b"\xa5" * 4096)
    second = subprocess.run(
        [sys.executable, "-m", "ringjobs.cli", "daemon", "--config", str(d.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "is damaged (integrity_check" in second.stderr, second.stderr
    assert ".recover" in second.stderr and "restore a backup" in second.stderr
    assert not d.socket.exists()


@pytest.fixture
def small_disk(short_tmp: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs that the test can fill; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = short_tmp / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):  # until ENOSPC
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_answers_503_and_reports_nothing_done_before_it_is_saved(
    crash_daemon: Callable[..., CrashDaemon], namespace: str, tmp_path: Path, small_disk: Path
) -> None:
    d = crash_daemon(database=small_disk / "rj.db")
    d.start()
    scripts = {
        "writer": f"{lines('r-', 1, 20)}; {gate('writer')}; {lines('r-', 21, 400)}; exit 0",
        "other": "echo s-out",
    }
    file = manifest(
        tmp_path / "m.json",
        namespace,
        d.jobs(scripts),
    )
    assert d.cli("apply", "-f", str(file)).returncode == 0
    writer = d.start_job(namespace, "writer")
    d.wait_running(writer)
    until(lambda: "r-20" in d.output(writer)[0], "the first lines stored")
    filler = _fill(small_disk)

    client = Client(d.socket, retry_for=0)
    refused: ApiError | None = None
    for _ in range(50):  # SQLite may still have room in its WAL for a few writes
        try:
            client.start_job_run(namespace, "other")
        except ApiError as exc:
            refused = exc
            break
    assert refused is not None and refused.status == 503
    assert "free disk space" in refused.detail
    doctor = d.cli("doctor")
    assert doctor.returncode != 0 and "free disk space" in doctor.stdout, doctor.stdout
    d.open_gate("writer")
    container = containers_of(namespace, writer)[0]
    until(lambda: container_status(container) == "exited", "the writer's container to exit")
    until(lambda: "run_state_not_saved" in d.log.read_text(), "a failed save of the run's end")
    assert d.proc is not None and d.proc.poll() is None, d.log.read_text()
    assert d.run(writer)["status"] == "running"  # not done until its state is on disk

    filler.unlink()
    until(lambda: d.run(writer)["status"] != "running", "the writer to be finalized", 45)
    assert d.cli("run", "wait", writer).returncode == 0
    assert d.output(writer) == (numbered("r-", 1, 400), "")
    assert d.cli("job", "run", f"{namespace}/other", "--wait").returncode == 0


def test_kill9_during_a_retry_follows_the_newest_attempt_not_a_kept_older_one(
    crash_daemon: Callable[..., CrashDaemon], namespace: str, tmp_path: Path
) -> None:
    d = crash_daemon("defaults:\n  backoff_base: 1s\n")
    d.start()
    # Attempt 1 fails with 3 and its container is kept; attempt 2 runs, then exits 4.
    script = (
        f"if [ -e /gates/first ]; then echo second; {gate('second')}; exit 4; fi; "
        "touch /gates/first; echo first; exit 3"
    )
    jobs = d.jobs({"r": script}, backoff_limit=1, keep_container="2m")
    assert d.cli("apply", "-f", str(manifest(tmp_path / "m.json", namespace, jobs))).returncode == 0
    run_id = d.start_job(namespace, "r")
    until(
        lambda: d.run(run_id)["attempt"] == 2 and d.run(run_id)["status"] == "running",
        "attempt 2 running",
    )
    assert len(containers_of(namespace, run_id)) == 2  # attempt 1's is kept
    d.kill()
    d.start()
    d.open_gate("second")
    waited = d.cli("run", "wait", run_id)
    assert waited.returncode == 4, waited.stderr  # attempt 2's code, not the kept 3
    run = d.run(run_id)
    assert (run["attempt"], run["exit_code"], run["reason"]) == (2, 4, "exit_code")
    assert d.output(run_id)[0] == "first\nsecond\n"


def test_a_read_only_database_answers_503_then_recovers(
    crash_daemon: Callable[..., CrashDaemon], namespace: str, tmp_path: Path
) -> None:
    d = crash_daemon()
    d.start()
    file = manifest(tmp_path / "m.json", namespace, d.jobs({"ro": "echo ro-out"}))
    assert d.cli("apply", "-f", str(file)).returncode == 0
    files = [str(d.database), f"{d.database}-wal"]  # immutable: read-only even for root
    if subprocess.run(["chattr", "+i", *files], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this filesystem")
    try:
        client = Client(d.socket, retry_for=0)
        with pytest.raises(ApiError) as refused:
            client.start_job_run(namespace, "ro")
        assert refused.value.status == 503
        assert "is writable" in refused.value.detail, refused.value.detail
        health = client.health()
        assert health["status"] == "degraded" and health["database"]["ok"] is False
        assert d.cli("run", "list", "-n", namespace).returncode == 0  # reads still answer
        assert d.proc is not None and d.proc.poll() is None, d.log.read_text()
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)
    assert d.cli("job", "run", f"{namespace}/ro", "--wait").returncode == 0
    assert d.output(d.latest_run(namespace)) == ("ro-out\n", "")
    assert d.cli("doctor").returncode == 0


def test_kill9_during_a_fan_out_resumes_it_and_runs_no_index_twice(
    crash_daemon: Callable[..., CrashDaemon], namespace: str, tmp_path: Path
) -> None:
    d = crash_daemon("max_concurrent_runs: 4\n")
    d.start()
    index = "$$RINGJOBS_COMPLETION_INDEX"  # $$: the container's variable, not the CLI's
    script = (
        f"echo start-{index}; until [ -e /gates/g{index} ]; do sleep 0.1; done; echo end-{index}"
    )
    jobs = d.jobs({"fan": script}, completions=4, parallelism=2)
    assert d.cli("apply", "-f", str(manifest(tmp_path / "m.json", namespace, jobs))).returncode == 0
    parent = d.start_job(namespace, "fan")

    def running() -> list[dict[str, Any]]:
        return [c for c in d.run(parent).get("completions", []) if c["status"] == "running"]

    until(lambda: len(running()) == 2, "two completions running")
    first = next(str(c["run_id"]) for c in running() if c["index"] == 0)
    d.kill()  # indexes 0 and 1 keep running; 2 and 3 do not exist yet
    d.open_gate("g0")  # index 0 finishes while the daemon is down
    until(lambda: not containers_of(namespace, first, all_states=False), "index 0 to exit")
    d.start()
    for name in ("g1", "g2", "g3"):
        d.open_gate(name)
    until(lambda: d.run(parent)["status"] == "completed", "the fan-out to complete", 60)
    completions = sorted(d.run(parent)["completions"], key=lambda c: c["index"])
    assert [(c["index"], c["status"], c["attempt"]) for c in completions] == [
        (i, "completed", 1) for i in range(4)
    ]
    for child in completions:
        types = d.event_types(str(child["run_id"]))
        assert types.count("container_started") == 1 and types.count("finished") == 1, types
        assert containers_of(namespace, str(child["run_id"])) == []
    stdout, _ = d.output(parent)
    assert sorted(stdout.splitlines()) == sorted(
        f"[{i}] {what}-{i}" for i in range(4) for what in ("start", "end")
    )
