"""DockerRuntime's own calls against the real engine, one by one (issue 7: no docker-py).

The engine tests drive these through runs; here each call's answer is checked against
what the docker CLI says about the same container, network or engine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from ringjobs.runtime.base import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_NAMESPACE,
    ContainerNotFound,
    ContainerSpec,
    ImageNotFound,
)
from ringjobs.runtime.docker import DockerRuntime

pytestmark = pytest.mark.docker

IMAGE = "ringjobs-test:latest"


async def docker(*args: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        "docker", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0 or not check, err.decode()
    return out.decode().strip()


@pytest.fixture
async def runtime(namespace: str) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(None, 2)
    yield rt
    await rt.close()


def spec(namespace: str, name: str, command: str, **fields: object) -> ContainerSpec:
    labels = {LABEL_MANAGED: "true", LABEL_NAMESPACE: namespace, LABEL_INSTANCE: namespace}
    return ContainerSpec(
        name=f"{namespace}-{name}",
        image=IMAGE,
        labels=labels,
        command=["sh", "-c", command],
        network=str(fields.pop("network", "none")),
        **fields,  # type: ignore[arg-type]
    )


async def test_version_is_the_engines(runtime: DockerRuntime) -> None:
    assert await runtime.version() == await docker("version", "--format", "{{.Server.Version}}")
    assert await runtime._engine.api_version() == await docker(
        "version", "--format", "{{.Server.APIVersion}}"
    )


async def test_output_recovers_each_stream_whole_after_the_container_exited(
    runtime: DockerRuntime, namespace: str
) -> None:
    # Long enough for many frames; stderr lines interleaved with stdout ones.
    script = "i=0; while [ $i -lt 3000 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done"
    container_id = await runtime.create(spec(namespace, "out", script))
    try:
        await runtime.start(container_id)
        assert await runtime.wait(container_id) == 0
        stdout = await runtime.output(container_id, "stdout")
        stderr = await runtime.output(container_id, "stderr")
    finally:
        await runtime.remove(container_id)
    assert stdout.decode().splitlines() == [f"out{i}" for i in range(3000)]
    assert stderr.decode().splitlines() == [f"err{i}" for i in range(3000)]
    with pytest.raises(ContainerNotFound):
        await runtime.output(container_id, "stdout")


async def test_a_container_joins_its_network_and_the_extra_ones_before_start(
    runtime: DockerRuntime, namespace: str
) -> None:
    first, second = f"{namespace}-first", f"{namespace}-second"
    try:
        for network in (first, second):
            await runtime.ensure_network(network, {LABEL_NAMESPACE: namespace})
            await runtime.ensure_network(network, {LABEL_NAMESPACE: namespace})  # exists
        listed = await docker("network", "ls", "--filter", f"label={LABEL_NAMESPACE}={namespace}")
        assert (listed.count(first), listed.count(second)) == (1, 1)
        container_id = await runtime.create(
            spec(namespace, "nets", "true", network=first, extra_networks=[second])
        )
        try:
            networks = json.loads(await docker("inspect", container_id))[0]["NetworkSettings"]
        finally:
            await runtime.remove(container_id)
        assert sorted(networks["Networks"]) == [first, second]

    finally:
        await docker("network", "rm", first, second, check=False)


async def test_running_containers_are_found_by_exact_name_and_managed_ones_by_instance(
    runtime: DockerRuntime, namespace: str
) -> None:
    app = f"{namespace}-app"
    label = f"test={namespace}"
    app_id = await docker("run", "-d", "--name", app, "--label", label, IMAGE, "sleep", "60")
    await docker("run", "-d", "--name", f"{app}2", "--label", label, IMAGE, "sleep", "60")
    managed = await runtime.create(spec(namespace, "managed", "sleep 60"))
    try:
        await runtime.start(managed)
        [found] = await runtime.find_running(name=app)
        by_label = await runtime.find_running(labels=(f"test={namespace}",))
        names = await runtime.running_names()
        listed = await runtime.list_managed(namespace)
    finally:
        await runtime.remove(managed)
        await docker("rm", "-f", app, f"{app}2", check=False)
    assert (found.id, found.name, found.image) == (app_id, app, IMAGE)
    assert [s.name for s in by_label] == [f"{app}2", app]  # newest first
    assert {app, f"{app}2"} <= set(names) and f"{namespace}-managed" not in names
    assert [(s.id, s.running) for s in listed] == [(managed, True)]


async def test_a_refused_pull_is_image_not_found_with_the_engines_reason(
    runtime: DockerRuntime,
) -> None:
    # A registry nothing listens on: the engine refuses at once, without the network.
    with pytest.raises(ImageNotFound, match=r"could not be pulled: .*127\.0\.0\.1:1"):
        await runtime.resolve_image("127.0.0.1:1/nosuch/image:1", "IfNotPresent")
