"""Live sources and secrets against the real Docker engine (SPEC 7).

Each test starts its own "app" containers from the busybox test image (labelled
io.ringjobs.test-source=<namespace>, removed afterwards with their network), and runs
jobs borrowing from them through a real engine, store and Docker runtime.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ringjobs.config import Config, load_config
from ringjobs.engine.engine import Engine
from ringjobs.manifest import apply_overrides
from ringjobs.models import (
    JobSpec,
    LiveSource,
    NamespaceSpec,
    Resources,
    Run,
    SecretRef,
    Trigger,
)
from ringjobs.runtime.docker import DockerRuntime
from ringjobs.secrets import SecretBox
from ringjobs.store import Store

pytestmark = pytest.mark.docker

IMAGE = "ringjobs-test:latest"
SOURCE_LABEL = "io.ringjobs.test-source"


def _docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _remove_volume(name: str) -> None:
    subprocess.run(["docker", "volume", "rm", name], capture_output=True, check=False)


@dataclass
class Apps:
    """The test's own running containers: the live sources and their peers."""

    namespace: str
    network: str
    names: list[str] = field(default_factory=list)

    def start(self, name: str, *options: str, command: str = "sleep 3600") -> str:
        full = f"{self.namespace}-{name}"
        _docker(
            "run", "-d", "--name", full, "--label", f"{SOURCE_LABEL}={self.namespace}",
            "--network", self.network, *options, IMAGE, "sh", "-c", command,
        )  # fmt: skip
        self.names.append(full)
        return full

    def image_id(self, name: str) -> str:
        return _docker("inspect", "--format", "{{.Image}}", name)

    def cleanup(self) -> None:
        ids = _docker("ps", "-aq", "--filter", f"label={SOURCE_LABEL}={self.namespace}").split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
        subprocess.run(["docker", "network", "rm", self.network], capture_output=True, check=False)


@pytest.fixture
def apps(namespace: str) -> Iterator[Apps]:
    network = f"{namespace}-app"
    _docker("network", "create", "--label", f"{SOURCE_LABEL}={namespace}", network)
    found = Apps(namespace, network)
    yield found
    found.cleanup()


class Harness:
    """A real engine with a secret key, on a private database."""

    def __init__(self, config: Config, namespace: str) -> None:
        self.namespace = namespace
        self.store = Store(config.database)
        self.runtime = DockerRuntime(None, config.max_concurrent_runs)
        self.box = SecretBox(os.urandom(32))
        self.engine = Engine(self.store, self.runtime, config, self.box)

    def spec(self, name: str, command: list[str], **fields: Any) -> JobSpec:
        return JobSpec(
            namespace=self.namespace, name=name, command=command, timeout_seconds=60.0, **fields
        )

    async def run(self, spec: JobSpec) -> Run:
        run_id = await self.store.create_run(spec, 1, Trigger.MANUAL, 0)
        self.engine.enqueue(run_id)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            token = self.engine.notifier.token(run_id)
            run = await self.store.get_run(run_id)
            assert run is not None
            if run.status.is_terminal and not self.engine.is_executing(run_id):
                return run
            await self.engine.notifier.wait(token, 0.5)
        raise AssertionError(f"run {run_id} did not finish")

    async def stdout(self, run_id: int) -> list[str]:
        records = await self.store.read_logs(run_id, stream="stdout", limit=100_000)
        return [r.line for r in records]

    async def events(self, run_id: int) -> list[tuple[str, str]]:
        return [(e.type, e.message) for e in await self.store.list_events(run_id)]

    async def set_namespace(self, **settings: Any) -> None:
        ns = NamespaceSpec(name=self.namespace, **settings)
        await self.store.apply([ns], [], lambda spec, active: False, None)


@pytest.fixture
async def harness(namespace: str, tmp_path: Path) -> AsyncIterator[Harness]:
    config = load_config(
        None, {"database": tmp_path / "rj.db", "socket": tmp_path / "rj.sock"}, environ={}
    )
    h = Harness(config, namespace)
    await h.store.open()
    await h.engine.start()
    yield h
    await h.engine.stop()
    await h.store.close()
    await h.runtime.close()


async def test_a_job_from_a_container_gets_its_image_env_dir_user_and_networks(
    harness: Harness, apps: Apps
) -> None:
    peer = apps.start(
        "peer", command="mkdir -p /www && echo pong > /www/index.html && httpd -f -p 8080 -h /www"
    )
    app = apps.start("app", "-e", "APP_MODE=live", "-e", "DB_URL=postgres://db/app",
                     "-w", "/srv", "-u", "1234:1234")  # fmt: skip
    spec = harness.spec(
        "borrow",
        ["sh", "-c", f'echo "$APP_MODE|$DB_URL|$(pwd)|$(id -u)"; wget -q -O - http://{peer}:8080/'],
        source=LiveSource(container=app),
    )

    run = await harness.run(spec)

    assert (run.status, run.reason, run.message) == ("completed", None, run.message)
    assert await harness.stdout(run.id) == ["live|postgres://db/app|/srv|1234", "pong"]
    assert run.image_id == apps.image_id(app)  # pinned to the source's image, by ID
    [record] = await harness.store.run_sources(run.id)
    assert record["container"] == app
    assert record["image_id"] == run.image_id
    assert record["selector"] == f"container:{app}"
    assert record["environment"]["APP_MODE"] == "source"
    assert record["environment"]["DB_URL"] == "source"
    assert "postgres" not in json.dumps(record)  # names and origins, never values
    assert any(kind == "source_resolved" for kind, _ in await harness.events(run.id))


async def test_ports_health_restart_policy_and_labels_are_not_copied(
    harness: Harness, apps: Apps
) -> None:
    app = apps.start(
        "app", "--label", "team=shop", "--restart", "unless-stopped", "-p", "127.0.0.1::8080",
        "--health-cmd", "true",
    )  # fmt: skip
    spec = harness.spec(
        "inspected", ["true"], source=LiveSource(container=app), keep_container_seconds=60.0
    )

    run = await harness.run(spec)

    assert run.status == "completed", run.message
    assert run.container_id is not None
    data = json.loads(_docker("inspect", run.container_id))[0]
    assert "team" not in data["Config"]["Labels"]
    assert SOURCE_LABEL not in data["Config"]["Labels"]
    assert data["HostConfig"]["RestartPolicy"]["Name"] in ("", "no")
    assert not data["HostConfig"]["PortBindings"]
    assert "Healthcheck" not in data["Config"] or not data["Config"]["Healthcheck"]
    assert data["HostConfig"]["CapDrop"] == ["ALL"]  # still hardened


async def test_precedence_source_then_namespace_then_job_then_override(
    harness: Harness, apps: Apps
) -> None:
    values = "A=src B=src C=src D=src E=src".split()
    app = apps.start("app", *[arg for v in values for arg in ("-e", v)])
    await harness.set_namespace(environment={"B": "ns", "C": "ns", "D": "ns", "F": "ns"})
    spec = harness.spec(
        "layers",
        ["sh", "-c", 'echo "$A $B $C $D $E $F"'],
        source=LiveSource(container=app),
        environment={"C": "job", "D": "job"},
    )
    spec = apply_overrides(spec, {"env": {"D": "override"}}, load_config(None, environ={}).defaults)

    run = await harness.run(spec)

    assert run.status == "completed", run.message
    # lowest to highest: source < namespace < job < per-run override
    assert await harness.stdout(run.id) == ["src ns job override src ns"]
    [record] = await harness.store.run_sources(run.id)
    origins = {k: record["environment"][k] for k in "ABCDEF"}
    assert origins == {
        "A": "source",
        "B": "namespace",
        "C": "job",
        "D": "job",
        "E": "source",
        "F": "namespace",
    }  # fmt: skip  (a per-run override is part of the run's job environment)


async def test_compose_and_label_selectors_take_the_newest_and_say_so(
    harness: Harness, apps: Apps
) -> None:
    labels = ["--label", f"com.docker.compose.project={apps.namespace}",
              "--label", "com.docker.compose.service=web"]  # fmt: skip
    older = apps.start("web-1", *labels, "-e", "WHO=older")
    # Docker's Created has nanosecond precision: two runs in a row never tie.
    newer = apps.start("web-2", *labels, "-e", "WHO=newer")
    compose = LiveSource(compose_project=apps.namespace, compose_service="web")
    by_label = LiveSource(label=f"com.docker.compose.project={apps.namespace}")

    for source in (compose, by_label):
        run = await harness.run(harness.spec("pick", ["sh", "-c", "echo $WHO"], source=source))

        assert run.status == "completed", run.message
        assert await harness.stdout(run.id) == ["newer"]
        warnings = [m for kind, m in await harness.events(run.id) if kind == "warning"]
        assert len(warnings) == 1
        assert f"using the newest, {newer}" in warnings[0] and older in warnings[0]


async def test_no_running_source_fails_with_the_selector_and_the_names_seen(
    harness: Harness, apps: Apps
) -> None:
    other = apps.start("other")
    stopped = apps.start("stopped", command="true")
    _docker("wait", stopped)

    for source, selector in [
        (LiveSource(container=f"{apps.namespace}-missing"), f"container:{apps.namespace}-missing"),
        (LiveSource(container=stopped), f"container:{stopped}"),
        (LiveSource(compose_project="nope", compose_service="web"), "compose:nope/web"),
    ]:
        run = await harness.run(harness.spec("lost", ["true"], source=source))

        assert (run.status, run.reason) == ("failed", "source_not_found")
        assert run.message is not None
        assert selector in run.message
        assert other in run.message  # the names it saw


async def test_a_container_source_is_found_by_its_exact_name_only(
    harness: Harness, apps: Apps
) -> None:
    app = apps.start("app", "-e", "WHO=app")
    app_id = _docker("inspect", "--format", "{{.Id}}", app)

    # The runtime's own guard (these names bypass the manifest check, which refuses paths):
    # an ID prefix, a full ID, a path through the API URL, a part of the name.
    for name in (app_id[:6], app_id, f"nosuch/../../containers/{app}", app[:-1]):
        run = await harness.run(harness.spec("near", ["true"], source=LiveSource(container=name)))

        assert (run.status, run.reason) == ("failed", "source_not_found"), name
        assert run.image is None

    run = await harness.run(
        harness.spec("exact", ["sh", "-c", "echo $WHO"], source=LiveSource(container=f"/{app}"))
    )

    assert run.status == "completed", run.message
    assert await harness.stdout(run.id) == ["app"]
    assert (run.image, run.image_id) == (IMAGE, apps.image_id(app))  # what ran, by name and ID
    [listed] = await harness.store.list_runs(namespace=harness.namespace, job="exact")
    assert (listed.id, listed.image) == (run.id, IMAGE)


async def test_mounts_are_copied_read_only_unless_rw_is_asked(harness: Harness, apps: Apps) -> None:
    volume = f"{apps.namespace}-data"
    _docker("volume", "create", "--label", f"{SOURCE_LABEL}={apps.namespace}", volume)
    try:
        app = apps.start(
            "app", "-v", f"{volume}:/data", command="echo hi > /data/marker; sleep 3600"
        )
        probe = ["sh", "-c", "if [ -e /data/marker ]; then touch /data/x 2>/dev/null && "
                 "echo writable || echo read-only; else echo not-shared; fi"]  # fmt: skip

        without = await harness.run(harness.spec("m0", probe, source=LiveSource(container=app)))
        ro = await harness.run(
            harness.spec("m1", probe, source=LiveSource(container=app, mounts="ro"))
        )
        rw = await harness.run(
            harness.spec("m2", probe, source=LiveSource(container=app, mounts="rw"))
        )

        assert await harness.stdout(without.id) == ["not-shared"]
        assert await harness.stdout(ro.id) == ["read-only"]
        assert await harness.stdout(rw.id) == ["writable"]
        listing = _docker("run", "--rm", "-v", f"{volume}:/data", IMAGE, "ls", "/data").split()
        assert listing == ["marker", "x"]  # the rw job wrote into the source's volume
    finally:
        apps.cleanup()
        _remove_volume(volume)


async def test_network_source_joins_only_the_sources_networks(harness: Harness, apps: Apps) -> None:
    app = apps.start("app")
    spec = harness.spec(
        "net", ["true"], source=LiveSource(container=app), network="source",
        keep_container_seconds=60.0,
    )  # fmt: skip

    run = await harness.run(spec)

    assert run.status == "completed", run.message
    assert run.container_id is not None
    networks = json.loads(_docker("inspect", run.container_id))[0]["NetworkSettings"]["Networks"]
    assert sorted(networks) == [apps.network]


async def test_secret_refs_are_resolved_when_the_container_is_created(
    harness: Harness, apps: Apps
) -> None:
    await harness.engine.secrets.put(harness.namespace, "db-password", "hunter2-value", False)
    await harness.set_namespace(environment={"NS_PW": SecretRef(secretRef="db-password")})
    spec = harness.spec(
        "secret",
        ["sh", "-c", 'echo "${#PW} ${#NS_PW}"; [ "$PW" = "$NS_PW" ] && echo same'],
        image=IMAGE,
        environment={"PW": SecretRef(secretRef="db-password")},
    )

    run = await harness.run(spec)

    assert run.status == "completed", run.message
    assert await harness.stdout(run.id) == [f"{len('hunter2-value')} 13", "same"]


async def test_a_missing_secret_is_a_config_error_naming_it(harness: Harness) -> None:
    spec = harness.spec(
        "nosecret",
        ["true"],
        image=IMAGE,
        environment={"A": SecretRef(secretRef="absent-one"), "B": SecretRef(secretRef="gone")},
    )

    run = await harness.run(spec)

    assert (run.status, run.reason) == ("failed", "config_error")
    assert run.message is not None
    assert "absent-one" in run.message and "gone" in run.message


async def test_namespace_network_none_and_limit_defaults_apply_to_its_jobs(
    harness: Harness,
) -> None:
    await harness.set_namespace(network="none", default_memory_bytes=64 * 2**20)
    plain = harness.spec("plain", ["true"], image=IMAGE, keep_container_seconds=60.0)
    own = plain.model_copy(
        update={"name": "own", "resources": Resources(memory_limit_bytes=32 * 2**20)}
    )

    runs = [await harness.run(plain), await harness.run(own)]

    memory = []
    for run in runs:
        assert run.status == "completed", run.message
        assert run.container_id is not None
        data = json.loads(_docker("inspect", run.container_id))[0]
        assert data["HostConfig"]["NetworkMode"] == "none"
        memory.append(data["HostConfig"]["Memory"])
    assert memory == [64 * 2**20, 32 * 2**20]  # the job's own limit wins over the namespace's
