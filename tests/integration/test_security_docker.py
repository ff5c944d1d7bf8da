"""Hardening knobs really take effect inside containers; allowed relaxations reach Docker."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_engine_docker import Harness, docker_inspect, make_config

from ringjobs.config import JobDefaults, Policy
from ringjobs.manifest import ManifestSource, load_manifests
from ringjobs.models import RunStatus

pytestmark = pytest.mark.docker


def from_manifest(namespace: str, entry: str, policy: Policy | None = None) -> object:
    """The spec exactly as `apply` would store it: the policy checks run on the way."""
    text = (
        f"deployments: {{j: {{name: j, namespace: {namespace}, image: ringjobs-test:latest, "
        f"keep_container: 1m, {entry}}}}}"
    )
    loaded = load_manifests([ManifestSource("m.yaml", text)], policy or Policy(), JobDefaults())
    return loaded.jobs[0]


async def test_read_only_rootfs_user_and_tmpfs_take_effect(harness: Harness) -> None:
    spec = from_manifest(
        harness.namespace,
        "read_only_rootfs: true, config: {user: '1000:1000'}, "
        "tmpfs: {/scratch: 'size=1m,uid=1000,gid=1000,mode=0700,noexec'}, "
        "command: [sh, -c, 'id -u; id -g; touch /x 2>&1; echo hi > /scratch/f && cat /scratch/f; "
        'grep " /scratch " /proc/mounts\']',
    )
    run = await harness.run(spec)  # type: ignore[arg-type]

    assert run.status == RunStatus.COMPLETED, run.message
    lines = await harness.lines(run.id)
    assert lines[:2] == ["1000", "1000"]
    assert "Read-only file system" in lines[2]
    assert lines[3] == "hi"
    mount = lines[4].split()
    assert mount[1:3] == ["/scratch", "tmpfs"]
    assert {"noexec", "size=1024k", "mode=700", "uid=1000", "gid=1000"} <= set(mount[3].split(","))
    info = docker_inspect(run.container_id or "")
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    name = info["Name"].lstrip("/")
    assert name == f"ringjobs_{harness.namespace}_j_{run.id}_1_{harness.store.instance_id[:12]}"


async def test_hardened_defaults_hold_inside_the_container(harness: Harness) -> None:
    spec = from_manifest(
        harness.namespace,
        'command: [sh, -c, \'hostname; ls /dev; grep -E "^(Seccomp|NoNewPrivs|CapEff):" '
        "/proc/self/status']",
    )
    run = await harness.run(spec)  # type: ignore[arg-type]

    lines = await harness.lines(run.id)
    assert lines[0] != socket.gethostname()  # its own UTS namespace
    assert "fuse" not in lines and "mynull" not in lines
    status = {line.split(":")[0]: line.split()[-1] for line in lines if ":" in line}
    assert status == {"Seccomp": "2", "NoNewPrivs": "1", "CapEff": "0000000000000000"}


RELAXED = {
    "allow_host_uts": True,
    "allow_host_userns": True,
    "allowed_devices": ["/dev/null"],
    "allow_unconfined_seccomp": True,
    "allow_unconfined_apparmor": True,
    "allowed_capabilities": ["SYS_ADMIN"],
}


@pytest.fixture
async def relaxed(namespace: str, tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(make_config(tmp_path, policy=RELAXED), namespace)
    await h.start()
    yield h
    await h.stop()


async def test_relaxations_allowed_by_policy_reach_docker(relaxed: Harness) -> None:
    harness, policy = relaxed, Policy(**RELAXED)  # type: ignore[arg-type]
    spec = from_manifest(
        harness.namespace,
        "uts: host, userns_mode: host, devices: ['/dev/null:/dev/mynull:rw'], "
        "security_opt: [seccomp=unconfined, apparmor=unconfined], "
        "command: [sh, -c, 'hostname; echo x > /dev/mynull && echo dev-ok; "
        "grep ^Seccomp: /proc/self/status']",
        policy,
    )
    run = await harness.run(spec)  # type: ignore[arg-type]

    assert run.status == RunStatus.COMPLETED, run.message
    lines = await harness.lines(run.id)
    assert lines[0] == socket.gethostname()
    assert lines[1] == "dev-ok"
    assert lines[2].split() == ["Seccomp:", "0"]
    host = docker_inspect(run.container_id or "")["HostConfig"]
    assert host["UTSMode"] == "host" and host["UsernsMode"] == "host"
    assert host["Devices"] == [
        {"PathOnHost": "/dev/null", "PathInContainer": "/dev/mynull", "CgroupPermissions": "rw"}
    ]
    assert set(host["SecurityOpt"]) == {
        "no-new-privileges",
        "seccomp=unconfined",
        "apparmor=unconfined",
    }


async def test_a_bind_source_swapped_for_a_symlink_after_apply_is_refused(
    namespace: str, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "data").mkdir(parents=True)
    (allowed / "data" / "f").write_text("mine\n")
    policy = {"allowed_bind_paths": [str(allowed)]}
    h = Harness(make_config(tmp_path, policy=policy), namespace)
    await h.start()
    try:
        entry = f"volumes: ['{allowed}/data:/data:ro'], command: [cat, /data/f]"
        spec = from_manifest(namespace, entry, Policy(**policy))
        first = await h.run(spec)  # type: ignore[arg-type]
        assert first.status == RunStatus.COMPLETED and await h.lines(first.id) == ["mine"]

        (allowed / "data" / "f").unlink()
        (allowed / "data").rmdir()
        (allowed / "data").symlink_to("/etc")  # what apply saw is no longer what is there
        second = await h.run(spec)  # type: ignore[arg-type]
    finally:
        await h.stop()
    assert (second.status, second.reason) == (RunStatus.FAILED, "config_error")
    assert "now resolves to '/etc'" in (second.message or "")
    assert second.container_id is None


async def test_a_policy_tightened_after_apply_stops_the_stored_job(harness: Harness) -> None:
    """Applied when the policy allowed it; the daemon now runs with the default policy."""
    entry = (
        "uts: host, devices: ['/dev/null'], cap_add: [SYS_ADMIN], "
        "security_opt: [seccomp=unconfined], command: ['true']"
    )
    spec = from_manifest(harness.namespace, entry, Policy(**RELAXED))  # type: ignore[arg-type]
    run = await harness.run(spec)  # type: ignore[arg-type]
    assert (run.status, run.reason) == (RunStatus.FAILED, "config_error")
    for key in (
        "allow_host_uts",
        "allowed_devices",
        "allowed_capabilities",
        "allow_unconfined_seccomp",
    ):
        assert f"policy.{key}" in (run.message or ""), run.message
    assert run.container_id is None  # refused before Docker was asked for anything
