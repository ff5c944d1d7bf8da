"""Socket access: peer credentials on every change, mutating_uids, the audit trail, limits."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from api_server import ApiServer

from ringjobs.exceptions import StoreUnavailable

NOBODY = 65534
_CLIENT = """
import http.client, json, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sys.argv[1])
c = C("localhost")
c.request(sys.argv[2], sys.argv[3], body=sys.argv[4] or None,
          headers={"Content-Type": "application/json"})
r = c.getresponse()
print(json.dumps({"status": r.status, "type": r.getheader("Content-Type").split(";")[0],
                  "body": json.loads(r.read() or "null")}))
"""
APPLY = {
    "manifests": [
        {
            "source": "m.yaml",
            "content": "deployments: {j: {name: j, namespace: acc, image: none:1}}",
        }
    ]
}

# The client runs as another uid, which cannot read root's virtualenv: any stdlib python.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/usr/local/bin:/bin")
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or SYSTEM_PYTHON is None, reason="switching uid needs root and python3"
)


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(self.path))


def call(server: ApiServer, method: str, path: str, body: Any = None) -> tuple[int, str, Any]:
    conn = UnixConnection(server.socket_path)
    data = json.dumps(body) if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    kind = (response.getheader("Content-Type") or "").split(";")[0]
    is_json = kind in ("application/json", "application/problem+json")
    return response.status, kind, json.loads(raw) if raw and is_json else raw


def call_as(
    uid: int, server: ApiServer, method: str, path: str, body: Any = None
) -> tuple[dict[str, Any], int]:
    """The request made by a separate process running as `uid`; returns (answer, its pid)."""
    assert SYSTEM_PYTHON is not None
    args = [SYSTEM_PYTHON, "-c", _CLIENT, str(server.socket_path), method, path]
    args.append(json.dumps(body) if body is not None else "")
    proc = subprocess.Popen(args, user=uid, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    return json.loads(out), proc.pid


def wait_terminal(server: ApiServer, run_id: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, _, run = call(server, "GET", f"/v1/runs/{run_id}")
        if status == 200 and run["status"] in ("completed", "failed", "cancelled"):
            return
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")


@pytest.fixture
def open_tmp(short_tmp: Path) -> Path:
    short_tmp.chmod(0o755)  # another uid must reach the socket inside it
    return short_tmp


@needs_root
def test_only_mutating_uids_may_change_others_may_read(open_tmp: Path) -> None:
    with ApiServer(open_tmp, mutating_uids=[1000]) as server:
        status, _, applied = call(server, "POST", "/v1/apply", APPLY)  # root: always allowed
        assert status == 200
        run_id = applied["jobs"][0]["run_id"]

        answer, _ = call_as(NOBODY, server, "GET", f"/v1/runs/{run_id}")
        assert answer["status"] == 200 and answer["body"]["id"] == run_id
        for method, path in [
            ("POST", "/v1/apply"),
            ("POST", f"/v1/runs/{run_id}/cancel"),
            ("POST", "/v1/jobs/acc/j/runs"),
            ("DELETE", "/v1/jobs/acc/j"),
            ("POST", "/v1/namespaces/acc/prune"),
        ]:
            answer, _ = call_as(NOBODY, server, method, path, APPLY if "apply" in path else {})
            assert answer["status"] == 403, (method, path, answer)
            assert answer["type"] == "application/problem+json"
            assert "mutating_uids" in answer["body"]["detail"]
        status, _, job = call(server, "GET", "/v1/jobs/acc/j")
        assert status == 200 and job["revision"] == 1  # nothing changed


@needs_root
def test_every_change_is_recorded_with_the_callers_uid_and_pid(open_tmp: Path) -> None:
    with ApiServer(open_tmp, mutating_uids=[NOBODY]) as server:
        answer, apply_pid = call_as(NOBODY, server, "POST", "/v1/apply", APPLY)
        assert answer["status"] == 200, answer
        run_id = answer["body"]["jobs"][0]["run_id"]
        wait_terminal(server, run_id)
        answer, run_pid = call_as(NOBODY, server, "POST", "/v1/jobs/acc/j/runs", {})
        manual_id = answer["body"]["id"]
        wait_terminal(server, manual_id)
        cancel, cancel_pid = call_as(NOBODY, server, "POST", f"/v1/runs/{manual_id}/cancel")
        assert cancel["status"] == 409  # already failed: refusals are on record too
        # The runs' own events name who made them (the refused cancel left none).
        for made, pid, action in (
            (run_id, apply_pid, "apply"),
            (manual_id, run_pid, "start_job_run"),
        ):
            events = server.call(server.store.list_events(made))
            callers = [e for e in events if e.type == "caller"]
            assert [
                (e.data["action"], e.data["caller_uid"], e.data["caller_pid"]) for e in callers
            ] == [(action, NOBODY, pid)]
            assert f"uid {NOBODY} (pid {pid})" in callers[0].message
        _, delete_pid = call_as(NOBODY, server, "DELETE", "/v1/jobs/acc/j")
        prune, prune_pid = call_as(NOBODY, server, "POST", "/v1/namespaces/acc/prune", {})
        assert prune["status"] == 200 and sorted(prune["body"]["run_ids"]) == [run_id, manual_id]

        status, _, audit = call(server, "GET", "/v1/audit")
        assert status == 200
        seen = [
            (e["action"], e["caller_uid"], e["caller_pid"], e["status"], e["run_id"])
            for e in reversed(audit["events"])
        ]
        assert seen == [
            ("apply", NOBODY, apply_pid, 200, None),
            ("start_job_run", NOBODY, run_pid, 201, manual_id),
            ("cancel_run", NOBODY, cancel_pid, 409, manual_id),
            ("delete_job", NOBODY, delete_pid, 200, None),
            ("prune_namespace", NOBODY, prune_pid, 200, None),
        ]
        assert audit["events"][-1]["data"]["run_ids"] == [run_id]
        assert audit["events"][0]["data"]["run_ids"] == [run_id, manual_id]
        status, _, by_run = call(server, "GET", f"/v1/audit?run={manual_id}")
        assert [e["action"] for e in by_run["events"]] == ["cancel_run", "start_job_run"]


def test_reads_are_not_recorded_and_unknown_routes_are_problems(short_tmp: Path) -> None:
    with ApiServer(short_tmp) as server:
        call(server, "GET", "/v1/runs")
        status, kind, _ = call(server, "POST", "/v1/nothing-here")
        assert (status, kind) == (404, "application/problem+json")
        _, _, audit = call(server, "GET", "/v1/audit")
        assert audit["events"] == []


def test_odd_run_ids_in_mutating_paths_are_bad_requests(short_tmp: Path) -> None:
    with ApiServer(short_tmp) as server:
        for raw in ("%C2%B2", "1" * 30, "-1", "0x1"):
            status, kind, body = call(server, "POST", f"/v1/runs/{raw}/cancel")
            assert (status, kind) == (400, "application/problem+json"), (raw, body)
        _, _, audit = call(server, "GET", "/v1/audit")
        assert [(e["status"], e["run_id"]) for e in audit["events"]] == [(400, None)] * 4


def test_request_body_over_the_cap_is_refused(short_tmp: Path) -> None:
    with ApiServer(short_tmp, limits={"max_request_bytes": "1Mi"}) as server:
        content = "# " + "x" * (1024 * 1024 + 10)
        status, kind, _ = call(
            server, "POST", "/v1/apply", {"manifests": [{"source": "a", "content": content}]}
        )
        assert (status, kind) == (413, "application/problem+json")


def test_jobs_per_apply_are_capped(short_tmp: Path) -> None:
    with ApiServer(short_tmp, limits={"max_jobs_per_apply": 3}) as server:
        jobs = ", ".join(f"j{i}: {{name: j{i}, namespace: cap, image: x}}" for i in range(4))
        manifest = {"manifests": [{"source": "m.yaml", "content": f"deployments: {{{jobs}}}"}]}
        status, _, body = call(server, "POST", "/v1/apply", manifest)
        assert status == 413 and "limits.max_jobs_per_apply (3)" in body["detail"]
        status, _, listed = call(server, "GET", "/v1/jobs")
        assert listed["jobs"] == []  # nothing stored


def test_a_slow_body_times_out(short_tmp: Path) -> None:
    with ApiServer(short_tmp, limits={"request_timeout": "1s"}) as server:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(30)
        sock.connect(str(server.socket_path))
        sock.sendall(
            b"POST /v1/apply HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        answer = sock.recv(65536).decode()
        sock.close()
        assert answer.startswith("HTTP/1.1 408") and "limits.request_timeout" in answer


def test_streams_are_capped_and_a_client_that_stops_reading_is_dropped(short_tmp: Path) -> None:
    limits = {"max_log_streams": 2, "stream_write_timeout": "1s"}
    with ApiServer(short_tmp, limits=limits) as server:
        status, _, applied = call(server, "POST", "/v1/apply", APPLY)
        run_id = applied["jobs"][0]["run_id"]
        wait_terminal(server, run_id)
        server.call(_append(server, run_id, "x" * 8000, 3000))  # 24 MB: over any buffer
        stuck = []
        for _ in range(2):  # ask for everything, then never read
            sock = socket.socket(socket.AF_UNIX)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(str(server.socket_path))
            sock.sendall(f"GET /v1/runs/{run_id}/logs HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            stuck.append(sock)
        _wait_until(lambda: _open_streams(server) == 2)
        status, kind, body = call(server, "GET", f"/v1/runs/{run_id}/events")
        assert (status, kind) == (429, "application/problem+json")
        assert "limits.max_log_streams" in body["detail"]
        with socket.socket(socket.AF_UNIX) as refused:  # and its connection is not kept
            refused.settimeout(30)
            refused.connect(str(server.socket_path))
            refused.sendall(f"GET /v1/runs/{run_id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            answer = b""
            while chunk := refused.recv(65536):  # ends only when the daemon closes it
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 429")
        # The stuck readers are dropped after stream_write_timeout and free their slots.
        _wait_until(lambda: _open_streams(server) == 0, within=30)
        status, _, _ = call(server, "GET", f"/v1/runs/{run_id}/events")
        assert status == 200
        for sock in stuck:
            sock.close()


def test_a_log_of_several_pages_comes_whole_and_in_order(short_tmp: Path) -> None:
    """Pages come one after another, from the stream's thread: none is lost or repeated."""
    with ApiServer(short_tmp) as server:
        _, _, applied = call(server, "POST", "/v1/apply", APPLY)
        run_id = applied["jobs"][0]["run_id"]
        wait_terminal(server, run_id)
        base = server.call(server.store.last_log_seq(run_id))  # its `system` lines
        seqs = range(base + 1, base + 1001)  # 3.9 pages
        rows = [(run_id, s, 1, "stdout" if s % 3 else "stderr", s, f"line {s}") for s in seqs]
        server.call(server.store.append_logs(rows, {run_id: (1, False)}))

        status, kind, body = call(server, "GET", f"/v1/runs/{run_id}/logs")
        records = [json.loads(line) for line in body.split(b"\n")[:-1]]
        assert (status, kind) == (200, "application/x-ndjson")
        assert [r["seq"] for r in records] == list(range(1, base + 1001))
        assert [r["line"] for r in records[base:]] == [f"line {s}" for s in seqs]

        _, _, body = call(server, "GET", f"/v1/runs/{run_id}/logs?tail=300&stream=stdout")
        stdout = [s for s in seqs if s % 3]
        assert [json.loads(line)["seq"] for line in body.splitlines()] == stdout[-300:]


def test_a_run_wait_takes_a_stream_slot(short_tmp: Path) -> None:
    """A wait may block for minutes, so it counts against max_log_streams like a follow."""
    from ringjobs.api.app import STREAMS_KEY

    with ApiServer(short_tmp, limits={"max_log_streams": 1}) as server:
        _, _, applied = call(server, "POST", "/v1/apply", APPLY)
        run_id = applied["jobs"][0]["run_id"]
        wait_terminal(server, run_id)
        assert server.app is not None
        slots = server.app[STREAMS_KEY]
        release = asyncio.Event()

        async def hold() -> None:  # another client's follow, through the real slot
            async with slots.slot():
                await release.wait()

        held = asyncio.run_coroutine_threadsafe(hold(), server.loop)
        _wait_until(lambda: _open_streams(server) == 1)
        status, kind, body = call(server, "GET", f"/v1/runs/{run_id}/wait?timeout=0")
        assert (status, kind) == (429, "application/problem+json")
        assert "run waits" in body["detail"] and "limits.max_log_streams" in body["detail"]
        server.loop.call_soon_threadsafe(release.set)
        held.result(30)
        status, _, answer = call(server, "GET", f"/v1/runs/{run_id}/wait?timeout=0")
        assert status == 200 and answer["id"] == run_id
        assert _open_streams(server) == 0  # the wait gave its slot back


async def _append(server: ApiServer, run_id: int, line: str, count: int) -> None:
    rows = [(run_id, seq, 1, "stdout", 0, line) for seq in range(1, count + 1)]
    await server.store.append_logs(rows, {run_id: (len(line) * count, False)})


def _open_streams(server: ApiServer) -> int:
    from ringjobs.api.app import STREAMS_KEY

    assert server.app is not None
    return server.app[STREAMS_KEY].open


def _wait_until(check: Any, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_a_request_that_creates_a_run_is_recorded_once_with_its_run(short_tmp: Path) -> None:
    with ApiServer(short_tmp) as server:
        exec_body = {"namespace": "acc", "image": "none:1", "command": ["true"]}
        status, _, made = call(server, "POST", "/v1/exec", exec_body)
        assert status == 201, made
        wait_terminal(server, made["id"])
        status, _, again = call(server, "POST", f"/v1/runs/{made['id']}/rerun", {})
        assert status == 201, again
        wait_terminal(server, again["id"])
        status, _, _ = call(server, "POST", "/v1/jobs/acc/missing/runs", {})
        assert status == 404

        _, _, audit = call(server, "GET", "/v1/audit")
        uid = os.getuid()
        assert [
            (e["action"], e["caller_uid"], e["status"], e["run_id"], e["data"])
            for e in reversed(audit["events"])
        ] == [
            ("exec_run", uid, 201, made["id"], {}),
            ("rerun", uid, 201, again["id"], {}),
            ("start_job_run", uid, 404, None, {}),
        ]
        for run_id, action in ((made["id"], "exec_run"), (again["id"], "rerun")):
            events = server.call(server.store.list_events(run_id))
            assert [e.type for e in events][:2] == ["created", "caller"]  # one transaction
            assert [e.data["action"] for e in events if e.type == "caller"] == [action]


def test_a_request_that_fails_after_storing_its_run_is_recorded_with_its_answer(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ApiServer(short_tmp) as server:
        exec_body = {"namespace": "acc", "image": "none:1", "command": ["true"]}
        real_run = server.engine._run
        calls = 0

        async def run_read_fails_once(run_id: int) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:  # the read of the run exec_run has just stored
                raise StoreUnavailable("cannot read the database (fake)")
            return await real_run(run_id)

        monkeypatch.setattr(server.engine, "_run", run_read_fails_once)
        status, _, _ = call(server, "POST", "/v1/exec", exec_body)
        assert status == 503
        [stored] = server.call(server.store.list_runs())
        _, _, audit = call(server, "GET", "/v1/audit")
        # One record: the run it made, and the answer the caller really got.
        assert [(e["action"], e["status"], e["run_id"]) for e in audit["events"]] == [
            ("exec_run", 503, stored.id)
        ]
        events = server.call(server.store.list_events(stored.id))
        assert [e.data["action"] for e in events if e.type == "caller"] == ["exec_run"]
