"""The default policy refuses every relaxation, naming the config key that would allow it."""

from __future__ import annotations

from typing import Any

import pytest

from ringjobs.config import JobDefaults, Policy
from ringjobs.exceptions import ValidationFailed
from ringjobs.manifest import ManifestSource, load_manifests
from ringjobs.models import JobSpec, Violation


def load_job(entry: str, policy: Policy | None = None) -> JobSpec:
    text = f"deployments: {{j: {{name: j, image: x, {entry}}}}}"
    loaded = load_manifests([ManifestSource("m.yaml", text)], policy or Policy(), JobDefaults())
    return loaded.jobs[0]


def refusals(entry: str, policy: Policy | None = None) -> list[Violation]:
    with pytest.raises(ValidationFailed) as info:
        load_job(entry, policy)
    return info.value.violations


@pytest.mark.parametrize(
    ("entry", "path", "key"),
    [
        ("privileged: true", "privileged", "policy.allow_privileged"),
        ("cap_add: [SYS_ADMIN]", "cap_add.0", "policy.allowed_capabilities"),
        ("network: host", "network", "policy.allow_host_network"),
        ("pid: host", "pid", "policy.allow_host_pid"),
        ("ipc: host", "ipc", "policy.allow_host_ipc"),
        ("uts: host", "uts", "policy.allow_host_uts"),
        ("userns_mode: host", "userns_mode", "policy.allow_host_userns"),
        ("devices: [/dev/fuse]", "devices.0", "policy.allowed_devices"),
        ("security_opt: [seccomp=unconfined]", "security_opt.0", "allow_unconfined_seccomp"),
        ("security_opt: ['apparmor:unconfined']", "security_opt.0", "allow_unconfined_apparmor"),
        ("volumes: ['/var/run/docker.sock:/s']", "volumes.0", "policy.allow_docker_socket"),
        ("volumes: ['/etc:/host-etc:ro']", "volumes.0", "policy.allowed_bind_paths"),
    ],
)
def test_each_relaxation_is_refused_by_default_naming_its_key(
    entry: str, path: str, key: str
) -> None:
    found = refusals(entry)

    assert any(
        v.path == f"deployments.j.{path}" and v.code == "policy_forbidden" and key in v.message
        for v in found
    ), found


@pytest.mark.parametrize(
    ("entry", "policy", "field", "expected"),
    [
        ("uts: host", {"allow_host_uts": True}, "uts_mode", "host"),
        ("userns_mode: host", {"allow_host_userns": True}, "userns_mode", "host"),
        (
            "devices: [/dev/null, '/dev/null:/dev/mine:r']",
            {"allowed_devices": ["/dev/null"]},
            "devices",
            ["/dev/null:/dev/null:rwm", "/dev/null:/dev/mine:r"],
        ),
        (
            "security_opt: ['seccomp:unconfined', no-new-privileges]",
            {"allow_unconfined_seccomp": True},
            "security_opt",
            ["seccomp=unconfined"],
        ),
    ],
)
def test_each_relaxation_is_allowed_by_its_key(
    entry: str, policy: dict[str, Any], field: str, expected: object
) -> None:
    spec = load_job(entry, Policy(**policy))

    assert getattr(spec, field) == expected


def test_seccomp_allowed_does_not_allow_apparmor() -> None:
    policy = Policy(allow_unconfined_seccomp=True)

    [violation] = refusals("security_opt: [apparmor=unconfined]", policy)
    assert "allow_unconfined_apparmor" in violation.message


@pytest.mark.parametrize(
    "option",
    ["no-new-privileges:false", "seccomp=/etc/profile.json", "systempaths=unconfined", "label=x"],
)
def test_other_security_options_are_not_supported(option: str) -> None:
    policy = Policy(allow_unconfined_seccomp=True, allow_unconfined_apparmor=True)

    [violation] = refusals(f"security_opt: ['{option}']", policy)
    assert (
        violation.code == "not_supported" and "no-new-privileges is always on" in violation.message
    )


@pytest.mark.parametrize(
    "device",
    ["/etc/passwd", "/dev/../etc/passwd", "/dev/null:relative", "/dev/null:/d:rwx", "/a:b:c:d"],
)
def test_malformed_devices_are_refused(device: str) -> None:
    [violation] = refusals(f"devices: ['{device}']", Policy(allowed_devices=["/dev/null"]))
    assert violation.path == "deployments.j.devices.0"


def test_devices_are_compared_by_their_real_path(tmp_path: Any) -> None:
    link = tmp_path / "null-link"
    link.symlink_to("/dev/null")

    spec = load_job("devices: [/dev/null]", Policy(allowed_devices=[str(link)]))
    assert spec.devices == ["/dev/null:/dev/null:rwm"]
    [violation] = refusals("devices: [/dev/zero]", Policy(allowed_devices=[str(link)]))
    assert violation.code == "policy_forbidden" and str(link) in violation.message


@pytest.mark.parametrize("user", ["1000", "1000:1000", "app", "app:staff", "nobody"])
def test_valid_users(user: str) -> None:
    assert load_job(f"config: {{user: '{user}'}}").user == user


@pytest.mark.parametrize("user", ["1000:", ":1000", "a b", "root;rm -rf /", "-u", "a:b:c"])
def test_invalid_users_are_refused(user: str) -> None:
    [violation] = refusals(f"config: {{user: '{user}'}}")
    assert violation.path == "deployments.j.config.user" and "invalid user" in violation.message


def test_tmpfs_options_are_checked() -> None:
    spec = load_job("tmpfs: {/tmp: 'size=64m,mode=1777,noexec', /run: ''}")
    assert spec.tmpfs == {"/tmp": "size=64m,mode=1777,noexec", "/run": ""}

    for options in ("suid", "dev", "size=1m,exec,context=x", "size=64m;rm"):
        [violation] = refusals(f"tmpfs: {{/tmp: '{options}'}}")
        assert violation.path == "deployments.j.tmpfs./tmp", options
