"""The runtime interface the engine drives. Docker implements it; Swarm can later.

The engine never learns which runtime it talks to: everything it needs is here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from ringjobs.exceptions import RingjobsError
from ringjobs.models import VolumeMount

LABEL_MANAGED = "io.ringjobs.managed"
LABEL_RUN = "io.ringjobs.run"
LABEL_NAMESPACE = "io.ringjobs.namespace"
LABEL_JOB = "io.ringjobs.job"
LABEL_ATTEMPT = "io.ringjobs.attempt"
LABEL_INSTANCE = "io.ringjobs.instance"  # which daemon database owns the container


class RuntimeFailure(RingjobsError):
    """A runtime call failed in a way that is the job's fault, not the engine's."""

    code = "runtime_failure"


class ImageNotFound(RuntimeFailure):
    code = "image_not_found"


class ContainerNotFound(RuntimeFailure):
    code = "container_not_found"


class StartFailed(RuntimeFailure):
    """Create or start refused (bad command, bad user, bad mount...)."""

    code = "start_error"


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one hardened container for one attempt."""

    name: str
    image: str
    labels: dict[str, str]
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    user: str | None = None
    memory_bytes: int | None = None
    cpu_nanos: int | None = None
    pids_limit: int = 512
    network: str | None = None  # a network name, "none" or "host"
    read_only_rootfs: bool = False
    tmpfs: dict[str, str] = field(default_factory=dict)
    mounts: list[VolumeMount] = field(default_factory=list)
    privileged: bool = False
    cap_add: list[str] = field(default_factory=list)
    pid_mode: str | None = None
    ipc_mode: str | None = None
    uts_mode: str | None = None
    userns_mode: str | None = None
    devices: list[str] = field(default_factory=list)
    security_opt: list[str] = field(default_factory=list)  # added to no-new-privileges
    log_max_size: str = "10m"
    log_max_file: int = 2
    stop_grace_seconds: float = 10.0
    extra_networks: list[str] = field(default_factory=list)  # joined after create, before start


@dataclass(frozen=True)
class SourceContainer:
    """A running container a job borrows from (SPEC 7), as the runtime reports it."""

    id: str
    name: str
    image_id: str
    image: str  # the reference it was started from
    created: str
    environment: list[str]  # NAME=value, as the runtime keeps them
    working_dir: str
    user: str
    network_mode: str
    networks: list[str]
    mounts: list[VolumeMount]


@dataclass(frozen=True)
class ImageInfo:
    id: str
    ref: str


@dataclass(frozen=True)
class ContainerState:
    """What the runtime says about a container, running or exited."""

    id: str
    status: str  # created | running | exited | dead | ...
    running: bool
    exit_code: int | None
    oom_killed: bool
    error: str
    labels: dict[str, str]
    started_at: str | None = None
    finished_at: str | None = None


@dataclass(frozen=True)
class RuntimeEvent:
    """A container event: `die`, `oom`, `kill`, ..."""

    action: str
    container_id: str
    labels: dict[str, str]
    time_ns: int


OutputChunk = tuple[str, bytes]  # ("stdout" | "stderr", bytes)


class Runtime(Protocol):
    """Create, start, wait, logs, stop, inspect, remove, events."""

    async def version(self) -> str: ...

    async def resolve_image(self, ref: str, pull_policy: str) -> ImageInfo: ...

    async def ensure_network(self, name: str, labels: dict[str, str]) -> None: ...

    async def create(self, spec: ContainerSpec) -> str: ...

    async def attach(self, container_id: str) -> AsyncIterator[OutputChunk]:
        """Output from now until the container exits. Call before start()."""
        ...

    async def start(self, container_id: str) -> None: ...

    async def wait(self, container_id: str) -> int: ...

    async def inspect(self, container_id: str) -> ContainerState: ...

    async def stop(self, container_id: str, grace_seconds: float) -> None: ...

    async def remove(self, container_id: str) -> None: ...

    async def output(self, container_id: str, stream: str) -> bytes:
        """The whole stored output of one stream, for recovery after a restart."""
        ...

    async def list_managed(self, instance: str) -> list[ContainerState]:
        """Containers carrying our labels and this instance id."""
        ...

    def events(self) -> AsyncIterator[RuntimeEvent]:
        """Container events of managed containers, reconnecting as needed."""
        ...

    async def find_running(
        self, name: str | None = None, labels: tuple[str, ...] = ()
    ) -> list[SourceContainer]:
        """Running containers not managed by ringjobs, by exact name or carrying every
        `key=value` label; newest first."""
        ...

    async def running_names(self) -> list[str]:
        """Names of every running container not managed by ringjobs (for error messages)."""
        ...

    async def close(self) -> None: ...
