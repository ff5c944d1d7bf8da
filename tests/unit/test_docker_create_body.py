"""The create request sent over aiohttp is byte for byte what the docker SDK would send."""

from __future__ import annotations

from typing import Any

import docker
import pytest

from ringjobs.models import VolumeMount
from ringjobs.runtime.base import ContainerSpec
from ringjobs.runtime.docker import _create_body, _create_kwargs


def sdk_body(api: docker.APIClient, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What `client.containers.create(**kwargs)` posts, captured before the HTTP call."""
    sent: dict[str, Any] = {}

    def capture(config: dict[str, Any], name: str | None = None, platform: Any = None) -> Any:
        sent.update(name=name, config=dict(config))
        raise _Captured

    client = docker.DockerClient(version=api.api_version)
    client.api.create_container_from_config = capture  # type: ignore[method-assign]
    with pytest.raises(_Captured):
        client.containers.create(**kwargs)
    return str(sent["name"]), sent["config"]


class _Captured(Exception):
    pass


SPECS = [
    ContainerSpec(name="rj-1-1", image="img:1", labels={"io.ringjobs.run": "1"}),
    ContainerSpec(
        name="rj-2-1",
        image="img:1",
        labels={"io.ringjobs.run": "2"},
        command=["sh", "-c", "echo $X"],
        entrypoint=["/bin/env"],
        environment={"X": "1", "RINGJOBS_COMPLETION_INDEX": "3"},
        working_dir="/w",
        user="1000:1000",
        memory_bytes=64 * 2**20,
        cpu_nanos=500_000_000,
        network="ringjobs_ns",
        read_only_rootfs=True,
        tmpfs={"/tmp": "size=64m"},
        mounts=[VolumeMount(type="bind", source="/srv", destination="/data", read_only=True)],
        cap_add=["NET_ADMIN"],
    ),
    ContainerSpec(name="rj-3-1", image="img:1", labels={}, network="none"),
]


@pytest.mark.parametrize("spec", SPECS, ids=["minimal", "everything", "network-none"])
def test_create_body_matches_the_sdk(spec: ContainerSpec) -> None:
    api = docker.APIClient(version="1.41")  # a fixed version: no engine is contacted
    name, body = _create_body(api, _create_kwargs(spec))
    assert (name, body) == sdk_body(api, _create_kwargs(spec))
    assert body["HostConfig"]["CapDrop"] == ["ALL"]  # and it is the hardened config
    assert body["HostConfig"]["Init"] is True
