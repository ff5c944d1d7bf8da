"""ringjobs against raw `docker run --rm`, side by side, in one run (issue 3).

    .venv/bin/python bench/run_bench.py [--quick]

Starts its own daemon (socket and database in a temp dir, max_concurrent_runs 8),
measures latency and throughput of ringjobs and of plain Docker in the same run,
prints one table, then stops the daemon (SIGTERM) and removes what it made: the
containers labelled io.ringjobs.namespace=bench and the network ringjobs_bench.
A benchmark, not a test: it asserts nothing, it reports.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ringjobs.client import Client

ROOT = Path(__file__).resolve().parent.parent
RINGJOBS = str(ROOT / ".venv" / "bin" / "ringjobs")
IMAGE = "ringjobs-test:latest"
NAMESPACE = "bench"
CONCURRENCY = 8
WARMUP = 2
# (from, to) event pairs; "docker:X" are the engine's own events for the run's container.
PHASES = (
    ("created", "starting"),
    ("starting", "image_resolved"),
    ("image_resolved", "container_created"),
    ("container_created", "container_started"),
    ("container_started", "finished"),
    ("finished", "container_removed"),
    ("created", "docker:create"),  # API accepted -> Docker's create done
    # Docker logs "die" before it tears down the container's network (~50 ms on a
    # bridge): its wait() answers only after, so on a bridge most of this is Docker's.
    ("docker:die", "finished"),
)
DOCKER_RUN = ["docker", "run", "--rm", IMAGE, "true"]
DOCKER_RUN_NONE = ["docker", "run", "--rm", "--network", "none", IMAGE, "true"]
# What ringjobs asks Docker for (runtime/docker.py): the namespace's network and hardening.
DOCKER_RUN_SAME = [
    *("docker", "run", "--rm", "--network", f"ringjobs_{NAMESPACE}", "--init"),
    *("--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--pids-limit", "512"),
    *("--memory", "512m", "--memory-swap", "512m"),
    *("--log-opt", "max-size=10m", "--log-opt", "max-file=2", IMAGE, "true"),
]
Sample = tuple[float, int | None]  # wall seconds, and the ringjobs run id if any


@dataclass
class Daemon:
    """The benchmark's own ringjobs daemon, and the environment its CLI runs with."""

    proc: subprocess.Popen[bytes]
    socket_path: str
    env: dict[str, str]
    client: Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = Client(self.socket_path, retry_for=0)

    def cpu_seconds(self) -> float:
        """user + sys of the whole daemon process (every thread), from /proc/PID/stat."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3, state
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def busy_runs(self) -> int:
        """Runs queued or executing; a run leaves only after its container is removed."""
        conn = http.client.HTTPConnection("localhost")
        conn.sock = socket.socket(socket.AF_UNIX)
        conn.sock.connect(self.socket_path)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        gauges = ("ringjobs_active_runs ", "ringjobs_queued_runs ")
        return sum(
            int(float(line.split()[1])) for line in text.splitlines() if line.startswith(gauges)
        )


# -- the machine, the daemon, clean-up -------------------------------------------------


def machine() -> str:
    docker = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "")
    return (
        f"nproc {os.cpu_count()} ({cpu or platform.machine()}), kernel {platform.release()}, "
        f"Docker {docker}, Python {platform.python_version()}"
    )


def revision() -> str:
    """The ringjobs commit measured, marked when the work tree has uncommitted changes."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "ringjobs"], capture_output=True)
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout else "")


def load_average() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def ringjobs_env() -> dict[str, str]:
    """Like an installed package: bytecode read from (and written to) __pycache__.

    With PYTHONDONTWRITEBYTECODE set (this machine sets it) and an editable install,
    every start would compile what lacks a .pyc (~30 ms per CLI call, and ~10 MB of
    RSS left behind in a daemon) — costs no real installation pays.
    """
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def runtime_only_ringjobs() -> str:
    """`ringjobs` from a venv with the runtime dependencies only, on this work tree.

    The development venv also holds test tools; one of them brings `rich`, which
    structlog imports when present (about 7 MB more RSS than a real installation).
    Made once, in bench/.venv-runtime, and again when pyproject.toml is newer.
    """
    venv = ROOT / "bench" / ".venv-runtime"
    marker = venv / ".installed"
    if not marker.exists() or marker.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "--quiet"]
        compat = ["--config-settings", "editable_mode=compat"]  # a path entry, no import hook
        subprocess.run([*pip, *compat, "--editable", str(ROOT)], check=True)
        marker.touch()
    return str(venv / "bin" / "ringjobs")


@contextmanager
def running_daemon(
    workdir: Path, executable: str = RINGJOBS, **overrides: object
) -> Iterator[Daemon]:
    sock, config = workdir / "rj.sock", workdir / "config.yaml"
    settings = {
        "socket": str(sock),
        "database": str(workdir / "rj.db"),
        "max_concurrent_runs": CONCURRENCY,
        "log_level": "warning",
    }
    config.write_text(json.dumps(settings | overrides))  # JSON is YAML
    env = ringjobs_env() | {"RINGJOBS_SOCKET": str(sock)}
    with open(workdir / "daemon.log", "wb") as log:
        argv = [executable, "daemon", "--config", str(config)]
        proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
    try:
        yield wait_for_daemon(Daemon(proc, str(sock), env))
    finally:
        proc.send_signal(signal.SIGTERM)
        if proc.wait(timeout=30) != 0:
            print((workdir / "daemon.log").read_text()[-2000:], file=sys.stderr)


def wait_for_daemon(daemon: Daemon) -> Daemon:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {daemon.proc.returncode}; see its log")
        try:
            daemon.client.health()
            return daemon
        except Exception:
            time.sleep(0.05)
    raise SystemExit("the daemon did not answer within 30 s")


def clean_docker(namespace: str = NAMESPACE, *more_labels: str) -> None:
    """Remove the containers labelled with these namespaces, then their networks."""
    for label in (namespace, *more_labels):
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=io.ringjobs.namespace={label}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=True)
    for label in (namespace, *more_labels):
        network = f"ringjobs_{label}"
        done = subprocess.run(["docker", "network", "rm", network], capture_output=True, text=True)
        if done.returncode and "not found" not in done.stderr:  # e.g. moby#43286, see README
            print(f"warning: {network} left behind: {done.stderr.strip()}", file=sys.stderr)


# -- one run of each kind --------------------------------------------------------------


def timed_process(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall time from spawn to exit, and stderr (ringjobs says "run N started" there)."""
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()}")
    return elapsed, done.stderr.decode()


def exec_request(network: str = "namespace") -> dict[str, object]:
    return {"namespace": NAMESPACE, "image": IMAGE, "command": ["true"], "network": network}


def check_completed(run: dict[str, object]) -> None:
    if run["status"] != "completed":
        raise SystemExit(f"run {run['id']} ended {run['status']}: {run.get('message')}")


def timed_api_exec(client: Client, network: str) -> Sample:
    """POST /v1/exec, then wait until terminal, from this process (no CLI start-up)."""
    start = time.perf_counter()
    run_id = int(client.exec_run(exec_request(network))["id"])
    check_completed(client.wait_until_terminal(run_id))
    return time.perf_counter() - start, run_id


# -- latency ---------------------------------------------------------------------------


def latency_cases(daemon: Daemon) -> dict[str, Callable[[], Sample]]:
    cli = [RINGJOBS, "exec", "-n", NAMESPACE, "--image", IMAGE, "--wait", "--", "true"]

    def ringjobs_cli() -> Sample:
        elapsed, stderr = timed_process(cli, daemon.env)
        return elapsed, int(stderr.split()[1])  # "run N started"

    return {  # rj_cli first: it creates ringjobs_bench, which docker_same joins
        "rj_cli": ringjobs_cli,
        "docker": lambda: (timed_process(DOCKER_RUN)[0], None),
        "docker_same": lambda: (timed_process(DOCKER_RUN_SAME)[0], None),
        "rj_api": lambda: timed_api_exec(daemon.client, "namespace"),
        "rj_api_none": lambda: timed_api_exec(daemon.client, "none"),
        "docker_none": lambda: (timed_process(DOCKER_RUN_NONE)[0], None),
    }


def measure_latency(daemon: Daemon, runs: int) -> dict[str, list[Sample]]:
    """Every case once per round, interleaved, so drift in the engine hits all alike."""
    cases = latency_cases(daemon)
    samples: dict[str, list[Sample]] = {name: [] for name in cases}
    for round_ in range(WARMUP + runs):
        for name, case in cases.items():
            sample = case()
            if round_ >= WARMUP:
                samples[name].append(sample)
    return samples


# -- throughput ------------------------------------------------------------------------


@dataclass
class Throughput:
    jobs_per_s: float
    cpu_ms_per_run: float = float("nan")
    run_ids: list[int] = field(default_factory=list)


def ringjobs_throughput(daemon: Daemon, jobs: int) -> Throughput:
    """Submit every run over the API, then wait until all are terminal and removed."""
    cpu_before, start = daemon.cpu_seconds(), time.perf_counter()
    run_ids = [int(daemon.client.exec_run(exec_request())["id"]) for _ in range(jobs)]
    for run_id in run_ids:
        check_completed(daemon.client.wait_until_terminal(run_id))
    while daemon.busy_runs():  # the last containers are being removed
        time.sleep(0.01)
    elapsed, cpu = time.perf_counter() - start, daemon.cpu_seconds() - cpu_before
    return Throughput(jobs / elapsed, cpu * 1000 / jobs, run_ids)


def docker_throughput(jobs: int, docker_run: list[str]) -> Throughput:
    command = f"seq {jobs} | xargs -P{CONCURRENCY} -I{{}} {' '.join(docker_run)}"
    start = time.perf_counter()
    subprocess.run(["sh", "-c", command], check=True, stdout=subprocess.DEVNULL)
    return Throughput(jobs / (time.perf_counter() - start))


def measure_throughput(daemon: Daemon, jobs: int) -> dict[str, Throughput]:
    docker_throughput(WARMUP * CONCURRENCY, DOCKER_RUN)  # warm-up; the daemon is warm
    return {
        "docker": docker_throughput(jobs, DOCKER_RUN),
        "ringjobs": ringjobs_throughput(daemon, jobs),
        "docker_same": docker_throughput(jobs, DOCKER_RUN_SAME),
    }


# -- phases, from the runs' own events and Docker's -----------------------------------


@contextmanager
def recording_docker_events(path: Path) -> Iterator[None]:
    """Docker keeps only its last 256 events, so record the bench's containers' live."""
    argv = ["docker", "events", "--filter", "type=container", "--format", "{{json .}}"]
    argv += ["--filter", f"label=io.ringjobs.namespace={NAMESPACE}"]
    with open(path, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait()


def docker_event_times(path: Path) -> dict[int, dict[str, float]]:
    """Docker's create/start/die/destroy times of each run's container, by run id."""
    times: dict[int, dict[str, float]] = {}
    for event in map(json.loads, path.read_text().splitlines()):
        run_id = event["Actor"]["Attributes"].get("io.ringjobs.run")
        if run_id:
            times.setdefault(int(run_id), {})[f"docker:{event['Action']}"] = event["timeNano"] / 1e9
    return times


def run_ids(samples: list[Sample]) -> list[int]:
    return [run_id for _, run_id in samples if run_id is not None]


def phase_medians(client: Client, run_ids: list[int], docker_events: Path) -> list[float]:
    """Median ms of each of PHASES over the runs."""
    docker = docker_event_times(docker_events)
    gaps: list[list[float]] = [[] for _ in PHASES]
    for run_id in run_ids:
        times = {e["type"]: _epoch(e["time"]) for e in client.stream_events(run_id)}
        times |= docker.get(run_id, {})
        for gap, (a, b) in zip(gaps, PHASES, strict=True):
            if a in times and b in times:
                gap.append((times[b] - times[a]) * 1000)
    return [statistics.median(gap) if gap else float("nan") for gap in gaps]


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- report ----------------------------------------------------------------------------


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(title: str, *columns: str) -> None:
    print("\n" + row(title, *columns))
    print("|---" * (len(columns) + 1) + "|")


COLUMNS = ("ringjobs", "docker", "ratio", "target")


def latency_row(label: str, ours: list[Sample], theirs: list[Sample], target: str) -> str:
    def median_p90(samples: list[Sample]) -> tuple[float, float]:
        values = [s for s, _ in samples]
        return statistics.median(values), statistics.quantiles(values, n=10, method="inclusive")[-1]

    (mine, mine90), (base, base90) = median_p90(ours), median_p90(theirs)
    ratio = f"{mine / base:.2f}x"
    return row(label, f"{mine:.3f} / {mine90:.3f}", f"{base:.3f} / {base90:.3f}", ratio, target)


def print_latency(s: dict[str, list[Sample]]) -> None:
    same = "`docker run --rm` with ringjobs' network + hardening"
    rows = [
        ("CLI `exec --wait -- true` vs `docker run --rm`", "rj_cli", "docker", "<= 1.15x"),
        ("API exec + wait vs `docker run --rm`", "rj_api", "docker", "info"),
        (f"CLI vs {same}", "rj_cli", "docker_same", "info"),
        (f"API vs {same}", "rj_api", "docker_same", "info"),
        (
            "API, `network: none` vs `docker run --rm --network none`",
            "rj_api_none",
            "docker_none",
            "info",
        ),
    ]
    table(f"latency, median / p90 s ({len(s['docker'])} runs)", *COLUMNS)
    for label, ours, theirs, target in rows:
        print(latency_row(label, s[ours], s[theirs], target))


def print_throughput(t: dict[str, Throughput], jobs: int) -> None:
    ours, docker, same = (t[k].jobs_per_s for k in ("ringjobs", "docker", "docker_same"))
    table(f"throughput, {jobs} x `true`, {CONCURRENCY} at once", *COLUMNS)
    label = f"jobs/s vs `xargs -P{CONCURRENCY} docker run --rm`"
    print(row(label, f"{ours:.2f}", f"{docker:.2f}", f"{ours / docker:.2f}x", ">= 0.95x"))
    label = "jobs/s vs the same with ringjobs' network + hardening"
    print(row(label, f"{ours:.2f}", f"{same:.2f}", f"{ours / same:.2f}x", "info"))
    cpu = f"{t['ringjobs'].cpu_ms_per_run:.1f} ms"
    print(row("daemon CPU (user+sys) per run", cpu, "", "", "< 15 ms"))


def print_phases(phases: dict[str, list[float]]) -> None:
    table("phase, median ms (run events; docker:X = Docker's own)", *phases)
    for i, (a, b) in enumerate(PHASES):
        print(row(f"{a} -> {b}", *(f"{v[i]:.1f}" for v in phases.values())))


def main() -> None:
    parser = argparse.ArgumentParser(description="ringjobs vs docker run --rm, side by side")
    parser.add_argument("--quick", action="store_true", help="5 latency runs and 40 jobs")
    runs, jobs = (5, 40) if parser.parse_args().quick else (20, 200)
    print(f"{datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {machine()}")
    print(f"ringjobs {revision()}")
    print(f"load average at the start: {load_average()} (other work on the host skews both sides)")
    workdir = Path(tempfile.mkdtemp(prefix="rjb-", dir="/tmp"))  # unix socket: ~100 bytes
    clean_docker()
    try:
        events = workdir / "docker-events.jsonl"
        with running_daemon(workdir) as daemon, recording_docker_events(events):
            latency = measure_latency(daemon, runs)
            throughput = measure_throughput(daemon, jobs)
            phases = {
                "CLI runs": phase_medians(daemon.client, run_ids(latency["rj_cli"]), events),
                "API runs, network none": phase_medians(
                    daemon.client, run_ids(latency["rj_api_none"]), events
                ),
                "throughput runs": phase_medians(
                    daemon.client, throughput["ringjobs"].run_ids, events
                ),
            }
        print_latency(latency)
        print_throughput(throughput, jobs)
        print_phases(phases)
        print(f"\nload average at the end: {load_average()}")
    finally:
        clean_docker()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
