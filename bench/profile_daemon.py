"""Where the daemon's CPU goes per run: a profiling harness for issue 3 (not a test).

    .venv/bin/python bench/profile_daemon.py [--runs 80] [--py-spy OUT.svg]

Starts a daemon like bench/run_bench.py does, but with its Docker socket behind a
counting proxy, submits `--runs` trivial runs at once over the API and waits for
all of them. Prints the daemon's CPU per run (user+sys, by thread), the Engine API
requests per run by endpoint, and the SQLite work per run: transactions and
aiosqlite thread hops, counted by a `sitecustomize` this harness gives the daemon
(the product has no profiling code). With --py-spy (`.venv/bin/pip install py-spy`),
records the daemon's stacks: raw for a .txt file, else a flame graph.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_bench  # the bench's daemon helpers

ENGINE = "/var/run/docker.sock"
_REQUEST = re.compile(rb"(?:^|\r\n)(GET|POST|DELETE|HEAD|PUT) (/[^ ?]*)[^ ]* HTTP/1\.[01]\r\n")


def _endpoint(path: str) -> str:
    parts = re.sub(r"^/v[0-9.]+", "", path).split("/")
    return "/".join("ID" if len(p) >= 12 and p != "containers" else p for p in parts)


class CountingProxy:
    """A unix-socket proxy in front of dockerd that counts request lines by endpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: collections.Counter[str] = collections.Counter()
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        self._ready.wait()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(asyncio.start_unix_server(self._handle, str(self.path)))
        self._ready.set()
        self._loop.run_forever()

    def reset(self) -> None:
        self.counts.clear()
        self.connections = 0

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections += 1
        er, ew = await asyncio.open_unix_connection(ENGINE)
        await asyncio.gather(self._pipe(cr, ew, count=True), self._pipe(er, cw, count=False))

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, count: bool) -> None:
        try:
            while data := await r.read(65536):
                if count:
                    for m in _REQUEST.finditer(data):
                        self.counts[f"{m[1].decode()} {_endpoint(m[2].decode())}"] += 1
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()


SITECUSTOMIZE = """
import collections, json, os, signal, sqlite3
import aiosqlite.core as core

counts = collections.Counter()
real_connect, real_hop = sqlite3.connect, core.Connection._execute

def trace(statement):
    counts["statements"] += 1
    if statement.lstrip().upper().startswith("BEGIN"):
        counts["transactions"] += 1

def connect(*args, **kwargs):
    connection = real_connect(*args, **kwargs)
    connection.set_trace_callback(trace)
    return connection

async def hop(self, fn, *args, **kwargs):
    counts["aiosqlite thread hops"] += 1
    return await real_hop(self, fn, *args, **kwargs)

def dump(signum, frame):
    with open(os.environ["RINGJOBS_PROFILE_SQL"], "w") as out:
        json.dump(counts, out)
    counts.clear()

sqlite3.connect, core.Connection._execute = connect, hop
signal.signal(signal.SIGUSR1, dump)
"""


def sql_counts(daemon: run_bench.Daemon, path: Path) -> dict[str, int]:
    """The daemon's SQLite counters since the last call (they restart from zero)."""
    path.unlink(missing_ok=True)
    daemon.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not path.exists() or not path.read_text():
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.05)
    return dict(json.loads(path.read_text()))


def py_spy(out: str, pid: int) -> list[str]:
    """py-spy record: raw stacks for a .txt file (easy to aggregate), else a flame graph."""
    form = "raw" if out.endswith(".txt") else "flamegraph"
    argv = [str(run_bench.ROOT / ".venv" / "bin" / "py-spy"), "record", "-o", out]
    return [
        *argv,
        "--pid",
        str(pid),
        "--threads",
        "--nonblocking",
        "--rate",
        "400",
        "--format",
        form,
    ]


def thread_cpu(pid: int) -> collections.Counter[str]:
    """CPU seconds of the main thread and of the others (Python does not name OS threads)."""
    found: collections.Counter[str] = collections.Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        name = "event loop (main)" if task.name == str(pid) else "other threads"
        fields = stat.rsplit(")", 1)[1].split()
        found[name] += (int(fields[11]) + int(fields[12])) / run_bench.os.sysconf("SC_CLK_TCK")
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=80)
    parser.add_argument("--network", default="namespace")
    parser.add_argument("--py-spy", help="record a flame graph of the daemon to this file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="rjp-", dir="/tmp"))
    proxy = CountingProxy(workdir / "docker.sock")
    run_bench.os.environ["DOCKER_HOST"] = f"unix://{proxy.path}"
    (workdir / "site").mkdir()
    (workdir / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    stats = workdir / "sql-stats.json"
    run_bench.os.environ["PYTHONPATH"] = str(workdir / "site")
    run_bench.os.environ["RINGJOBS_PROFILE_SQL"] = str(stats)
    run_bench.clean_docker()
    with run_bench.running_daemon(workdir) as daemon:
        request = run_bench.exec_request(args.network)
        for _ in range(2 * run_bench.CONCURRENCY):  # warm-up: network, pools, caches
            daemon.client.exec_run(request)
        while daemon.busy_runs():
            time.sleep(0.05)
        proxy.reset()
        sql_counts(daemon, stats)
        spy = None
        if args.py_spy:
            spy = subprocess.Popen(py_spy(args.py_spy, daemon.proc.pid), stderr=subprocess.DEVNULL)
        cpu0, t0 = daemon.cpu_seconds(), time.perf_counter()
        threads0 = thread_cpu(daemon.proc.pid)
        ids = [int(daemon.client.exec_run(request)["id"]) for _ in range(args.runs)]
        for run_id in ids:
            run_bench.check_completed(daemon.client.wait_until_terminal(run_id))
        while daemon.busy_runs():
            time.sleep(0.01)
        cpu, wall = daemon.cpu_seconds() - cpu0, time.perf_counter() - t0
        threads = thread_cpu(daemon.proc.pid)
        threads.subtract(threads0)
        sql = sql_counts(daemon, stats)
        if spy is not None:
            spy.send_signal(2)
            spy.wait()
    print(f"{args.runs} runs in {wall:.1f} s: {args.runs / wall:.2f}/s")
    print(f"daemon CPU per run: {cpu * 1000 / args.runs:.1f} ms")
    for name, seconds in threads.most_common():
        print(f"  {seconds * 1000 / args.runs:5.1f} ms  thread {name}")
    rest = cpu - sum(threads.values())
    print(f"  {rest * 1000 / args.runs:5.1f} ms  threads that ended meanwhile")
    total = sum(proxy.counts.values())
    print(
        f"Engine API requests per run: {total / args.runs:.1f} "
        f"(connections opened: {proxy.connections / args.runs:.1f} per run)"
    )
    for name, n in proxy.counts.most_common():
        print(f"  {n / args.runs:5.2f}  {name}")
    for name, n in sorted(sql.items()):
        print(f"SQLite {name} per run: {n / args.runs:.1f}")
    run_bench.clean_docker()


if __name__ == "__main__":
    main()
