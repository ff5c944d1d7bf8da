"""Security against the real daemon and CLI: default refusals, socket group, read-only uids."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_daemon import Daemon, manifest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/usr/local/bin:/bin")
NOBODY = pwd.getpwnam("nobody") if os.geteuid() == 0 else None


@pytest.fixture
def plain_daemon(short_tmp: Path, docker_engine: None) -> Iterator[Daemon]:
    d = Daemon(short_tmp)
    d.start()
    yield d
    if d.proc is not None:
        assert d.stop() == 0, d.log.read_text()


def test_default_policy_refuses_every_relaxation_and_stores_nothing(
    plain_daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    daemon = plain_daemon
    relaxations = {
        "priv": ({"privileged": True}, "policy.allow_privileged"),
        "caps": ({"cap_add": ["SYS_ADMIN"]}, "policy.allowed_capabilities"),
        "net": ({"network": "host"}, "policy.allow_host_network"),
        "pid": ({"pid": "host"}, "policy.allow_host_pid"),
        "ipc": ({"ipc": "host"}, "policy.allow_host_ipc"),
        "uts": ({"uts": "host"}, "policy.allow_host_uts"),
        "userns": ({"userns_mode": "host"}, "policy.allow_host_userns"),
        "dev": ({"devices": ["/dev/fuse"]}, "policy.allowed_devices"),
        "seccomp": ({"security_opt": ["seccomp=unconfined"]}, "policy.allow_unconfined_seccomp"),
        "apparmor": (
            {"security_opt": ["apparmor=unconfined"]},
            "policy.allow_unconfined_apparmor",
        ),
        "bind": ({"volumes": ["/etc:/host-etc:ro"]}, "policy.allowed_bind_paths"),
        "sock": ({"volumes": ["/var/run:/host-run"]}, "policy.allow_docker_socket"),
    }
    jobs = {name: {"command": ["true"], **fields} for name, (fields, _) in relaxations.items()}
    file = manifest(tmp_path / "m.json", namespace, {**jobs, "fine": {"command": ["true"]}})

    result = daemon.cli("apply", "-f", str(file))

    assert result.returncode == 1
    for name, (_, key) in relaxations.items():
        assert f"deployments.{name}." in result.stderr and key in result.stderr, name
    listed = daemon.json("job", "list")["jobs"]
    assert [j for j in listed if j["namespace"] == namespace] == []  # apply is atomic


@pytest.fixture
def guarded_daemon(short_tmp: Path, docker_engine: None) -> Iterator[Daemon]:
    """A daemon whose socket belongs to nobody's group, with changes limited to uid 1000."""
    assert NOBODY is not None
    short_tmp.chmod(0o755)
    group = grp.getgrgid(NOBODY.pw_gid).gr_name
    d = Daemon(short_tmp)
    d.config.write_text(d.config.read_text() + f"socket_group: {group}\nmutating_uids: [1000]\n")
    d.start()
    yield d
    if d.proc is not None:
        assert d.stop() == 0, d.log.read_text()


def cli_as(daemon: Daemon, uid: int, gid: int, *args: str) -> subprocess.CompletedProcess[str]:
    """The stdlib-only CLI run by another user (who cannot read root's virtualenv)."""
    assert SYSTEM_PYTHON is not None
    return subprocess.run(
        [SYSTEM_PYTHON, "-m", "ringjobs.cli", *args],
        capture_output=True,
        text=True,
        user=uid,
        group=gid,
        extra_groups=[],
        env={"PYTHONPATH": str(REPO), "RINGJOBS_SOCKET": str(daemon.socket), "HOME": "/"},
        timeout=60,
        cwd="/",
    )


@pytest.mark.skipif(NOBODY is None or SYSTEM_PYTHON is None, reason="needs root and python3")
def test_socket_group_may_read_and_only_mutating_uids_may_change(
    guarded_daemon: Daemon, namespace: str
) -> None:
    assert NOBODY is not None
    daemon, uid, gid = guarded_daemon, NOBODY.pw_uid, NOBODY.pw_gid
    info = daemon.socket.stat()
    assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == gid
    file = manifest(daemon.root / "m.json", namespace, {"j": {"command": ["true"]}})
    file.chmod(0o644)

    outsider = cli_as(daemon, 4321, 4321, "run", "list")  # neither owner nor in the group
    assert outsider.returncode == 2 and "permission denied" in outsider.stderr

    reader = cli_as(daemon, uid, gid, "run", "list", "-o", "json")
    assert reader.returncode == 0, reader.stderr
    refused = cli_as(daemon, uid, gid, "apply", "-f", str(file))
    assert refused.returncode == 2 and "mutating_uids" in refused.stderr
    # root always may; --wait, so that no container is still being made at teardown
    assert daemon.cli("apply", "-f", str(file), "--wait").returncode == 0

    answer = daemon.cli("audit", "-o", "json")
    assert answer.returncode == 0, answer.stderr
    audit = json.loads(answer.stdout)["events"]
    assert [(e["action"], e["caller_uid"], e["status"]) for e in audit] == [
        ("apply", 0, 200),
        ("apply", uid, 403),
    ]
    assert all(isinstance(e["caller_pid"], int) and e["caller_pid"] > 0 for e in audit)
    table = daemon.cli("audit")
    assert table.returncode == 0 and "apply" in table.stdout and str(uid) in table.stdout


def test_run_events_name_who_created_and_cancelled_the_run(
    plain_daemon: Daemon, namespace: str, tmp_path: Path
) -> None:
    daemon = plain_daemon
    file = manifest(tmp_path / "m.json", namespace, {"nap": {"command": ["sleep", "30"]}})
    assert daemon.cli("apply", "-f", str(file)).returncode == 0
    run_id = daemon.latest_run(namespace)
    daemon.wait_running(run_id)
    assert daemon.cli("run", "cancel", run_id).returncode == 0
    assert daemon.cli("run", "wait", run_id).returncode == 130

    result = daemon.cli("run", "events", run_id, "-o", "json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    callers = [e["data"] for e in events if e["type"] == "caller"]
    assert [(c["action"], c["caller_uid"]) for c in callers] == [("apply", 0), ("cancel_run", 0)]
    assert all(c["caller_pid"] > 0 for c in callers)
    assert callers[0]["caller_pid"] != callers[1]["caller_pid"]  # two CLI processes
