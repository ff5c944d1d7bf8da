"""ringjobs at scale, side by side with raw Docker where Docker has a counterpart (issue 7).

    .venv/bin/python bench/scale_bench.py [--quick] [--only logs,history,overhead]

- logs: a job writes SIZE bytes to stdout in 4 KiB lines. ringjobs stores all of it
  (its byte cap is raised above SIZE for this); the baseline is `docker logs --follow`
  of the same container command, drained into `wc -c`. Also: the daemon's peak RSS,
  and reading that run back (first line, whole log, `--tail 100`), cold and warm
  beside `head -c` of the database file, and cold again with the disk held to a VPS's
  rate (disk_limit; root and cgroup v1's blkio).
- history: a database of RUNS runs and 10 log lines each, written directly with the
  store's schema. `run list -n NS --job J` and `run inspect` through the API (p50/p95),
  the CLI's `run list` wall time, then `namespace prune --older-than` of a tenth of
  the runs while a client calls `run inspect` back to back, then of the next tenth
  while another client also applies a job every 50 ms (a write: the prune's steps
  take the same writer lock); every call is timed.
- idle: the daemon on that database with 100 scheduled jobs: RSS and CPU over a quiet
  interval.
- overhead: what ringjobs adds around Docker's own work for one run, from timestamps:
  the run's events (`created`, `finished`) against the container's `Created` and
  `State.FinishedAt` as Docker recorded them (containers are kept to be inspected).

Every daemon gets its own temp dir; containers are labelled io.ringjobs.namespace=
scale-bench* and removed at the end. A benchmark, not a test: it reports, it asserts
only that what it measured really happened (sizes, statuses).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from multiprocessing.synchronize import Event
from pathlib import Path

import docker
from disk_limit import (
    KERNEL_READAHEAD_KIB,
    DiskLimitUnavailable,
    check_available,
    limited_disk,
    readahead,
    stale_groups_removed,
)
from run_bench import (
    IMAGE,
    RINGJOBS,
    Daemon,
    clean_docker,
    machine,
    revision,
    running_daemon,
    runtime_only_ringjobs,
)

from ringjobs.client import Client
from ringjobs.models import JobSpec, parse_time
from ringjobs.store import Store

NAMESPACE = "scale-bench"
LINE = 4096  # bytes per line, newline included
SHORT_LINE = 100  # the same, for the read of many short lines
JOBS = 100
DISK_LIMITS = (250, 500)  # MiB/s: a VPS's disk (AWS gp3: 125 to 1,000), see disk_limit
Reader = Callable[[], tuple[float, int]]  # (seconds, bytes) of one read, checked


def generator(size: int, line: int = LINE) -> list[str]:
    """A busybox command writing `size` bytes in lines of `line` bytes to stdout, fast."""
    return ["sh", "-c", f"yes \"$(head -c {line - 1} /dev/zero | tr '\\0' x)\" | head -c {size}"]


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def mb(kib: int) -> str:
    """/proc's kB are KiB: both units, since the issue's "MB" could be either."""
    return f"{kib / 1024:.1f} MiB ({kib * 1024 / 1e6:.1f} MB)"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def row(*cells: object) -> None:
    print("| " + " | ".join(str(c) for c in cells) + " |")


def header(title: str, *columns: str) -> None:
    print(f"\n{title}\n")
    row(*columns)
    row(*("---" for _ in columns))


# -- logs ---------------------------------------------------------------------------------


def docker_generator(size: int, line: int = LINE) -> str:
    """The id of a container started (`docker run -d`) to write `size` bytes."""
    label = f"io.ringjobs.namespace={NAMESPACE}-docker"
    argv = ["docker", "run", "-d", "--label", label, IMAGE, *generator(size, line)]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def docker_drain(size: int) -> float:
    """Seconds from `docker run -d` to the end of `docker logs --follow | wc -c`."""
    start = time.perf_counter()
    cid = docker_generator(size)
    drained = subprocess.run(
        f"docker logs --follow {cid} | wc -c", shell=True, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
    got = int(drained.stdout.strip() or 0)
    if got != size:
        raise SystemExit(f"docker logs drained {got} bytes, expected {size}")
    return elapsed


def docker_reads(size: int, rounds: int, line: int = LINE) -> list[float]:
    """Seconds for `docker logs CONTAINER | wc -c` of a finished container that wrote
    `size` bytes: Docker reading its own log back, as `ringjobs logs RUN` does."""
    cid = docker_generator(size, line)
    try:
        subprocess.run(["docker", "wait", cid], capture_output=True, check=True)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            drained = subprocess.run(
                f"docker logs {cid} | wc -c", shell=True, capture_output=True, text=True
            )
            times.append(time.perf_counter() - start)
            if int(drained.stdout.strip() or 0) != size:
                raise SystemExit(f"docker logs read {drained.stdout.strip()} bytes, not {size}")
        return times
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def direct_read(path: Path) -> float:
    """MiB/s of reading `path` from the disk itself (O_DIRECT: no page cache)."""
    start = time.perf_counter()
    argv = ["dd", f"if={path}", "of=/dev/null", "bs=1M", "iflag=direct"]
    subprocess.run(argv, capture_output=True, check=True)
    return path.stat().st_size / (time.perf_counter() - start) / 2**20


def evict(database: Path) -> None:
    """Drop the database's pages (and its WAL's) from the page cache, and only theirs:
    the next read of them comes from the disk (POSIX_FADV_DONTNEED, once synced)."""
    os.sync()
    for path in database_files(database):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sqlite_read(path: Path, run_id: int) -> float:
    """MiB/s of SQLite alone handing a run's lines over in order, to Python: what the store
    can give `logs RUN` at most (nothing framed, nothing sent). Read-only, beside the
    daemon's own connections (WAL)."""
    query = "SELECT CAST(line AS BLOB) FROM log_lines WHERE run_id = ? ORDER BY seq"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        start = time.perf_counter()
        cursor = conn.execute(query, (run_id,))
        size = 0
        while rows := cursor.fetchmany(256):
            size += sum(len(line) for (line,) in rows)
        took = time.perf_counter() - start
    finally:
        conn.close()
    return size / took / 2**20


def ringjobs_capture(daemon: Daemon, size: int, line: int = LINE) -> tuple[float, int]:
    start = time.perf_counter()
    request = {"namespace": NAMESPACE, "image": IMAGE, "command": generator(size, line)}
    run_id = int(daemon.client.exec_run(request)["id"])
    run = daemon.client.wait_until_terminal(run_id)
    elapsed = time.perf_counter() - start
    if run["status"] != "completed" or run["log_bytes"] != size or run.get("log_truncated"):
        raise SystemExit(f"run {run_id}: {run['status']}, {run['log_bytes']} bytes stored")
    return elapsed, run_id


def first_line(daemon: Daemon, argv: list[str]) -> float:
    """Seconds from starting the CLI to its first line of output; then it is stopped."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=daemon.env)
    assert proc.stdout is not None
    proc.stdout.readline()
    took = time.perf_counter() - start
    proc.kill()
    proc.wait()
    proc.stdout.close()
    return took


def first_line_and_total(daemon: Daemon, argv: list[str]) -> tuple[float, float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=daemon.env)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    first_at = time.perf_counter() - start
    total = len(first)
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    if proc.wait():
        raise SystemExit(f"{argv[0]} exited with {proc.returncode} after {total} bytes")
    return first_at, time.perf_counter() - start, total


def whole_read(daemon: Daemon, argv: list[str], size: int) -> tuple[float, int]:
    """(seconds, bytes) of `argv`, which must print `size` bytes, read to its end."""
    _first, took, got = first_line_and_total(daemon, argv)
    if got != size:
        raise SystemExit(f"{' '.join(argv)} printed {got} bytes, not {size}")
    return took, got


def readers(daemon: Daemon, cli: list[str], database: Path, size: int) -> dict[str, Reader]:
    """`cli`, `logs RUN` of a run of `size` bytes, and as its baseline `head -c` writing
    as many of the database file's first bytes into a pipe read by this process, as
    `ringjobs logs` output is: the same pipe and reader, with nothing but a file's bytes
    behind them. (In a trial from the page cache, `dd` into that pipe went at 0.7-1.2
    GiB/s, `head -c` at 1.5: the faster is the baseline.)"""
    head = ["head", "-c", str(size), str(database)]
    return {
        "logs": partial(whole_read, daemon, cli, size),
        "file": partial(whole_read, daemon, head, size),
    }


def read_back(daemon: Daemon, cli: list[str], database: Path, size: int) -> dict[str, list[float]]:
    """MiB/s of `readers`, `logs RUN` of a run of `size` bytes and `head -c`, each
    cold (from the disk) then warm (the page cache), alternated three times: the host's
    drift hits all alike. Keys: "logs cold", "logs warm", "file cold", "file warm"."""
    rates: dict[str, list[float]] = {}
    for _ in range(3):
        for name, read in readers(daemon, cli, database, size).items():
            evict(database)
            for state in ("cold", "warm"):
                took, got = read()
                rates.setdefault(f"{name} {state}", []).append(got / took / 2**20)
    return rates


@dataclass
class LimitedRead:
    """One read with the disk limited: bytes out through the pipe and from the disk."""

    seconds: float
    out: int
    disk: int
    bios: int  # the disk's reads as submitted, before the block layer merges them


LimitedReads = dict[tuple[int, int, str], list[LimitedRead]]  # (readahead, limit, reader)


def limited_reads(size: int, executable: str) -> LimitedReads:
    """`read_back`'s cold reads of a run of `size` bytes again, with the disk held to
    each of DISK_LIMITS in turn, three times each, with the kernel's default readahead
    and then the disk's own (if another). Keys: (readahead KiB, limit, "logs" or
    "file"). DiskLimitUnavailable, raised before any work, says why it cannot be done.

    Each readahead has a daemon of its own, on a database of its own holding that one
    run, started once the readahead is set: a file keeps the readahead it was opened
    with, and SQLite keeps a closed connection's descriptor for the next one (while the
    process holds locks on the file). With one daemon throughout, started before, the
    disk saw requests of 3 MiB where 128 KiB was set."""
    own = check_available(Path(tempfile.gettempdir()))
    for group in stale_groups_removed():
        print(f"removed the cgroup {group}, left by a benchmark that was killed")
    reads: LimitedReads = {}
    for kib in dict.fromkeys((KERNEL_READAHEAD_KIB, own)):
        with (
            tempfile.TemporaryDirectory(prefix="rj-scale-") as tmp,
            readahead(Path(tmp), kib),
            running_daemon(Path(tmp), executable, logs=raised_cap(size)) as daemon,
        ):
            _, run_id = ringjobs_capture(daemon, size)
            cli, database = [RINGJOBS, "logs", str(run_id)], Path(tmp) / "rj.db"
            for limit in DISK_LIMITS:
                for name, done in limited_rounds(daemon, cli, database, size, limit).items():
                    reads[kib, limit, name] = done
    return reads


def limited_rounds(
    daemon: Daemon, cli: list[str], database: Path, size: int, limit: int
) -> dict[str, list[LimitedRead]]:
    """Three rounds of `readers`, each cold, with the daemon's and this process's reads
    (and those of the CLI and `head` they start) held to `limit` MiB/s."""
    rounds: dict[str, list[LimitedRead]] = {}
    with limited_disk(database, limit, [os.getpid(), daemon.proc.pid]) as disk_reads:
        for _ in range(3):
            for name, read in readers(daemon, cli, database, size).items():
                evict(database)
                bytes_before, bios_before = disk_reads()
                took, got = read()
                bytes_after, bios_after = disk_reads()
                done = LimitedRead(took, got, bytes_after - bytes_before, bios_after - bios_before)
                rounds.setdefault(name, []).append(done)
    return rounds


def raised_cap(size: int) -> dict[str, str]:
    """The daemon's `logs` settings for runs of `size` bytes kept whole."""
    return {"max_bytes_per_run": f"{size + (1 << 20)}"}


def limited_read_rows(reads: LimitedReads | DiskLimitUnavailable) -> None:
    if isinstance(reads, DiskLimitUnavailable):
        row("`logs RUN` cold with the disk limited to a VPS's speed", f"not measured: {reads}")
        return
    for ra, limit in dict.fromkeys(key[:2] for key in reads):
        logs, file = reads[ra, limit, "logs"], reads[ra, limit, "file"]
        out = {name: median_rate(r, "out") for name, r in (("logs", logs), ("file", file))}
        disk = {name: median_rate(r, "disk") for name, r in (("logs", logs), ("file", file))}
        row(
            f"`logs RUN` cold, the disk limited to {limit} MiB/s (cgroup blkio), readahead "
            f"{ra} KiB: a run of the same size on a daemon and database of their own / "
            "`head -c` of that database file, the same disk, median of 3: out through the "
            "pipe; read from the disk",
            f"{out['logs']:.0f} MiB/s; {disk['logs']:.0f} MiB/s ({disk_read(logs)})",
            f"{out['file']:.0f} MiB/s; {disk['file']:.0f} MiB/s ({disk_read(file)})",
            f"{out['logs'] / out['file']:.2f}x out; "
            f"{disk['logs'] / disk['file']:.2f}x of the disk's rate",
            "disk speed",
        )


def disk_read(reads: list[LimitedRead]) -> str:
    """The bytes of the median read from the disk, and the size of its bios."""
    middle = sorted(reads, key=lambda read: read.disk)[len(reads) // 2]
    size = middle.disk / max(middle.bios, 1) / 1024
    return f"{middle.disk / 2**20:.0f} MiB in bios of {size:.0f} KiB on average"


def median_rate(reads: list[LimitedRead], what: str) -> float:
    """MiB/s of bytes `what` ("out" or "disk"), the median of `reads`."""
    return statistics.median(getattr(read, what) / read.seconds for read in reads) / 2**20


def read_back_rows(rates: dict[str, list[float]], size: int) -> None:
    for state, how in (("cold", "after its pages are dropped from the page cache"), ("warm", "")):
        logs, file = rates[f"logs {state}"], rates[f"file {state}"]
        label = f"`logs RUN` {state} {how}".rstrip()
        row(
            f"{label} / the database file's first {size / 2**20:.0f} MiB by `head -c` into "
            f"the same pipe, {state}, median of 3 (min, max)",
            f"{statistics.median(logs):.0f} MiB/s ({min(logs):.0f}, {max(logs):.0f})",
            f"{statistics.median(file):.0f} MiB/s ({min(file):.0f}, {max(file):.0f})",
            f"{statistics.median(logs) / statistics.median(file):.2f}x",
            "disk speed" if state == "cold" else "",
        )


def bench_logs(size: int, rounds: int, executable: str) -> None:
    docker_times, rj_times, run_id = [], [], 0
    with tempfile.TemporaryDirectory(prefix="rj-scale-") as tmp:
        with running_daemon(Path(tmp), executable, logs=raised_cap(size)) as daemon:
            baseline_rss = status_kb(daemon.proc.pid, "VmRSS")
            for _ in range(rounds):  # interleaved: engine drift hits both alike
                docker_times.append(docker_drain(size))
                elapsed, run_id = ringjobs_capture(daemon, size)
                rj_times.append(elapsed)
            peak = status_kb(daemon.proc.pid, "VmHWM")
            database = Path(tmp) / "rj.db"
            db_size = db_bytes(database)
            cli = [RINGJOBS, "logs", str(run_id)]
            firsts = [first_line(daemon, cli) for _ in range(5)]
            rates = read_back(daemon, cli, database, size)
            tails = [first_line_and_total(daemon, [*cli, "--tail", "100"])[1] for _ in range(5)]
            api_tails = timed(lambda: drain(daemon.client.stream_logs(run_id, tail=100)), 50)
            disk = [direct_read(database) for _ in range(3)]
            store = statistics.median(sqlite_read(database, run_id) for _ in range(3))
            short_size = size // 10 // SHORT_LINE * SHORT_LINE  # whole lines
            _, short_run = ringjobs_capture(daemon, short_size, SHORT_LINE)
            shorts = [first_line_and_total(daemon, [RINGJOBS, "logs", str(short_run)])[1:]]
    limited: LimitedReads | DiskLimitUnavailable
    try:
        limited = limited_reads(size, executable)
    except DiskLimitUnavailable as exc:
        limited = exc
    docker_read = statistics.median(docker_reads(size, 3))
    docker_short = docker_reads(short_size, 1, SHORT_LINE)[0]  # ~15 s for 100 MB here
    d, r = statistics.median(docker_times), statistics.median(rj_times)
    header(
        f"Log capture: {size / 2**20:.0f} MiB in 4 KiB lines, median of {rounds}",
        "",
        "ringjobs",
        "docker",
        "ratio",
        "target",
    )
    row(
        "capture rate (`exec` → stored / `docker logs -f` → wc)",
        f"{size / r / 2**20:.0f} MiB/s",
        f"{size / d / 2**20:.0f} MiB/s",
        f"{d / r:.2f}x",
        "≥ 0.8x",
    )
    row("daemon peak RSS (VmHWM)", mb(peak), "", f"idle {mb(baseline_rss)}", "< 100 MB")
    row("database size after the runs", f"{db_size / 2**20:.0f} MiB", "", "", "")
    row(
        "`logs RUN`: first line, median of 5 (min, max)",
        f"{ms(statistics.median(firsts))} ({ms(min(firsts))}, {ms(max(firsts))})",
        "",
        "",
        "< 100 ms",
    )
    whole = statistics.median(rates["logs warm"])
    row(
        "`logs RUN`: whole log (the warm reads below) / `docker logs` of a finished container",
        f"{whole:.0f} MiB/s",
        f"{size / docker_read / 2**20:.0f} MiB/s",
        f"{whole * docker_read * 2**20 / size:.2f}x",
        "",
    )
    short_whole, short_total = shorts[0]
    row(
        f"the same for {short_size // SHORT_LINE:,} lines of {SHORT_LINE} bytes, once",
        f"{short_total / short_whole / 2**20:.0f} MiB/s",
        f"{short_size / docker_short / 2**20:.0f} MiB/s",
        f"{docker_short / short_whole * short_total / short_size:.2f}x",
        "",
    )
    row(
        "SQLite alone: the run's lines fetched in Python, nothing sent, median of 3",
        f"{store:.0f} MiB/s",
        "",
        f"{whole / store:.2f}x",
        "",
    )
    row(
        "the disk: the database file read with O_DIRECT (`dd` to /dev/null), 3 times",
        "",
        ", ".join(f"{rate:.0f} MiB/s" for rate in disk),
        "",
        "",
    )
    read_back_rows(rates, size)
    limited_read_rows(limited)
    row(
        "API: last 100 lines (`GET /v1/runs/ID/logs?tail=100`, all read), p50 / p95",
        f"{ms(percentile(api_tails, 0.5))} / {ms(percentile(api_tails, 0.95))}",
        "",
        "",
        "< 50 ms",
    )
    row("CLI: `logs RUN --tail 100`, wall, median of 5", ms(statistics.median(tails)), "", "", "")


def drain(records: Iterator[object]) -> int:
    lines = sum(1 for _ in records)
    if lines != 100:
        raise SystemExit(f"the tail gave {lines} lines, not 100")
    return lines


# -- overhead per run ---------------------------------------------------------------------


def docker_times(container_id: str) -> tuple[datetime, datetime, datetime]:
    """Docker's own Created, State.StartedAt and State.FinishedAt of a container."""
    out = subprocess.run(
        [
            "docker",
            "inspect",
            "--format",
            "{{.Created}} {{.State.StartedAt}} {{.State.FinishedAt}}",
            container_id,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return tuple(_docker_time(value) for value in out)  # type: ignore[return-value]


def _docker_time(value: str) -> datetime:
    # RFC 3339 with nanoseconds: datetime takes microseconds.
    head, _, frac = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def bench_overhead(runs: int, executable: str) -> None:
    """What ringjobs adds before Docker's create and after Docker reports the exit.

    ringjobs, from timestamps: its `created` event (the API accepted the run) → the
    container's `Created` (Docker began creating it), and the container's
    `State.FinishedAt` → its `finished` event (the run is final). Raw Docker, the same
    container (image, command, namespace network, attached streams) through the Engine
    API: request sent → `Created`, and `FinishedAt` → `POST /wait` answered. The
    difference of the medians is what ringjobs adds.
    """
    spans: dict[str, list[float]] = {}

    def add(name: str, start: datetime, end: datetime) -> None:
        spans.setdefault(name, []).append((end - start).total_seconds() * 1000)

    with tempfile.TemporaryDirectory(prefix="rj-scale-") as tmp:
        with running_daemon(Path(tmp), executable) as daemon:
            for index in range(runs + 3):
                run, events = overhead_run(daemon, Path(tmp), index == 0)
                if index < 3:
                    continue  # warm-up: the namespace network, first-use paths
                created, _, finished = docker_times(str(run["container_id"]))
                add("rj-create", events["created"], created)
                add("rj-answered", events["answered"], created)
                add("rj-exit", finished, events["finished"])
                add("claim", events["created"], events["starting"])
                add("resolve", events["starting"], events["image_resolved"])
                add("create", events["image_resolved"], created)
                for sent, created, finished, answered in raw_docker_runs(1):
                    add("docker-create", sent, created)
                    add("docker-exit", finished, answered)
    p50 = {name: statistics.median(values) for name, values in spans.items()}
    header(
        f"Overhead per run: {runs} runs of `true` one after the other, each followed by the "
        "same container through the raw Engine API",
        "",
        "ringjobs p50 / p95",
        "raw Docker p50 / p95",
        "ringjobs adds (p50)",
        "target",
    )
    for name, ours, theirs in (
        (
            "accepted (`created` event) → Docker's create starts (`Created`)",
            "rj-create",
            "docker-create",
        ),
        ("container exit (`FinishedAt`) → run final / wait answered", "rj-exit", "docker-exit"),
    ):
        row(
            name,
            f"{p50[ours]:.1f} / {percentile(spans[ours], 0.95):.1f} ms",
            f"{p50[theirs]:.1f} / {percentile(spans[theirs], 0.95):.1f} ms",
            f"{p50[ours] - p50[theirs]:.1f} ms",
            "< 10 ms",
        )
    for name, key in (
        ("  the same from the API's answer (201 received) → `Created`", "rj-answered"),
        ("  of which: accepted → claimed (`starting` event)", "claim"),
        ("  claimed → image resolved (`image_resolved` event)", "resolve"),
        ("  image resolved → Docker's `Created`", "create"),
    ):
        row(name, f"{p50[key]:.1f} / {percentile(spans[key], 0.95):.1f} ms", "", "", "")


def raw_docker_runs(runs: int) -> list[tuple[datetime, datetime, datetime, datetime]]:
    """(create sent, Created, FinishedAt, wait answered) of plain Engine API runs."""
    api = docker.APIClient(version="auto")
    found = []
    for _ in range(runs):
        sent = datetime.now(UTC)
        cid = api.create_container(
            IMAGE,
            ["true"],
            labels={"io.ringjobs.namespace": f"{NAMESPACE}-docker"},
            host_config=api.create_host_config(network_mode=f"ringjobs_{NAMESPACE}"),
        )["Id"]
        stream = api.attach_socket(cid, params={"stdout": 1, "stderr": 1, "stream": 1})
        api.start(cid)
        api.wait(cid)
        answered = datetime.now(UTC)
        stream.close()
        created, _, finished = docker_times(cid)
        api.remove_container(cid, force=True)
        found.append((sent, created, finished, answered))
    api.close()
    return found


def overhead_run(
    daemon: Daemon, workdir: Path, first: bool
) -> tuple[dict[str, object], dict[str, datetime]]:
    """One run of a job that keeps its container; the run and its events by type."""
    if first:
        job = {
            "name": "overhead",
            "namespace": NAMESPACE,
            "runtime": "docker",
            "kind": "job",
            "image": IMAGE,
            "command": ["true"],
            "keep_container": "1h",  # inspected, then removed by clean_docker
            "concurrency_policy": "Allow",  # apply starts a run too: one more warm-up
        }
        apply_jobs(daemon, workdir, [job])
    run_id = int(daemon.client.start_job_run(NAMESPACE, "overhead")["id"])
    answered = datetime.now(UTC)  # the API's 201 is in: the run is stored and audited
    run = daemon.client.wait_until_terminal(run_id)
    if run["status"] != "completed" or not run.get("container_id"):
        raise SystemExit(f"run {run_id}: {run['status']}")
    events = {e["type"]: parse_time(e["time"]) for e in daemon.client.stream_events(run_id)}
    return run, {**events, "answered": answered}


# -- history --------------------------------------------------------------------------------


def build_history(path: Path, runs: int, lines_per_run: int) -> datetime:
    """RUNS finished runs over JOBS jobs, oldest first, one minute apart; returns the
    finish time of the run at the 10% mark (prune --older-than cuts there, then at 20%)."""
    asyncio.run(_migrate(path))
    now = datetime.now(UTC)
    first = now - timedelta(minutes=runs + 10)
    spec = {j: JobSpec(namespace=NAMESPACE, name=f"job-{j}", image=IMAGE) for j in range(JOBS)}
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # building a fixture, not measuring
    with db:
        db.execute(
            "INSERT OR IGNORE INTO namespaces (name, created_at, updated_at) VALUES (?, ?, ?)",
            (NAMESPACE, _t(first), _t(first)),
        )
        spec_ids = {}
        for j, s in spec.items():
            db.execute(
                "INSERT INTO jobs (namespace, name, revision, spec, spec_hash, created_at,"
                " updated_at) VALUES (?, ?, 1, ?, ?, ?, ?)",
                (NAMESPACE, s.name, s.canonical_json(), s.spec_hash(), _t(first), _t(first)),
            )
            insert = "INSERT INTO run_specs (hash, spec, uses) VALUES (?, ?, ?)"
            uses = len(range(j, runs, JOBS))  # run i has job i % JOBS
            spec_ids[j] = db.execute(insert, (s.spec_hash(), s.canonical_json(), uses)).lastrowid
    batch = 20_000
    for start in range(0, runs, batch):
        run_rows, line_rows, event_rows = [], [], []
        for i in range(start, min(runs, start + batch)):
            run_id, j = i + 1, i % JOBS
            created = first + timedelta(minutes=i)
            finished = created + timedelta(seconds=2)
            run_rows.append(
                (
                    run_id,
                    NAMESPACE,
                    spec[j].name,
                    "apply",
                    _t(created),
                    _t(created + timedelta(seconds=1)),
                    _t(finished),
                    IMAGE,
                    lines_per_run * 40,
                    spec_ids[j],
                )
            )
            us = int(created.timestamp() * 1e6)
            line_rows += [
                (run_id, seq, 1, 1, us + seq, f"run {run_id} line {seq} " + "x" * 20)
                for seq in range(1, lines_per_run + 1)
            ]
            event_rows += [
                (run_id, _t(created), "created", "run created by apply (revision 1)"),
                (run_id, _t(finished), "finished", "completed: exited 0"),
            ]
        with db:
            db.executemany(
                "INSERT INTO runs (id, namespace, job, revision, trigger, status, exit_code,"
                " attempt, created_at, started_at, finished_at, image, log_bytes, spec_id)"
                " VALUES (?, ?, ?, 1, ?, 'completed', 0, 1, ?, ?, ?, ?, ?, ?)",
                run_rows,
            )
            db.executemany(
                "INSERT INTO log_lines (run_id, seq, attempt, stream, time, line)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                line_rows,
            )
            db.executemany(
                "INSERT INTO run_events (run_id, time, type, message) VALUES (?, ?, ?, ?)",
                event_rows,
            )
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return first + timedelta(minutes=runs // 10, seconds=30)


async def _migrate(path: Path) -> None:
    store = Store(path)
    await store.open()
    await store.close()


def _t(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def timed(call: Callable[[], object], times: int) -> list[float]:
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


class Prober:
    """Times one API call back to back (with `pause` between) while something else runs,
    from a process of its own. As threads of one process, two probers' timings went up
    together (most likely each waiting for the GIL while the other held it): alternated
    on one daemon, no prune, 3 pairs of 15 s, `apply` beside a thread calling `run
    inspect` had a p99 / max of 48-80 / 95-144 ms, and from a process of its own 15-19 /
    20-23 ms. Use `start_all` and `finish_all`."""

    def __init__(self, socket_path: str, call: str, pause: float, runs: int = 0) -> None:
        context = multiprocessing.get_context("spawn")  # nothing of this process's state
        self._stop, self._ready, self._go = context.Event(), context.Event(), context.Event()
        self._out: multiprocessing.SimpleQueue[tuple[list[float], str]] = context.SimpleQueue()
        args = (socket_path, call, runs, pause, self._ready, self._go, self._stop, self._out)
        self._process = context.Process(target=_probe, args=args, daemon=True)
        self.samples: list[float] = []

    @staticmethod
    def start_all(probers: list[Prober]) -> None:
        """Start them, and let them call once every one is ready: none times its calls
        while another is still starting (importing, on the same two cores)."""
        for prober in probers:
            prober._process.start()
        deadline = time.monotonic() + 30
        for prober in probers:
            while not prober._ready.wait(0.1):
                if not prober._process.is_alive() or time.monotonic() > deadline:
                    raise SystemExit(f"a prober did not start ({prober._process.exitcode})")
        for prober in probers:
            prober._go.set()

    @staticmethod
    def finish_all(probers: list[Prober]) -> None:
        for prober in probers:
            prober._stop.set()
        for prober in probers:
            prober._finish()

    def _finish(self) -> None:
        while self._out.empty():  # a process that died sends nothing: do not wait for it
            if not self._process.is_alive() and self._out.empty():
                raise SystemExit(f"a prober died (exit code {self._process.exitcode})")
            time.sleep(0.05)
        self.samples, error = self._out.get()
        self._process.join()
        if error:
            raise SystemExit(f"a prober's call failed: {error}")


def _probe(
    socket_path: str,
    call: str,
    runs: int,
    pause: float,
    ready: Event,
    go: Event,
    stop: Event,
    out: multiprocessing.SimpleQueue[tuple[list[float], str]],
) -> None:
    """A Prober's process: `call` from `go` until `stop`, then its samples to `out`, and
    what failed if a call did (the benchmark then stops: a failed call is a finding)."""
    client = Client(socket_path, retry_for=0)
    timed_call = inspect_call(runs) if call == "inspect" else apply_call()
    samples: list[float] = []
    error = ""
    ready.set()
    go.wait()
    try:
        while not stop.is_set():
            start = time.perf_counter()
            timed_call(client)
            samples.append(time.perf_counter() - start)
            stop.wait(pause)
    except Exception as exc:  # sent, not raised: the parent reports it
        error = f"{type(exc).__name__}: {exc}"
    out.put((samples, error))


def inspect_call(run_ids: int) -> Callable[[Client], object]:
    """`run inspect` of a run the prune keeps."""
    return lambda client: client.get_run(random.randint(run_ids // 2, run_ids))


def apply_call() -> Callable[[Client], object]:
    """`apply` of one job whose command changes each time: a new revision, a real write
    (and a run). The process id keeps two probers' commands apart."""
    count = iter(range(1 << 62))

    def apply(client: Client) -> object:
        job = {"name": "probe", "namespace": f"{NAMESPACE}-probe", "image": IMAGE}
        command = ["echo", f"{os.getpid()}.{next(count)}"]
        job |= {"runtime": "docker", "kind": "job", "command": command}
        manifest = json.dumps({"deployments": {"probe": job}})
        return client.apply([{"source": "probe.json", "content": manifest}])

    return apply


def spread(samples: list[float]) -> str:
    return " / ".join(ms(percentile(samples, q)) for q in (0.5, 0.99, 1.0))


def database_files(path: Path) -> list[Path]:
    """The database at `path` and its WAL and shm files, as there are."""
    return list(path.parent.glob(path.name + "*"))


def db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in database_files(path))


@dataclass
class PruneFigures:
    """One `namespace prune --older-than` while probers call the API."""

    runs: int
    seconds: float
    probers: list[Prober]
    before: int
    after: int

    def longest(self) -> float:
        return max(max(p.samples) for p in self.probers)


def measure_prune(
    daemon: Daemon, database: Path, cut: datetime, probers: list[Prober]
) -> PruneFigures:
    before = db_bytes(database)
    Prober.start_all(probers)
    start = time.perf_counter()
    age = int((datetime.now(UTC) - cut).total_seconds())
    result = daemon.client.prune_namespace(NAMESPACE, older_than=f"{age}s")
    seconds = time.perf_counter() - start
    Prober.finish_all(probers)
    removed = len(result.get("run_ids") or [])
    return PruneFigures(removed, seconds, probers, before, db_bytes(database))


def run_for(probers: list[Prober], seconds: float) -> None:
    Prober.start_all(probers)
    time.sleep(seconds)
    Prober.finish_all(probers)


def bench_history(runs: int, lines_per_run: int, idle_seconds: float, executable: str) -> None:
    with tempfile.TemporaryDirectory(prefix="rj-scale-") as tmp:
        database = Path(tmp) / "rj.db"
        started = time.perf_counter()
        cut = build_history(database, runs, lines_per_run)
        os.sync()  # the fixture's 2.4 GB on disk, not written back under the daemon's fsyncs
        built = time.perf_counter() - started
        with running_daemon(Path(tmp), executable) as daemon:
            client = daemon.client
            client.list_runs(namespace=NAMESPACE, job="job-7")  # warm the page cache once
            lists = timed(lambda: client.list_runs(namespace=NAMESPACE, job="job-7"), 200)
            ids = [random.randint(1, runs) for _ in range(200)]
            inspects = [timed(lambda i=i: client.get_run(i), 1)[0] for i in ids]
            cli = [RINGJOBS, "run", "list", "-n", NAMESPACE, "--job", "job-7"]
            cli_walls = timed(lambda: subprocess.run(cli, env=daemon.env, capture_output=True), 10)
            idle = measure_idle(daemon, Path(tmp), idle_seconds)
            apply = apply_call()
            writes = timed(lambda: apply(client), 20)  # the floor of a write, idle
            # The runs those applies started end first: the next prune is measured with a
            # reader only (their writes and containers made it 8.8 -> 10.2 s in a trial).
            for run in client.list_runs(namespace=f"{NAMESPACE}-probe", limit=100)["runs"]:
                client.wait_until_terminal(int(run["id"]))
            reading = Prober(daemon.socket_path, "inspect", 0.0, runs)
            alone = measure_prune(daemon, database, cut, [reading])
            calm = [Prober(daemon.socket_path, "inspect", 0.0, runs)]
            calm.append(Prober(daemon.socket_path, "apply", 0.05))
            # The same calls without a prune: what the prune adds. At least 15 s (about
            # 300 applies; 5 s gave ~90, too few for a max beside the prune's), and as
            # long as the first prune took.
            calm_seconds = max(15.0, alone.seconds)
            run_for(calm, calm_seconds)
            reading = Prober(daemon.socket_path, "inspect", 0.0, runs)
            writing = Prober(daemon.socket_path, "apply", 0.05)
            next_cut = cut + timedelta(minutes=runs // 10)  # the next tenth
            with_writes = measure_prune(daemon, database, next_cut, [reading, writing])
    header(
        f"History: {runs:,} runs, {runs * lines_per_run:,} log lines "
        f"(fixture built in {built:.0f} s)",
        "",
        "p50",
        "p95",
        "target",
    )
    row(
        "API `run list -n NS --job J` (first page)",
        ms(percentile(lists, 0.5)),
        ms(percentile(lists, 0.95)),
        "p95 < 20 ms",
    )
    row(
        "API `run inspect ID`",
        ms(percentile(inspects, 0.5)),
        ms(percentile(inspects, 0.95)),
        "p95 < 20 ms",
    )
    row(
        "CLI `ringjobs run list -n NS --job J`, wall",
        ms(percentile(cli_walls, 0.5)),
        ms(percentile(cli_walls, 0.95)),
        "< 150 ms",
    )
    header("Prune, while a client calls `run inspect` back to back", "", "ringjobs", "target")
    row(
        f"`namespace prune --older-than` of {alone.runs:,} runs", f"{alone.seconds:.1f} s", "< 10 s"
    )
    row("longest API call during the prune", ms(alone.longest()), "< 100 ms")
    row("`run inspect` during it, p50 / p99 / max", spread(alone.probers[0].samples), "")
    row(
        "database + WAL before → after",
        f"{alone.before / 2**20:.0f} → {alone.after / 2**20:.0f} MiB",
        "shrinks",
    )
    header(
        "Prune of the next tenth, with also an `apply` of one job every 50 ms",
        "",
        "ringjobs",
        "target",
    )
    row(
        f"`namespace prune --older-than` of {with_writes.runs:,} runs",
        f"{with_writes.seconds:.1f} s",
        "",
    )
    row("longest API call during the prune", ms(with_writes.longest()), "< 100 ms")
    row("`run inspect` during it, p50 / p99 / max", spread(with_writes.probers[0].samples), "")
    row("`apply` during it, p50 / p99 / max", spread(with_writes.probers[1].samples), "")
    calm_label = f"the same clients for {calm_seconds:.0f} s, no prune"
    row(f"{calm_label}: `run inspect`, p50 / p99 / max", spread(calm[0].samples), "")
    row(f"{calm_label}: `apply`, p50 / p99 / max", spread(calm[1].samples), "")
    row("`apply` with nothing else running, p50 / p99 / max", spread(writes), "")
    row(
        "database + WAL before → after",
        f"{with_writes.before / 2**20:.0f} → {with_writes.after / 2**20:.0f} MiB",
        "shrinks",
    )
    header(f"Idle: {JOBS} scheduled jobs, {runs:,} runs of history", "", "ringjobs", "target")
    row("daemon RSS", mb(idle[0]), "< 60 MB")
    row(f"daemon CPU over {idle_seconds:.0f} s idle", f"{idle[1] * 1000:.0f} ms", "≈ 0")


def apply_jobs(daemon: Daemon, workdir: Path, jobs: list[dict[str, object]]) -> None:
    """`ringjobs apply -f` of a manifest holding these jobs."""
    path = workdir / "jobs.json"
    path.write_text(json.dumps({"deployments": {str(job["name"]): job for job in jobs}}))
    subprocess.run(
        [RINGJOBS, "apply", "-f", str(path)], env=daemon.env, check=True, stdout=subprocess.DEVNULL
    )


def measure_idle(daemon: Daemon, workdir: Path, seconds: float) -> tuple[int, float]:
    """Apply JOBS scheduled jobs, let the daemon settle, then watch it do nothing."""
    nightly = [
        {
            "name": f"nightly-{j}",
            "namespace": NAMESPACE,
            "runtime": "docker",
            "kind": "job",
            "image": IMAGE,
            "command": ["true"],
            "schedule": f"{j % 60} 3 * * *",
        }
        for j in range(JOBS)
    ]
    apply_jobs(daemon, workdir, nightly)
    time.sleep(2.0)
    cpu = daemon.cpu_seconds()
    time.sleep(seconds)
    return status_kb(daemon.proc.pid, "VmRSS"), daemon.cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--only", default="logs,history,overhead", help="logs, history and/or overhead"
    )
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C: the readahead and cgroups changed are set back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    only = set(args.only.split(","))
    # The daemon as installed (runtime dependencies only); the CLI is stdlib-only anyway.
    daemon = runtime_only_ringjobs()
    print(f"ringjobs {revision()} — {machine()}")
    print(f"started {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.2f}")
    try:
        if "logs" in only:
            bench_logs(64 * 2**20 if args.quick else 2**30, 1 if args.quick else 3, daemon)
        if "history" in only:
            if args.quick:
                bench_history(20_000, 10, 5.0, daemon)
            else:
                bench_history(1_000_000, 10, 30.0, daemon)
        if "overhead" in only:
            bench_overhead(20 if args.quick else 100, daemon)
    finally:
        clean_docker(NAMESPACE, f"{NAMESPACE}-docker", f"{NAMESPACE}-probe")


if __name__ == "__main__":
    main()
