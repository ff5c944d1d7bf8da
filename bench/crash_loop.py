"""Kill the daemon with SIGKILL at random moments over many runs; check what survives.

    .venv/bin/python bench/crash_loop.py [--runs 120] [--kills 12] [--seed N]

Starts its own daemon (temp dir, max_concurrent_runs 4) and submits `--runs` runs of
a few job variants, each with a known exit code and known stdout/stderr line counts.
Meanwhile a killer sends SIGKILL to the daemon at random moments and restarts it,
`--kills` times; submissions that hit a dead daemon are retried. Then it checks:

- every run the daemon ever accepted (also those whose answer was lost) ends exactly
  once (one `finished` event), with the variant's status and exit code;
- each run's stdout and stderr are exactly the lines the container printed: none
  lost, none repeated, in order;
- each attempt's container started exactly once (a retried variant has two), and none
  is left afterwards.

A check, not part of the default suite (it takes minutes and kills processes at random
moments). Exits 0 when every invariant held, 1 otherwise. Removes what it made: the
containers labelled with its namespace and the namespace's network.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ringjobs.client import ApiError, Client, ClientError

ROOT = Path(__file__).resolve().parent.parent
RINGJOBS = str(ROOT / ".venv" / "bin" / "ringjobs")
IMAGE = "ringjobs-test:latest"


@dataclass(frozen=True)
class Variant:
    """A job whose outcome is known in advance."""

    name: str
    stdout_lines: int
    stderr_lines: int
    exit_code: int
    sleep: str  # between the first and second half of stdout: time to be killed in
    retries: int = 0  # backoff_limit; a failing variant then runs retries + 1 attempts

    @property
    def command(self) -> list[str]:
        half = self.stdout_lines // 2
        script = (
            f"seq 1 {half} | sed s/^/out-/; sleep {self.sleep}; "
            f"seq {half + 1} {self.stdout_lines} | sed s/^/out-/; "
            f"seq 1 {self.stderr_lines} | sed s/^/err-/ >&2; exit {self.exit_code}"
        )
        return ["sh", "-c", script]

    @property
    def attempts(self) -> int:
        return 1 if self.exit_code == 0 else self.retries + 1

    def expected_output(self) -> tuple[list[str], list[str]]:
        return (
            [f"out-{i}" for i in range(1, self.stdout_lines + 1)] * self.attempts,
            [f"err-{i}" for i in range(1, self.stderr_lines + 1)] * self.attempts,
        )


VARIANTS = [
    Variant("quick", 4, 0, 0, "0"),
    Variant("chatty", 2000, 200, 0, "0.5"),
    Variant("slow", 60, 10, 3, "2"),
    Variant("failing", 10, 10, 7, "0.2"),
    Variant("silent", 0, 0, 0, "1"),
    Variant("retried", 30, 5, 9, "1", retries=1),
]


class Daemon:
    def __init__(self, root: Path) -> None:
        self.socket = root / "rj.sock"
        self.database = root / "rj.db"
        self.log = root / "daemon.log"
        self.config = root / "config.yaml"
        self.config.write_text(
            f"socket: {self.socket}\ndatabase: {self.database}\nmax_concurrent_runs: 4\n"
            "defaults:\n  backoff_base: 1s\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [RINGJOBS, "daemon", "--config", str(self.config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 60
        client = Client(self.socket, retry_for=0)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the daemon exited at start; see {self.log}")
            with contextlib.suppress(ClientError):
                client.health()
                return
            time.sleep(0.05)
        raise SystemExit(f"the daemon did not answer; see {self.log}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)

    def statuses_on_disk(self) -> Counter[str]:
        """Run statuses as the killed daemon left them in the database."""
        uri = f"file:{self.database}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
            rows = db.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
        return Counter({str(status): int(count) for status, count in rows})


def apply_variants(daemon: Daemon, root: Path, namespace: str) -> None:
    deployments = {
        v.name: {
            "name": v.name,
            "namespace": namespace,
            "kind": "job",
            "image": IMAGE,
            "command": v.command,
            "suspend": True,
            "concurrency_policy": "Allow",
            "backoff_limit": v.retries,
        }
        for v in VARIANTS
    }
    manifest = root / "jobs.json"
    manifest.write_text(json.dumps({"deployments": deployments}))
    env = {"RINGJOBS_SOCKET": str(daemon.socket), "PATH": "/usr/bin:/bin"}
    subprocess.run([RINGJOBS, "apply", "-f", str(manifest)], check=True, env=env)


def submit_all(daemon: Daemon, namespace: str, count: int, rng: random.Random) -> dict[int, str]:
    """Submit runs, retrying through restarts; returns the ids the daemon confirmed."""
    accepted: dict[int, str] = {}
    client = Client(daemon.socket, retry_for=0)
    for _ in range(count):
        variant = rng.choice(VARIANTS)
        while True:
            try:
                accepted[int(client.start_job_run(namespace, variant.name)["id"])] = variant.name
                break
            except ClientError:
                time.sleep(0.2)  # the daemon is down (or its answer was lost): try again
        time.sleep(rng.uniform(0, 0.3))
    return accepted


def kill_loop(
    daemon: Daemon, kills: int, rng: random.Random, done: threading.Event, seen: Counter[str]
) -> int:
    made = 0
    while made < kills and not done.is_set():
        time.sleep(rng.uniform(0.3, 4.0))
        daemon.kill()
        made += 1
        seen.update(daemon.statuses_on_disk())
        time.sleep(rng.uniform(0, 2.0))  # containers go on (and some finish) meanwhile
        daemon.start()
    return made


def wait_all(client: Client, namespace: str, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        runs: list[dict[str, Any]] = client.list_runs(namespace=namespace, limit=1000)["runs"]
        active = [r for r in runs if r["status"] in ("pending", "starting", "running")]
        if not active or time.monotonic() > deadline:
            return runs
        time.sleep(1)


def check_run(client: Client, run: dict[str, Any]) -> list[str]:
    variant = next(v for v in VARIANTS if v.name == run["job"])
    problems = []
    want_status = "completed" if variant.exit_code == 0 else "failed"
    got = (run["status"], run["exit_code"])
    if got != (want_status, variant.exit_code):
        problems.append(f"status/exit {got}, expected {(want_status, variant.exit_code)}")
    records = list(client.stream_logs(run["id"]))
    out = [r["line"] for r in records if r["stream"] == "stdout"]
    err = [r["line"] for r in records if r["stream"] == "stderr"]
    want_out, want_err = variant.expected_output()
    if out != want_out:
        problems.append(f"stdout {len(out)} lines ({len(set(out))} distinct), want {len(want_out)}")
    if err != want_err:
        problems.append(f"stderr {len(err)} lines ({len(set(err))} distinct), want {len(want_err)}")
    seqs = [r["seq"] for r in records]
    if seqs != sorted(set(seqs)):
        problems.append("log seq numbers repeat or go backwards")
    events = Counter(e["type"] for e in client.stream_events(run["id"]))
    if events["finished"] != 1:
        problems.append(f"{events['finished']} finished events")
    if events["container_started"] != variant.attempts or run["attempt"] != variant.attempts:
        problems.append(
            f"container started {events['container_started']} times, attempt {run['attempt']}"
        )
    return [f"run {run['id']} ({variant.name}): {p}" for p in problems]


def leftovers(namespace: str) -> list[str]:
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=io.ringjobs.namespace={namespace}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def clean(namespace: str) -> None:
    doomed = leftovers(namespace)
    if doomed:
        subprocess.run(["docker", "rm", "-f", *doomed], capture_output=True, check=False)
    subprocess.run(
        ["docker", "network", "rm", f"ringjobs_{namespace}"], capture_output=True, check=False
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=120, help="at most 1000")
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="rjcrash", dir="/tmp"))
    namespace = f"rjcrash-{secrets.token_hex(3)}"
    daemon = Daemon(root)
    print(f"seed {seed}, namespace {namespace}, daemon log {daemon.log}", flush=True)
    began = time.monotonic()
    try:
        daemon.start()
        apply_variants(daemon, root, namespace)
        done = threading.Event()
        seen: Counter[str] = Counter()
        kills: list[int] = []
        killer = threading.Thread(
            target=lambda: kills.append(kill_loop(daemon, args.kills, rng, done, seen))
        )
        killer.start()
        accepted = submit_all(daemon, namespace, args.runs, random.Random(seed + 1))
        killer.join()  # every kill made, the daemon running again
        done.set()
        client = Client(daemon.socket, retry_for=60)
        runs = wait_all(client, namespace, timeout=300)
        problems = [p for run in runs for p in check_run(client, run)]
        listed = {int(r["id"]) for r in runs}
        problems += [f"accepted run {i} is missing" for i in set(accepted) - listed]
        active = [r["id"] for r in runs if r["status"] in ("pending", "starting", "running")]
        problems += [f"run {i} never finished" for i in active]
        deadline = time.monotonic() + 30
        while leftovers(namespace) and time.monotonic() < deadline:
            time.sleep(0.5)
        problems += [f"container {c} left behind" for c in leftovers(namespace)]
        unconfirmed = len(listed - set(accepted))
        print(
            f"{len(runs)} runs ({unconfirmed} accepted with the answer lost to a kill), "
            f"{sum(kills)} kills in {time.monotonic() - began:.0f}s; run states on disk, "
            f"summed over the kills: {dict(seen)}"
        )
    except ApiError as exc:
        problems = [f"API error {exc.status}: {exc.detail}"]
    finally:
        daemon.stop()
        clean(namespace)
    for problem in problems:
        print("FAIL", problem)
    if not problems:
        print("OK: every run ended once, with its exit code and every log line exactly once")
        shutil.rmtree(root, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
