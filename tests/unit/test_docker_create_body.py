"""The create request is what docker-py sent for the same settings, key for key.

The runtime built it with docker-py's helpers until issue 7; `sdk_kwargs` is how it
called `client.containers.create(**kwargs)` then, kept here as the reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.types import LogConfig, Mount

from ringjobs.models import VolumeMount
from ringjobs.runtime.base import ContainerSpec
from ringjobs.runtime.docker import _create_body
from ringjobs.runtime.dockerenv import docker_config, proxy_environment


def sdk_kwargs(spec: ContainerSpec) -> dict[str, Any]:
    """The arguments the runtime gave `containers.create()` before issue 7 (verbatim)."""
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "name": spec.name,
        "labels": spec.labels,
        "detach": True,
        "command": spec.command,
        "entrypoint": spec.entrypoint,
        "environment": spec.environment,
        "working_dir": spec.working_dir,
        "user": spec.user,
        "cap_drop": ["ALL"],
        "cap_add": spec.cap_add or None,
        "security_opt": ["no-new-privileges", *spec.security_opt],
        "pids_limit": spec.pids_limit,
        "init": True,
        "privileged": spec.privileged,
        "read_only": spec.read_only_rootfs,
        "tmpfs": spec.tmpfs or None,
        "pid_mode": spec.pid_mode,
        "ipc_mode": spec.ipc_mode,
        "uts_mode": spec.uts_mode,
        "userns_mode": spec.userns_mode,
        "devices": spec.devices or None,
        "mounts": [
            Mount(target=m.destination, source=m.source, type=m.type, read_only=m.read_only)
            for m in spec.mounts
        ],
        "log_config": LogConfig(
            type="json-file",
            config={"max-size": spec.log_max_size, "max-file": str(spec.log_max_file)},
        ),
    }
    if spec.memory_bytes:
        kwargs["mem_limit"] = spec.memory_bytes
        kwargs["memswap_limit"] = spec.memory_bytes
    if spec.cpu_nanos:
        kwargs["nano_cpus"] = spec.cpu_nanos
    if spec.network in ("none", "host"):
        kwargs["network_mode"] = spec.network
    elif spec.network:
        kwargs["network"] = spec.network
    return kwargs


class _Captured(Exception):
    pass


def sdk_request(spec: ContainerSpec, host: str) -> tuple[str, dict[str, Any], Any]:
    """(path, query, JSON body) docker-py's `containers.create()` posts, caught unsent."""
    client = docker.DockerClient(base_url=host, version="1.41")  # no engine is contacted
    sent: dict[str, Any] = {}

    def capture(url: str, **kwargs: Any) -> Any:
        sent.update(url=url, **kwargs)
        raise _Captured

    client.api._post = capture  # type: ignore[method-assign]
    with pytest.raises(_Captured):
        client.containers.create(**sdk_kwargs(spec))
    path = sent["url"].removeprefix(client.api.base_url).removeprefix("/v1.41")
    return path, sent["params"], json.loads(sent["data"])


def labels(run: str) -> dict[str, str]:
    return {"io.ringjobs.managed": "true", "io.ringjobs.run": run}


SPECS = {
    "minimal": ContainerSpec(name="rj-1-1", image="img:1", labels=labels("1")),
    "resources-and-process": ContainerSpec(
        name="rj-2-1",
        image="registry.example/team/img@sha256:" + "a" * 64,
        labels=labels("2"),
        command=["sh", "-c", "echo $X"],
        entrypoint=["/bin/env"],
        environment={"X": "1", "EMPTY": "", "RINGJOBS_COMPLETION_INDEX": "3"},
        working_dir="/w",
        user="1000:1000",
        memory_bytes=64 * 2**20,
        cpu_nanos=500_000_000,
        pids_limit=64,
        log_max_size="1m",
        log_max_file=5,
    ),
    "named-network-and-mounts": ContainerSpec(
        name="rj-3-1",
        image="img:1",
        labels=labels("3"),
        network="ringjobs_ns",
        extra_networks=["shop_default"],  # joined after create: not in the body
        read_only_rootfs=True,
        tmpfs={"/tmp": "size=64m,uid=1000", "/run": ""},
        mounts=[
            VolumeMount(type="bind", source="/srv", destination="/data", read_only=True),
            VolumeMount(type="volume", source="cache", destination="/cache"),
            VolumeMount(type="volume", source="ro-vol", destination="/ro", read_only=True),
        ],
    ),
    "network-none": ContainerSpec(name="rj-4-1", image="img:1", labels={}, network="none"),
    "network-host-and-host-namespaces": ContainerSpec(
        name="rj-5-1",
        image="img:1",
        labels=labels("5"),
        network="host",
        pid_mode="host",
        ipc_mode="host",
        uts_mode="host",
        userns_mode="host",
    ),
    "relaxed": ContainerSpec(
        name="rj-6-1",
        image="img:1",
        labels=labels("6"),
        privileged=True,
        cap_add=["NET_ADMIN", "SYS_PTRACE"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        devices=["/dev/fuse:/dev/fuse:rwm", "/dev/null:/dev/mine", "/dev/zero"],
    ),
    "edge-values": ContainerSpec(
        name="rj-7-1",
        image="img:1",
        labels={},
        command=[],
        entrypoint=[],
        user="",
        working_dir="",
        pids_limit=0,
        network="",
    ),
}
HOSTS = ["unix:///var/run/docker.sock", "tcp://special:2375"]


@pytest.fixture(params=["no-config", "proxies"])
def docker_config_dir(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A config.json without, or with proxies (a default one and one for a host)."""
    settings: dict[str, Any] = {"auths": {}}
    if request.param == "proxies":
        settings["proxies"] = {
            "default": {"httpProxy": "http://proxy:3128", "noProxy": "localhost"},
            "tcp://special:2375": {"httpsProxy": "http://s:1", "ftpProxy": "ftp://f:2"},
        }
    (tmp_path / "config.json").write_text(json.dumps(settings))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_create_request_is_what_docker_py_sent(
    spec: ContainerSpec, host: str, docker_config_dir: Path
) -> None:
    proxy_env = proxy_environment(docker_config({"DOCKER_CONFIG": str(docker_config_dir)}), host)

    body = _create_body(spec, proxy_env)

    assert ("/containers/create", {"name": spec.name}, body) == sdk_request(spec, host)
    assert body["HostConfig"]["CapDrop"] == ["ALL"]  # and it is the hardened config
    assert body["HostConfig"]["Init"] is True
    assert "no-new-privileges" in body["HostConfig"]["SecurityOpt"]


def test_proxy_variables_come_first_so_the_jobs_own_win() -> None:
    spec = ContainerSpec(name="rj", image="img", labels={}, environment={"http_proxy": "mine"})
    body = _create_body(spec, ["http_proxy=theirs", "HTTP_PROXY=theirs"])
    assert body["Env"] == ["http_proxy=theirs", "HTTP_PROXY=theirs", "http_proxy=mine"]
