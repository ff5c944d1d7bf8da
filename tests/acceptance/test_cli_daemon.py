"""The real `ringjobs` CLI against a daemon started as a subprocess, on real Docker."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker

RINGJOBS = str(Path(sys.executable).parent / "ringjobs")
IMAGE = "ringjobs-test:latest"


class Daemon:
    """A `ringjobs daemon` subprocess on a private socket and database."""

    command: tuple[str, ...] = (RINGJOBS,)  # what `daemon --config FILE` is appended to

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "rj.sock"
        self.database = root / "rj.db"
        self.log = root / "daemon.log"
        self.config = root / "config.yaml"
        self.config.write_text(f"socket: {self.socket}\ndatabase: {self.database}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.command, "daemon", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                env={**os.environ, "RINGJOBS_LOG_FORMAT": "json"},
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited early:\n{self.log.read_text()}")
            if _accepts(self.socket):
                return
            time.sleep(0.05)
        raise AssertionError(f"daemon did not listen:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.proc = None
        return code

    def cli(
        self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        environ = {**os.environ, "RINGJOBS_SOCKET": str(self.socket), **(env or {})}
        return subprocess.run(
            [RINGJOBS, *args],
            capture_output=True,
            text=True,
            env=environ,
            input=stdin,
            timeout=120,
        )

    def latest_run(self, namespace: str) -> str:
        """The id of the namespace's newest run."""
        return str(self.json("run", "list", "-n", namespace)["runs"][0]["id"])

    def wait_running(self, run_id: str) -> None:
        deadline = time.monotonic() + 20
        while self.json("run", "inspect", run_id)["status"] != "running":
            assert time.monotonic() < deadline, f"run {run_id} never reached running"
            time.sleep(0.1)

    def json(self, *args: str) -> Any:
        result = self.cli(*args, "-o", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def manifest(path: Path, namespace: str, jobs: dict[str, dict[str, Any]]) -> Path:
    deployments = {
        name: {
            "name": name,
            "namespace": namespace,
            "runtime": "docker",
            "kind": "job",
            "image": IMAGE,
            **fields,
        }
        for name, fields in jobs.items()
    }
    path.write_text(json.dumps({"deployments": deployments}))
    return path


def test_apply_wait_runs_a_job_and_keeps_its_logs(
    daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    file = manifest(
        tmp_path / "m.json",
        namespace,
        {"hello": {"command": ["sh", "-c", "echo out-line; echo err-line >&2"]}},
    )
    result = daemon.cli("apply", "-f", str(file), "--wait")
    assert result.returncode == 0, result.stderr
    assert f"job {namespace}/hello: created (revision 1)" in result.stdout
    runs = daemon.json("run", "list", "-n", namespace)["runs"]
    assert [(r["job"], r["status"], r["exit_code"], r["trigger"]) for r in runs] == [
        ("hello", "completed", 0, "apply")
    ]
    run = runs[0]
    for key in (
        "id",
        "revision",
        "reason",
        "message",
        "oom_killed",
        "attempt",
        "created_at",
        "started_at",
        "finished_at",
        "image",
        "image_id",
        "container_id",
        "command",
        "log_bytes",
    ):
        assert key in run
    assert run["image_id"].startswith("sha256:") and run["finished_at"].endswith("Z")
    assert run["caller_uid"] == os.getuid()
    logs = daemon.cli("logs", str(run["id"]))
    assert (logs.returncode, logs.stdout, logs.stderr) == (0, "out-line\n", "err-line\n")
    only_err = daemon.cli("logs", str(run["id"]), "--stream", "stderr")
    assert (only_err.stdout, only_err.stderr) == ("", "err-line\n")
    listed = daemon.cli("run", "events", str(run["id"]), "-o", "json").stdout.splitlines()
    events = [json.loads(line)["type"] for line in listed]
    assert events[0] == "created" and "finished" in events and events[-1] == "container_removed"


@pytest.mark.parametrize(
    ("command", "memory", "expected"),
    [
        (["sh", "-c", "echo failing; exit 3"], None, 3),
        (["sh", "-c", "head -c 200m /dev/zero | tail"], "32Mi", 137),
    ],
    ids=["exit-3", "oom"],
)
def test_wait_returns_the_job_exit_code(
    daemon: Daemon,
    namespace: str,
    tmp_path: Path,
    command: list[str],
    memory: str | None,
    expected: int,
) -> None:
    fields: dict[str, Any] = {"command": command}
    if memory:
        fields["resources"] = {"limits": {"memory": memory}}
    file = manifest(tmp_path / "m.json", namespace, {"job": fields})
    result = daemon.cli("apply", "-f", str(file), "--wait")
    assert result.returncode == expected, result.stderr
    reason = "exit_code" if expected == 3 else "oom_killed"
    assert reason in result.stderr
    if expected == 3:
        assert "failing" in result.stderr  # the last log lines come with the failure
    run_id = int(daemon.latest_run(namespace))
    assert daemon.cli("run", "wait", str(run_id)).returncode == expected


def test_reapply_is_idempotent_and_a_change_makes_a_revision(
    daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    file = manifest(tmp_path / "m.json", namespace, {"idem": {"command": ["true"]}})
    assert daemon.cli("apply", "-f", str(file), "--wait").returncode == 0
    again = daemon.cli("apply", "-f", str(file), "--wait")
    assert again.returncode == 0 and "unchanged (revision 1)" in again.stdout
    assert len(daemon.json("run", "list", "-n", namespace)["runs"]) == 1
    manifest(file, namespace, {"idem": {"command": ["echo", "v2"]}})
    changed = daemon.cli("apply", "-f", str(file), "--wait")
    assert changed.returncode == 0 and "updated (revision 2)" in changed.stdout
    runs = daemon.json("run", "list", "-n", namespace)["runs"]
    assert [r["revision"] for r in runs] == [2, 1]
    job = daemon.json("job", "inspect", f"{namespace}/idem")
    assert job["revision"] == 2 and job["spec"]["command"] == ["echo", "v2"]


def test_bad_manifest_reports_every_problem_and_stores_nothing(
    daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    good = manifest(tmp_path / "good.json", namespace, {"fine": {"command": ["true"]}})
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "deployments:\n  migrate:\n    name: migrate\n    namespace: " + namespace + "\n"
        "    image: x\n    imagee: y\n    resources:\n      limits:\n        memory: 5GB\n"
    )
    result = daemon.cli("apply", "-f", str(good), "-f", str(bad))
    assert result.returncode == 1
    assert 'deployments.migrate.imagee: unknown field "imagee" (did you mean "image"?)' in (
        result.stderr
    )
    assert 'deployments.migrate.resources.limits.memory: invalid quantity "5GB"' in result.stderr
    assert daemon.cli("job", "list", "-n", namespace).returncode == 4  # nothing stored


def test_invalid_yaml_names_its_line(daemon: Daemon, tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("deployments:\n  a:\n    name: a\n   image: [oops\n")
    result = daemon.cli("apply", "-f", str(bad))
    assert result.returncode == 1
    assert "broken.yaml" in result.stderr and "line 4" in result.stderr


def test_manifest_over_one_mebibyte_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1024 * 1024) + "\ndeployments: {}\n")
    result = daemon.cli("apply", "-f", str(big))
    assert result.returncode == 1
    assert "1 MiB" in result.stderr and "big.yaml" in result.stderr


def test_interpolation_fills_variables_and_names_every_missing_one(
    daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    env_file = tmp_path / "vars.env"
    env_file.write_text("GREETING=from-env-file\n")
    text = (
        "deployments:\n  greet:\n    name: greet\n    namespace: ${NS}\n"
        f"    image: {IMAGE}\n    command: [echo, '$GREETING', '${{OTHER:-fallback}}', '$$HOME']\n"
    )
    path = tmp_path / "m.yaml"
    path.write_text(text)
    ok = daemon.cli(
        "apply", "-f", str(path), "--env-file", str(env_file), "--wait", env={"NS": namespace}
    )
    assert ok.returncode == 0, ok.stderr
    run_id = int(daemon.latest_run(namespace))
    assert daemon.cli("logs", str(run_id)).stdout == "from-env-file fallback $HOME\n"
    path.write_text(text.replace("$GREETING", "$MISSING_ONE $MISSING_TWO"))
    missing = daemon.cli("apply", "-f", str(path), env={"NS": namespace})
    assert missing.returncode == 1
    assert "MISSING_ONE" in missing.stderr and "MISSING_TWO" in missing.stderr


def test_workers_are_refused_unless_skipped(daemon: Daemon, namespace: str, tmp_path: Path) -> None:
    file = manifest(
        tmp_path / "m.json", namespace, {"web": {"kind": "worker"}, "task": {"command": ["true"]}}
    )
    refused = daemon.cli("apply", "-f", str(file))
    assert refused.returncode == 1 and "skip-workers" in refused.stderr
    skipped = daemon.cli("apply", "-f", str(file), "--skip-workers", "--wait")
    assert skipped.returncode == 0, skipped.stderr
    assert "web" in skipped.stderr  # the warning names the skipped worker
    jobs = [j["name"] for j in daemon.json("job", "list", "-n", namespace)["jobs"]]
    assert jobs == ["task"]


def test_dry_run_stores_nothing(daemon: Daemon, namespace: str, tmp_path: Path) -> None:
    file = manifest(tmp_path / "m.json", namespace, {"dry": {"command": ["true"]}})
    result = daemon.cli("apply", "-f", str(file), "--dry-run")
    assert result.returncode == 0
    assert json.loads(result.stdout)[0]["name"] == "dry"
    assert daemon.cli("job", "list", "-n", namespace).returncode == 4


def test_policy_refuses_the_docker_socket(daemon: Daemon, namespace: str, tmp_path: Path) -> None:
    file = manifest(
        tmp_path / "m.json",
        namespace,
        {"escape": {"command": ["true"], "volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}},
    )
    result = daemon.cli("apply", "-f", str(file))
    assert result.returncode == 1 and "policy.allow_docker_socket" in result.stderr


def test_logs_follow_streams_a_running_run_and_ends_with_it(
    daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    script = "for i in 1 2 3 4 5; do echo tick$$i; sleep 0.3; done"  # $$: not interpolated
    file = manifest(tmp_path / "m.json", namespace, {"ticker": {"command": ["sh", "-c", script]}})
    assert daemon.cli("apply", "-f", str(file)).returncode == 0
    run_id = int(daemon.latest_run(namespace))
    follow = daemon.cli("logs", str(run_id), "--follow")
    assert follow.returncode == 0
    assert follow.stdout.split() == [f"tick{i}" for i in range(1, 6)]
    assert daemon.json("run", "inspect", str(run_id))["status"] == "completed"
    tail = daemon.cli("logs", str(run_id), "--tail", "2")
    assert tail.stdout.split() == ["tick4", "tick5"]


def test_prune_removes_finished_runs_and_their_logs(
    daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    file = manifest(tmp_path / "m.json", namespace, {"p": {"command": ["echo", "x"]}})
    assert daemon.cli("apply", "-f", str(file), "--wait").returncode == 0
    run_id = int(daemon.latest_run(namespace))
    recent = daemon.json("namespace", "prune", namespace, "--older-than", "1h")
    assert recent["run_ids"] == []  # finished seconds ago: kept
    everywhere = daemon.json("namespace", "prune", "--all-namespaces", "--dry-run")
    assert [(r["namespace"], r["run_ids"]) for r in everywhere] == [(namespace, [run_id])]
    assert daemon.cli("namespace", "prune").returncode == 2  # never implied
    dry = daemon.json("namespace", "prune", namespace, "--dry-run")
    assert dry["run_ids"] == [run_id]
    assert daemon.cli("logs", str(run_id)).stdout == "x\n"  # still there after a dry run
    done = daemon.json("namespace", "prune", namespace)
    assert (done["runs_removed"], done["log_lines_removed"]) == (1, 1)
    assert daemon.cli("run", "inspect", str(run_id)).returncode == 4
    assert daemon.cli("logs", str(run_id)).returncode == 4
    assert daemon.json("run", "list", "-n", namespace)["runs"] == []


def test_unknown_namespace_and_run_exit_four(daemon: Daemon) -> None:
    listing = daemon.cli("run", "list", "-n", "no-such-namespace")
    assert listing.returncode == 4 and "no-such-namespace" in listing.stderr
    assert daemon.cli("run", "inspect", "999999").returncode == 4


def test_unreachable_daemon_exits_three_with_the_start_command(short_tmp: Path) -> None:
    sock = short_tmp / "none.sock"
    result = subprocess.run(
        [RINGJOBS, "--socket", str(sock), "run", "list"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 3
    assert "ringjobs daemon" in result.stderr and str(sock) in result.stderr


def test_socket_mode_lock_and_stale_socket(daemon: Daemon) -> None:
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o660
    second = subprocess.run(
        [RINGJOBS, "daemon", "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1 and "already" in second.stderr
    assert daemon.cli("doctor").returncode == 0  # the first one still serves
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    assert daemon.socket.exists()  # left behind by the killed daemon
    daemon.start()  # a stale socket is replaced
    assert daemon.cli("namespace", "list").returncode == 0


def test_sigterm_leaves_the_container_running_and_the_next_start_finishes_it(
    daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    script = "echo before; sleep 8; echo after; exit 7"
    file = manifest(tmp_path / "m.json", namespace, {"long": {"command": ["sh", "-c", script]}})
    assert daemon.cli("apply", "-f", str(file)).returncode == 0
    run_id = daemon.latest_run(namespace)
    daemon.wait_running(run_id)
    assert daemon.stop() == 0
    alive = subprocess.run(
        [
            "docker",
            "ps",
            "-q",
            "--filter",
            f"label=io.ringjobs.run={run_id}",
            "--filter",
            f"label=io.ringjobs.namespace={namespace}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    everything = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label=io.ringjobs.namespace={namespace}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert alive.stdout.strip(), f"the container must survive SIGTERM: {everything}\n" + (
        daemon.log.read_text()
    )
    daemon.start()
    waited = daemon.cli("run", "wait", str(run_id))
    assert waited.returncode == 7, waited.stderr
    assert daemon.cli("logs", str(run_id)).stdout == "before\nafter\n"


def test_job_delete_keeps_history(daemon: Daemon, namespace: str, tmp_path: Path) -> None:
    file = manifest(tmp_path / "m.json", namespace, {"gone": {"command": ["true"]}})
    assert daemon.cli("apply", "-f", str(file), "--wait").returncode == 0
    assert daemon.cli("job", "delete", f"{namespace}/gone").returncode == 0
    assert daemon.cli("job", "inspect", f"{namespace}/gone").returncode == 4
    assert len(daemon.json("run", "list", "-n", namespace, "--job", "gone")["runs"]) == 1


def test_doctor_reports_docker_and_database(daemon: Daemon) -> None:
    result = daemon.cli("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and "docker" in result.stdout.lower()


def raw_response(daemon: Daemon, path: str) -> bytes:
    """A plain HTTP GET over the socket: the whole response, headers included."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(daemon.socket))
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return data


def _raw_get(daemon: Daemon, path: str) -> tuple[int, str, str]:
    """A plain HTTP GET over the socket: status, content type, body."""
    head, _, body = raw_response(daemon, path).decode().partition("\r\n\r\n")
    status = int(head.split()[1])
    content_type = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in head.split("\r\n")
            if ln.lower().startswith("content-type:")
        ),
        "",
    )
    return status, content_type.split(";")[0], body


def test_api_errors_are_problems_and_openapi_and_metrics_answer(
    daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    status, kind, body = _raw_get(daemon, "/v1/no-such-route")
    assert (status, kind) == (404, "application/problem+json")
    assert json.loads(body)["status"] == 404
    status, kind, body = _raw_get(daemon, "/v1/runs/abc")
    assert (status, kind) == (400, "application/problem+json")
    assert "violations" in json.loads(body)
    status, _, body = _raw_get(daemon, "/v1/openapi.json")
    document = json.loads(body)
    assert status == 200 and document["openapi"].startswith("3.")
    assert {"/v1/apply", "/v1/runs/{id}/logs", "/v1/namespaces/{ns}/prune"} <= set(
        document["paths"]
    )
    file = manifest(tmp_path / "m.json", namespace, {"counted": {"command": ["true"]}})
    assert daemon.cli("apply", "-f", str(file), "--wait").returncode == 0
    status, _, body = _raw_get(daemon, "/metrics")
    assert status == 200 and "ringjobs_docker_up 1.0" in body
    assert (
        f'ringjobs_runs_finished_total{{namespace="{namespace}",reason="",status="completed"}} 1.0'
        in body
    )


def test_run_cancel_stops_a_running_run_and_wait_says_130(
    daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    file = manifest(
        tmp_path / "m.json",
        namespace,
        {"endless": {"command": ["sh", "-c", "echo started; sleep 60"], "stop_grace_period": "2s"}},
    )
    assert daemon.cli("apply", "-f", str(file)).returncode == 0
    run_id = daemon.latest_run(namespace)
    daemon.wait_running(run_id)
    cancelled = daemon.cli("run", "cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert daemon.cli("run", "wait", run_id).returncode == 130
    run = daemon.json("run", "inspect", run_id)
    assert (run["status"], run["stop_intent"]) == ("cancelled", "cancel")
    again = daemon.cli("run", "cancel", run_id)
    assert again.returncode == 5 and "already finished" in again.stderr
    assert daemon.cli("run", "cancel", "999999").returncode == 4


def test_exec_is_a_recorded_one_off_run(daemon: Daemon, namespace: str) -> None:
    result = daemon.cli(
        "exec",
        "-n",
        namespace,
        "--image",
        IMAGE,
        "--env",
        "WHO=exec",
        "--wait",
        "--logs",
        "--",
        "sh",
        "-c",
        "echo hi $WHO; exit 4",
    )
    assert result.returncode == 4
    assert result.stdout == "hi exec\n"  # stdout carries only the job's output
    runs = daemon.json("run", "list", "-n", namespace)["runs"]
    assert [(r["job"], r["trigger"], r["exit_code"]) for r in runs] == [("exec", "exec", 4)]
    bad = daemon.cli("exec", "-n", "Not_A_Label", "--image", IMAGE, "--", "true")
    assert bad.returncode == 1 and "exec.namespace" in bad.stderr
    assert daemon.cli("exec", "-n", namespace, "--image", IMAGE).returncode == 2


def test_job_run_and_rerun_take_safe_overrides(
    daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    file = manifest(
        tmp_path / "m.json",
        namespace,
        {
            "greet": {
                "command": ["sh", "-c", "echo $$GREETING"],
                "environment": {"GREETING": "hello"},
            }
        },
    )
    assert daemon.cli("apply", "-f", str(file), "--wait").returncode == 0
    first = int(daemon.latest_run(namespace))
    manual = daemon.cli("job", "run", f"{namespace}/greet", "--env", "GREETING=bonjour", "--wait")
    assert manual.returncode == 0, manual.stderr
    rerun = daemon.cli(
        "run", "rerun", str(first), "--command", "sh -c 'echo again; exit 2'", "--wait"
    )
    assert rerun.returncode == 2
    runs = daemon.json("run", "list", "-n", namespace)["runs"]
    assert [r["trigger"] for r in runs] == ["rerun", "manual", "apply"]
    outputs = [daemon.cli("logs", str(r["id"])).stdout for r in runs]
    assert outputs == ["again\n", "bonjour\n", "hello\n"]
    invalid = daemon.cli("job", "run", f"{namespace}/greet", "--timeout", "soon")
    assert invalid.returncode == 1 and "overrides.timeout" in invalid.stderr


def test_forbid_refuses_a_second_run_with_exit_five(
    daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    file = manifest(
        tmp_path / "m.json",
        namespace,
        {"solo": {"command": ["sleep", "30"], "stop_grace_period": "1s"}},
    )
    assert daemon.cli("apply", "-f", str(file)).returncode == 0
    refused = daemon.cli("job", "run", f"{namespace}/solo")
    assert refused.returncode == 5 and "Forbid" in refused.stderr
    run_id = daemon.latest_run(namespace)
    assert daemon.cli("run", "cancel", run_id).returncode == 0
    assert daemon.cli("run", "wait", run_id).returncode == 130


def test_wait_survives_a_daemon_restart(daemon: Daemon, namespace: str, tmp_path: Path) -> None:
    file = manifest(
        tmp_path / "m.json", namespace, {"patient": {"command": ["sh", "-c", "sleep 4; exit 6"]}}
    )
    assert daemon.cli("apply", "-f", str(file)).returncode == 0
    run_id = daemon.latest_run(namespace)
    env = {**os.environ, "RINGJOBS_SOCKET": str(daemon.socket)}
    waiter = subprocess.Popen(
        [RINGJOBS, "run", "wait", run_id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # let the waiter connect before the daemon goes away
    assert daemon.stop() == 0
    daemon.start()
    _out, err = waiter.communicate(timeout=90)
    assert waiter.returncode == 6, err
    assert "reconnecting" in err  # it noticed the restart and kept waiting
