"""The `ringjobs` CLI against a fake daemon on a unix socket: exit codes and output."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_client import Answer, FakeDaemon, run

from ringjobs import cli
from ringjobs.client import Client
from ringjobs.mediatypes import LOG_FRAMES

REPO = Path(__file__).resolve().parents[2]
MANIFEST = "deployments:\n  migrate:\n    image: ${IMAGE}\n"
PROBLEM = "application/problem+json"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RINGJOBS_SOCKET", raising=False)


@pytest.fixture
def utc() -> Iterator[None]:
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


def ringjobs(daemon: FakeDaemon, *args: str) -> int:
    return cli.main(["--socket", daemon.socket_path, *args])


def problem(status: int, title: str, detail: str = "", **extra: Any) -> Answer:
    body = {"type": f"urn:ringjobs:problem:{title}", "title": title, "status": status}
    return Answer({**body, "detail": detail, **extra}, status=status, content_type=PROBLEM)


def apply_answer(*run_ids: int | None, **extra: Any) -> Answer:
    jobs = [
        {
            "namespace": "prod",
            "name": f"job{n}",
            "revision": 3,
            "action": "created" if run_id else "unchanged",
            "run_id": run_id,
            "spec": {"name": f"job{n}", "image": "alpine:3"},
        }
        for n, run_id in enumerate(run_ids)
    ]
    body = {"dry_run": False, "jobs": jobs, "namespaces": [], "warnings": [], **extra}
    return Answer(body)


def log(seq: int, stream: str, line: str) -> dict[str, Any]:
    return {
        "seq": seq,
        "attempt": 1,
        "stream": stream,
        "time": f"2024-05-01T10:00:0{seq}Z",
        "line": line,
    }


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- reaching the daemon ---------------------------------------------------------------


def test_unreachable_daemon_exits_3_with_the_start_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    socket_path = "/tmp/ringjobs-test-missing/d.sock"
    assert cli.main(["--socket", socket_path, "run", "list"]) == 3
    err = capsys.readouterr().err
    assert f"cannot reach the ringjobs daemon at {socket_path} (is it running?)" in err
    assert f"start it with: ringjobs daemon --socket {socket_path}\n" in err


def test_start_command_omits_the_default_socket(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    default = "/tmp/ringjobs-test-missing/default.sock"
    monkeypatch.setattr("ringjobs.client.default_socket_path", lambda: default)
    monkeypatch.setattr("ringjobs.cli.default_socket_path", lambda: default)
    assert cli.main(["job", "list"]) == 3
    assert capsys.readouterr().err.endswith("start it with: ringjobs daemon\n")


def test_socket_from_environment_and_after_the_command(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon.route("GET", "/v1/namespaces", Answer({"namespaces": []}))
    monkeypatch.setenv("RINGJOBS_SOCKET", daemon.socket_path)
    assert cli.main(["namespace", "list"]) == 0
    monkeypatch.setenv("RINGJOBS_SOCKET", "/tmp/ringjobs-test-missing/d.sock")
    assert cli.main(["namespace", "list", "--socket", daemon.socket_path]) == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "list", "-n", "prod", "--status", "failed"],
        ["--socket", "/tmp/x.sock", "job", "inspect", "prod/m", "-o", "json"],
        ["--socket=/tmp/x.sock", "logs", "7", "-f", "--tail", "3"],
        ["apply", "-f", "a.yaml", "-f", "-", "--env-file", ".env", "--wait"],
        ["namespace", "prune", "ci", "--all", "--socket", "/tmp/y.sock"],
        ["daemon", "--socket", "/tmp/s.sock", "--config", "c.yaml"],
        ["doctor"],
    ],
)
def test_partial_parser_parses_like_the_full_one(argv: list[str]) -> None:
    partial = cli.build_parser(argv).parse_args(argv)
    assert vars(partial) == vars(cli.build_parser().parse_args(argv))


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("apply", "job", "run", "logs", "namespace", "daemon", "doctor"):
        assert f"    {command} " in out


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["job", "inspect", "no-slash"]) == 2
    assert "expected NAMESPACE/NAME" in capsys.readouterr().err


# -- API errors ------------------------------------------------------------------------


def test_not_found_exits_4(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("GET", "/v1/jobs/prod/nope", problem(404, "not found", "no job prod/nope"))
    assert ringjobs(daemon, "job", "inspect", "prod/nope") == 4
    assert capsys.readouterr().err == "error: not found: no job prod/nope\n"


def test_conflict_exits_5(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("DELETE", "/v1/jobs/prod/migrate", problem(409, "conflict", "run 7 is active"))
    assert ringjobs(daemon, "job", "delete", "prod/migrate") == 5
    assert "error: conflict: run 7 is active" in capsys.readouterr().err


def test_server_error_exits_1(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("GET", "/v1/runs/3", problem(503, "store unavailable"))
    assert ringjobs(daemon, "run", "inspect", "3") == 1
    assert capsys.readouterr().err == "error: store unavailable\n"


# -- apply -----------------------------------------------------------------------------


def test_apply_prints_each_job_and_started_run(
    daemon: FakeDaemon,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("IMAGE", "alpine:3")
    daemon.route("POST", "/v1/apply", apply_answer(12, None, warnings=["job1 is a worker"]))
    path = write(tmp_path, "jobs.yaml", MANIFEST)
    assert ringjobs(daemon, "apply", "-f", path) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "job prod/job0: created (revision 3)",
        "run 12 started",
        "job prod/job1: unchanged (revision 3)",
    ]
    assert err == "warning: job1 is a worker\n"
    sent = daemon.requests[0].body
    assert sent["manifests"] == [
        {"source": path, "content": MANIFEST.replace("${IMAGE}", "alpine:3")}
    ]


def test_shell_environment_wins_over_env_files(
    daemon: FakeDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("A", "shell")
    monkeypatch.delenv("B", raising=False)
    first = write(tmp_path, "one.env", "A=file\nB=one\n")
    second = write(tmp_path, "two.env", "B=two\n")
    manifest = write(tmp_path, "jobs.yaml", "a: $A\nb: $B\n")
    daemon.route("POST", "/v1/apply", apply_answer())
    args = ["apply", "-f", manifest, "--env-file", first, "--env-file", second]
    assert ringjobs(daemon, *args) == 0
    assert daemon.requests[0].body["manifests"][0]["content"] == "a: shell\nb: two\n"


def test_apply_reads_stdin(daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("deployments: {}\n"))
    daemon.route("POST", "/v1/apply", apply_answer())
    assert ringjobs(daemon, "apply", "-f", "-") == 0
    assert daemon.requests[0].body["manifests"] == [
        {"source": "<stdin>", "content": "deployments: {}\n"}
    ]


def test_apply_prints_every_violation(
    daemon: FakeDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    violations = [
        {
            "path": "deployments.m.image",
            "message": "required",
            "code": "missing",
            "source": "a.yaml",
        },
        {"path": "deployments.m.memory", "message": 'invalid quantity "5GB"', "source": "a.yaml"},
    ]
    answer = problem(422, "invalid manifest", "2 problems", violations=violations)
    daemon.route("POST", "/v1/apply", answer)
    assert ringjobs(daemon, "apply", "-f", write(tmp_path, "a.yaml", "x: 1\n")) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: invalid manifest: 2 problems",
        "  a.yaml: deployments.m.image: required",
        '  a.yaml: deployments.m.memory: invalid quantity "5GB"',
    ]


def test_interpolation_error_sends_nothing(
    daemon: FakeDaemon,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("IMAGE", raising=False)
    path = write(tmp_path, "jobs.yaml", MANIFEST)
    assert ringjobs(daemon, "apply", "-f", path) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: undefined variable")
    assert "IMAGE" in err
    assert daemon.requests == []


def test_missing_manifest_file_sends_nothing(
    daemon: FakeDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope.yaml")
    assert ringjobs(daemon, "apply", "-f", missing) == 1
    assert capsys.readouterr().err == f"error: cannot read {missing}: No such file or directory\n"
    assert daemon.requests == []


def test_dry_run_prints_the_resolved_specs(
    daemon: FakeDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.route("POST", "/v1/apply", apply_answer(None, dry_run=True))
    assert ringjobs(daemon, "apply", "--dry-run", "-f", write(tmp_path, "a.yaml", "x: 1\n")) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": "job0", "image": "alpine:3"}]
    assert daemon.requests[0].body["dry_run"] is True


def test_apply_wait_without_runs_says_so(
    daemon: FakeDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.route("POST", "/v1/apply", apply_answer(None))
    assert ringjobs(daemon, "apply", "--wait", "-f", write(tmp_path, "a.yaml", "x: 1\n")) == 0
    assert "no run was started; nothing to wait for" in capsys.readouterr().err


def test_apply_wait_exits_with_the_first_failure(daemon: FakeDaemon, tmp_path: Path) -> None:
    daemon.route("POST", "/v1/apply", apply_answer(1, 2, 3))
    daemon.route("GET", "/v1/runs/1/wait", Answer(run(1)))
    daemon.route("GET", "/v1/runs/2/wait", Answer(run(2, "failed", reason="oom_killed")))
    daemon.route(
        "GET", "/v1/runs/3/wait", Answer(run(3, "failed", reason="exit_code", exit_code=2))
    )
    daemon.route("GET", "/v1/runs/2/logs", Answer(lines=[]))
    daemon.route("GET", "/v1/runs/3/logs", Answer(lines=[]))
    assert ringjobs(daemon, "apply", "--wait", "-f", write(tmp_path, "a.yaml", "x: 1\n")) == 137


# -- waiting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "exit_code", "expected"),
    [
        ("completed", None, 0, 0),
        ("failed", "exit_code", 3, 3),
        ("failed", "oom_killed", 137, 137),
        ("failed", "deadline_exceeded", 143, 124),
        ("cancelled", None, 143, 130),
        ("failed", "image_not_found", None, 1),
    ],
)
def test_run_wait_exit_codes(
    daemon: FakeDaemon, status: str, reason: str | None, exit_code: int | None, expected: int
) -> None:
    finished = run(7, status, reason=reason, exit_code=exit_code)
    daemon.route("GET", "/v1/runs/7/wait", Answer(finished))
    daemon.route("GET", "/v1/runs/7/logs", Answer(lines=[]))
    assert ringjobs(daemon, "run", "wait", "7") == expected


def test_wait_asks_again_while_the_run_is_active(daemon: FakeDaemon) -> None:
    answers = iter([run(7, "pending"), run(7, "running"), run(7, "completed")])
    daemon.route("GET", "/v1/runs/7/wait", lambda _: Answer(next(answers)))
    assert ringjobs(daemon, "run", "wait", "7") == 0
    assert len(daemon.requests) == 3


def test_failure_prints_reason_and_last_log_lines(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = run(7, "failed", reason="exit_code", exit_code=3, message="container exited with 3")
    daemon.route("GET", "/v1/runs/7/wait", Answer(failed))
    daemon.route(
        "GET",
        "/v1/runs/7/logs",
        Answer(lines=[log(1, "stdout", "step 1"), log(2, "stderr", "boom")]),
    )
    assert ringjobs(daemon, "run", "wait", "7") == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "run 7 failed: exit_code (exit code 3): container exited with 3",
        "--- last 2 log lines of run 7 ---",
        "step 1",
        "boom",
    ]
    assert daemon.requests[-1].query == {"tail": "20"}


def test_job_run_logs_streams_then_waits(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.route("POST", "/v1/jobs/prod/migrate/runs", Answer(run(9, "pending"), status=201))
    daemon.route("GET", "/v1/runs/9/logs", Answer(lines=[log(1, "stdout", "hello")]))
    daemon.route("GET", "/v1/runs/9/wait", Answer(run(9, "cancelled", message="by user")))
    assert ringjobs(daemon, "job", "run", "prod/migrate", "--logs") == 130
    out, err = capsys.readouterr()
    assert out == "run 9 started\nhello\n"
    assert err == "run 9 cancelled: by user\n"  # --logs showed the lines: no repeat
    assert daemon.requests[1].query == {"follow": "1"}


def test_follow_resumes_after_a_daemon_restart_without_repeats(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_client", lambda args: Client(args.socket, sleep=lambda _: None))
    first = [log(1, "stdout", "one"), log(2, "stdout", "two"), log(3, "stdout", "never sent")]
    second = [log(2, "stdout", "two"), log(3, "stdout", "three")]
    answers = iter([Answer(lines=first, between=_die_before_line_3), Answer(lines=second)])
    daemon.route("GET", "/v1/runs/7/logs", lambda _: next(answers))
    assert ringjobs(daemon, "logs", "-f", "7") == 0
    out, err = capsys.readouterr()
    assert out == "one\ntwo\nthree\n"
    assert "reconnecting" in err
    assert daemon.requests[1].query == {"follow": "1", "since": "2024-05-01T10:00:02Z"}


def _die_before_line_3(index: int) -> None:
    if index == 2:
        raise ConnectionAbortedError  # the daemon stops mid-stream


def test_ctrl_c_while_waiting_exits_130(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Client, "wait_until_terminal", interrupted)
    assert ringjobs(daemon, "run", "wait", "7") == 130
    assert "Traceback" not in capsys.readouterr().err


# -- logs and events -------------------------------------------------------------------


def test_logs_split_stdout_stderr_and_system(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [log(1, "stdout", "out"), log(2, "stderr", "err"), log(3, "system", "truncated")]
    daemon.route("GET", "/v1/runs/7/logs", Answer(lines=records))
    assert ringjobs(daemon, "logs", "7", "--tail", "5", "--stream", "stdout") == 0
    out, err = capsys.readouterr()
    assert out == "out\n"
    assert err == "err\n[ringjobs] truncated\n"
    assert daemon.requests[0].query == {"tail": "5", "stream": "stdout"}


def test_logs_timestamps(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("GET", "/v1/runs/7/logs", Answer(lines=[log(1, "stdout", "out")]))
    assert ringjobs(daemon, "logs", "7", "--timestamps", "--since", "10m") == 0
    assert capsys.readouterr().out == "2024-05-01T10:00:01Z out\n"
    assert daemon.requests[0].query == {"since": "10m", "timestamps": "1"}


def test_logs_prints_log_frames_as_they_come(
    daemon: FakeDaemon, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    frames = [(1, b"out \xff\x00\n"), (2, b"err\n"), (0, b"[ringjobs] capped\n"), (1, b"two\n")]
    body = b"".join(b"%d%08x" % (stream, len(data)) + data for stream, data in frames)
    daemon.route("GET", "/v1/runs/7/logs", Answer(raw=body, content_type=LOG_FRAMES))
    assert ringjobs(daemon, "logs", "7") == 0
    out, err = capsysbinary.readouterr()
    assert out == b"out \xff\x00\ntwo\n"  # the bytes as stored, nothing decoded
    assert err == b"err\n[ringjobs] capped\n"


def test_logs_keeps_the_order_of_its_streams_when_both_go_to_one_file(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    frames = [(1, b"out 1\n"), (2, b"err\n"), (1, b"out 2\n"), (0, b"[ringjobs] x\n"), (1, b"3\n")]
    body = b"".join(b"%d%08x" % (stream, len(data)) + data for stream, data in frames)
    daemon.route("GET", "/v1/runs/7/logs", Answer(raw=body, content_type=LOG_FRAMES))
    with open(tmp_path / "both", "wb") as both:  # `ringjobs logs 7 >both 2>&1`
        for name in ("stdout", "stderr"):
            raw = io.FileIO(both.fileno(), "w", closefd=False)
            monkeypatch.setattr(sys, name, io.TextIOWrapper(io.BufferedWriter(raw)))
        assert ringjobs(daemon, "logs", "7") == 0
    assert (tmp_path / "both").read_bytes() == b"".join(data for _, data in frames)


def test_logs_to_a_text_only_stream_keeps_a_character_cut_between_pieces(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    pieces = [("stdout", b"caf\xc3"), ("stdout", b"\xa9 \xff\n")]  # as frames may arrive
    monkeypatch.setattr(Client, "print_logs", lambda *_, **__: iter(pieces))
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # no .buffer: text only
    assert ringjobs(daemon, "logs", "7") == 0
    assert sys.stdout.getvalue() == "café \ufffd\n"


def test_events_follow_prints_one_line_each(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str], utc: None
) -> None:
    events = [
        {
            "id": 1,
            "run_id": 7,
            "time": "2024-05-01T10:00:00Z",
            "type": "created",
            "message": "run created",
        }
    ]
    daemon.route("GET", "/v1/runs/7/events", Answer(lines=events))
    assert ringjobs(daemon, "run", "events", "7", "--follow") == 0
    assert capsys.readouterr().out == "2024-05-01 10:00:00  created            run created\n"
    assert ringjobs(daemon, "run", "events", "7", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out) == events[0]


# -- lists and documents ---------------------------------------------------------------


def test_run_list_table(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str], utc: None) -> None:
    daemon.route(
        "GET", "/v1/runs", Answer({"runs": [run(12, "failed", reason="exit_code", exit_code=2)]})
    )
    assert ringjobs(daemon, "run", "list", "-n", "prod", "--limit", "5", "--before", "13") == 0
    header, row = capsys.readouterr().out.splitlines()
    columns = "ID NAMESPACE JOB REV TRIGGER STATUS REASON EXIT CREATED DURATION"
    assert header.split() == columns.split()
    cells = "12 prod migrate 2 apply failed exit_code 2 2024-05-01 10:00:00 2.5s"
    assert row.split() == cells.split()
    assert header.index("STATUS") == row.index("failed")
    assert daemon.requests[0].query == {"namespace": "prod", "limit": "5", "before": "13"}


def test_null_cells_print_a_dash(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    pending = run(3, "pending", started_at=None, finished_at=None)
    daemon.route("GET", "/v1/runs", Answer({"runs": [pending]}))
    assert ringjobs(daemon, "run", "list") == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[5:8] == ["pending", "-", "-"]
    assert row[-1] == "-"


def test_run_list_json_is_the_api_answer(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    body = {"runs": [run(12)]}
    daemon.route("GET", "/v1/runs", Answer(body))
    assert ringjobs(daemon, "run", "list", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out) == body


def test_job_list_table(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    job = {
        "namespace": "prod",
        "name": "backup",
        "revision": 4,
        "schedule": "@daily",
        "suspend": False,
        "last_run": None,
    }
    daemon.route("GET", "/v1/jobs", Answer({"jobs": [job]}))
    assert ringjobs(daemon, "job", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NAMESPACE", "NAME", "REV"]
    assert lines[1].split() == ["prod", "backup", "4", "@daily", "no", "-", "-", "-"]


def test_job_inspect_prints_readable_lines(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    job = {"namespace": "prod", "name": "m", "spec": {"command": ["sh", "-c"], "env": {}}}
    daemon.route("GET", "/v1/jobs/prod/m", Answer(job))
    assert ringjobs(daemon, "job", "inspect", "prod/m") == 0
    assert capsys.readouterr().out.splitlines() == [
        "namespace: prod",
        "name: m",
        "spec:",
        "  command:",
        "    - sh",
        "    - -c",
        "  env: {}",
    ]


def test_namespace_list_and_prune(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    namespaces = [{"name": "ci", "jobs": 2, "runs": 9, "active_runs": 0, "network": "ringjobs_ci"}]
    namespaces[0] |= {"secrets": 1, "environment": {"TZ": "UTC", "DB": "<secret db>"}}
    daemon.route("GET", "/v1/namespaces", Answer({"namespaces": namespaces}))
    counts = {"log_lines_removed": 10, "events_removed": 6, "containers_removed": 0}
    pruned = {"namespace": "ci", "dry_run": True, "run_ids": [3, 4], "runs_removed": 2}
    pruned |= {**counts, "cancelled": 0}
    daemon.route("POST", "/v1/namespaces/ci/prune", Answer(pruned))
    assert ringjobs(daemon, "namespace", "list") == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row == ["ci", "2", "9", "0", "ringjobs_ci", "1", "TZ=UTC", "DB=<secret", "db>"]
    assert ringjobs(daemon, "namespace", "prune", "ci", "--dry-run") == 0
    assert capsys.readouterr().out.splitlines() == [
        "would remove 2 runs from ci: 3, 4",
        "  log lines: 10, events: 6, containers: 0, cancelled: 0",
    ]
    assert daemon.requests[-1].body == {"all": False, "dry_run": True}


def test_dry_run_prune_without_counts_lists_the_runs(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    pruned = {"namespace": "ci", "dry_run": True, "run_ids": [3], "runs_removed": 0}
    daemon.route("POST", "/v1/namespaces/ci/prune", Answer(pruned))
    assert ringjobs(daemon, "namespace", "prune", "ci", "--dry-run") == 0
    assert capsys.readouterr().out == "would remove 1 run from ci: 3\n"


# -- doctor and daemon -----------------------------------------------------------------

HEALTH = {
    "status": "ok",
    "version": "0.1.0",
    "docker": {"ok": True, "version": "27.1.1"},
    "database": {"ok": True, "path": "/var/lib/ringjobs/ringjobs.db"},
    "active_runs": 0,
}


def test_doctor_all_ok(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("GET", "/v1/health", Answer(HEALTH))
    assert ringjobs(daemon, "doctor") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["ok", "socket:"],
        ["ok", "daemon:"],
        ["ok", "docker:"],
        ["ok", "database:"],
    ]
    assert "27.1.1" in lines[2]


def test_doctor_reports_docker_down(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    health = {**HEALTH, "status": "degraded", "docker": {"ok": False, "error": "no engine"}}
    daemon.route("GET", "/v1/health", Answer(health))
    assert ringjobs(daemon, "doctor") == 1
    assert "FAIL  docker: unreachable: no engine" in capsys.readouterr().out


def test_doctor_without_daemon_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--socket", "/tmp/ringjobs-test-missing/d.sock", "doctor"]) == 3
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == ["FAIL"] * 4
    assert "start it with: ringjobs daemon --socket" in err


def test_daemon_command_calls_run_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Path | None, ...]] = []

    def run_daemon(*paths: Path | None) -> int:
        calls.append(paths)
        return 7

    module = types.ModuleType("ringjobs.launch")
    module.run_daemon = run_daemon  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ringjobs.launch", module)
    assert cli.main(["daemon", "--socket", "/tmp/s.sock", "--database", "/tmp/d.db"]) == 7
    assert calls == [(None, Path("/tmp/s.sock"), Path("/tmp/d.db"))]


# -- process behaviour -----------------------------------------------------------------


class _ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError


def test_broken_pipe_exits_quietly(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.route("GET", "/v1/runs", Answer({"runs": [run(1)]}))
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert ringjobs(daemon, "run", "list") == 141
    assert capsys.readouterr().err == ""


def test_importing_the_cli_loads_no_heavy_module() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import ringjobs.cli"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "ringjobs.cli" in loaded
    heavy = {"pydantic", "yaml", "aiohttp", "docker", "structlog", "aiosqlite", "http", "ssl"}
    assert {name for name in loaded if name.split(".")[0] in heavy} == set()
    ours = {"ringjobs.models", "ringjobs.config", "ringjobs.daemon", "ringjobs.interpolate"}
    assert loaded & ours == set()


def test_prune_sends_keep_last_and_statuses_and_lists_id_ranges(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    run_ids = [*range(1, 501), 502, 504, 505, *range(600, 700)]
    pruned = {"namespace": "ci", "dry_run": False, "run_ids": run_ids, "runs_removed": 604}
    pruned |= {"log_lines_removed": 9, "events_removed": 8, "containers_removed": 1}
    daemon.route("POST", "/v1/namespaces/ci/prune", Answer({**pruned, "cancelled": 0}))
    args = ("namespace", "prune", "ci", "--keep-last", "5", "--status", "failed")
    assert ringjobs(daemon, *args, "--status", "cancelled") == 0
    assert daemon.requests[-1].body == {
        "all": False,
        "dry_run": False,
        "keep_last": 5,
        "status": ["failed", "cancelled"],
    }
    assert capsys.readouterr().out.splitlines() == [
        "removed 604 runs from ci: 1-500, 502, 504, 505, 600-699",
        "  log lines: 9, events: 8, containers: 1, cancelled: 0",
    ]
    assert ringjobs(daemon, "namespace", "prune", "ci", "--status", "sleeping") == 2
    assert ringjobs(daemon, "namespace", "prune", "ci", "--keep-last", "-1") == 2


def test_schedule_list_prints_next_fire_in_utc_and_the_jobs_zone(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    row = {
        "namespace": "prod",
        "job": "backup",
        "schedule": "30 2 * * *",
        "time_zone": "Europe/Paris",
        "suspended": False,
        "next_run_at": "2026-03-29T01:00:00.000000Z",
        "next_run_at_local": "2026-03-29T03:00:00+02:00",
        "last_run_id": 7,
        "last_status": "completed",
    }
    daemon.route("GET", "/v1/schedules", Answer({"schedules": [row]}))
    assert ringjobs(daemon, "schedule", "list", "-n", "prod") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["NAMESPACE", "JOB", "SCHEDULE", "TIME"]
    assert lines[1].split() == [
        *("prod", "backup", "30", "2", "*", "*", "*", "Europe/Paris", "no"),
        *("2026-03-29", "01:00Z", "2026-03-29", "03:00+02:00", "7", "completed"),
    ]
    assert daemon.requests[-1].query == {"namespace": "prod"}
    assert ringjobs(daemon, "schedule", "list", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out) == {"schedules": [row]}


def test_job_suspend_and_resume(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.route("POST", "/v1/jobs/prod/backup/suspend", Answer({"suspended": True}))
    resumed = {"suspended": False, "next_run_at": "2026-03-29T01:00:00.000000Z"}
    daemon.route("POST", "/v1/jobs/prod/backup/resume", Answer(resumed))
    assert ringjobs(daemon, "job", "suspend", "prod/backup") == 0
    assert "suspended" in capsys.readouterr().out
    assert ringjobs(daemon, "job", "resume", "prod/backup") == 0
    assert "next fire 2026-03-29T01:00:00.000000Z" in capsys.readouterr().out
    refused = problem(409, "conflict", "job prod/x has no schedule")
    daemon.route("POST", "/v1/jobs/prod/x/suspend", refused)
    assert ringjobs(daemon, "job", "suspend", "prod/x") == 5
    assert "has no schedule" in capsys.readouterr().err


def test_schedule_fires_table(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fire = {
        "fire_at": "2026-03-02T13:00:00.000000Z",
        "outcome": "missed",
        "run_id": None,
        "message": "missed 3 fires",
    }
    daemon.route("GET", "/v1/jobs/prod/backup/fires", Answer({"fires": [fire]}))
    assert ringjobs(daemon, "schedule", "fires", "prod/backup", "--limit", "5") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["2026-03-02", "13:00Z", "missed", "-", "missed", "3", "fires"]
    assert daemon.requests[-1].query == {"limit": "5"}
