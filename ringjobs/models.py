"""Domain types shared by every layer: job specs, runs, statuses, reasons.

Pure data, no I/O. A `JobSpec` is the resolved, normalised form of one manifest
entry; its canonical JSON (`spec_hash`) decides whether an apply is a new revision.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class RunStatus(StrEnum):
    """Lifecycle of a run; the last three are terminal."""

    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


class FailureReason(StrEnum):
    """Why a run failed (SPEC 4)."""

    EXIT_CODE = "exit_code"
    OOM_KILLED = "oom_killed"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    SIGNAL = "signal"
    IMAGE_NOT_FOUND = "image_not_found"
    SOURCE_NOT_FOUND = "source_not_found"
    CONFIG_ERROR = "config_error"
    START_ERROR = "start_error"
    LOST = "lost"
    ENGINE_ERROR = "engine_error"


class Trigger(StrEnum):
    APPLY = "apply"
    MANUAL = "manual"
    RERUN = "rerun"
    SCHEDULE = "schedule"
    EXEC = "exec"


class StopIntent(StrEnum):
    """Why ringjobs itself stopped a container; written before the signal is sent."""

    DEADLINE = "deadline"
    CANCEL = "cancel"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SecretRef(_Frozen):
    """An environment value taken from a namespace secret at container creation."""

    secret_ref: str = Field(alias="secretRef")

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


EnvValue = str | SecretRef


class VolumeMount(_Frozen):
    """A bind mount (host path) or a named Docker volume."""

    type: Literal["bind", "volume"]
    source: str
    destination: str
    read_only: bool = False


class Resources(_Frozen):
    """Normalised resources: CPU in nano-CPUs, memory in bytes."""

    cpu_limit_nanos: int | None = None
    memory_limit_bytes: int | None = None
    cpu_request_nanos: int | None = None
    memory_request_bytes: int | None = None


class HistoryLimit(_Frozen):
    succeeded: int | None = None
    failed: int | None = None


class LiveSource(_Frozen):
    """Where a job borrows its image and environment from (SPEC 7)."""

    container: str | None = None
    compose_project: str | None = None
    compose_service: str | None = None
    label: str | None = None
    # Copy the source's bind mounts and volumes: "ro" (read-only) or "rw"; "none" skips.
    mounts: Literal["none", "ro", "rw"] = "none"

    @field_validator("mounts", mode="before")
    @classmethod
    def _mounts(cls, value: object) -> object:
        if isinstance(value, bool):  # `mounts: true` means read-only
            return "ro" if value else "none"
        return value

    def describe(self) -> str:
        """The selector as users write it on `exec --from`."""
        if self.container is not None:
            return f"container:{self.container}"
        if self.label is not None:
            return f"label:{self.label}"
        return f"compose:{self.compose_project}/{self.compose_service}"


ImagePullPolicy = Literal["Always", "IfNotPresent", "Never"]
ConcurrencyPolicy = Literal["Forbid", "Allow", "Queue", "Replace"]
RestartPolicy = Literal["Never", "OnFailure"]
NetworkMode = Literal["namespace", "none", "source", "host"]


class JobSpec(_Frozen):
    """One job definition, resolved from a manifest entry and ready to store."""

    namespace: str
    name: str
    image: str | None = None
    source: LiveSource | None = None
    command: list[str] | None = None
    shell: bool = False
    environment: dict[str, Annotated[EnvValue, Field(union_mode="left_to_right")]] = Field(
        default_factory=dict
    )
    volumes: list[VolumeMount] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    user: str | None = None
    image_pull_policy: ImagePullPolicy = "IfNotPresent"
    working_dir: str | None = None
    timeout_seconds: float | None = None
    stop_grace_period_seconds: float = 10.0
    backoff_limit: int = 0
    restart_policy: RestartPolicy = "Never"
    parallelism: int = 1
    completions: int = 1
    concurrency_policy: ConcurrencyPolicy = "Forbid"
    schedule: str | None = None
    time_zone: str = "UTC"
    starting_deadline_seconds: float | None = None
    suspend: bool = False
    history_limit: HistoryLimit | None = None
    keep_container_seconds: float | None = None
    network: NetworkMode = "namespace"
    read_only_rootfs: bool = False
    tmpfs: dict[str, str] = Field(default_factory=dict)
    # Relaxations of the hardened defaults; each is refused unless a policy key allows it.
    privileged: bool = False
    cap_add: list[str] = Field(default_factory=list)
    pid_mode: Literal["host"] | None = None
    ipc_mode: Literal["host"] | None = None
    uts_mode: Literal["host"] | None = None
    userns_mode: Literal["host"] | None = None
    devices: list[str] = Field(default_factory=list)  # HOST:CONTAINER:PERMISSIONS
    security_opt: list[str] = Field(default_factory=list)  # only the *=unconfined relaxations

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)

    def spec_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


class NamespaceSpec(_Frozen):
    """Namespace settings from a manifest's top-level `namespaces:` map."""

    name: str
    environment: dict[str, Annotated[EnvValue, Field(union_mode="left_to_right")]] = Field(
        default_factory=dict
    )
    network: NetworkMode | None = None
    # `defaults: {cpu, memory}`: limits for the namespace's jobs that set none themselves.
    default_cpu_nanos: int | None = None
    default_memory_bytes: int | None = None


class Violation(_Frozen):
    """One problem in user input: where it is, what is wrong, a stable code."""

    path: str
    message: str
    code: str
    source: str | None = None

    def render(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class Run(BaseModel):
    """A run as stored and as shown by the API (SPEC 4)."""

    model_config = ConfigDict(extra="forbid")

    id: int
    namespace: str
    job: str
    revision: int
    trigger: Trigger
    status: RunStatus
    reason: FailureReason | None = None
    message: str | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    stop_intent: StopIntent | None = None
    attempt: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    image: str | None = None
    image_id: str | None = None
    container_id: str | None = None
    command: list[str] | None = None
    log_bytes: int = 0
    log_truncated: bool = False
    caller_uid: int | None = None
    spec: JobSpec
    # A completion of a fan-out run (parallelism/completions): its parent and index.
    parent_id: int | None = None
    completion_index: int | None = None

    @property
    def fans_out(self) -> bool:
        """A parent run: it runs no container itself, its children (one per index) do."""
        return self.parent_id is None and self.spec.completions > 1

    def to_api(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"spec"})
        for key in ("created_at", "started_at", "finished_at"):
            value = getattr(self, key)
            data[key] = format_time(value) if value is not None else None
        return data


class RunEvent(BaseModel):
    id: int
    run_id: int
    time: datetime
    type: str
    message: str
    data: dict[str, Any] = Field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        out = self.model_dump(mode="json")
        out["time"] = format_time(self.time)
        return out


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with microseconds and a Z suffix."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_time_us(time_us: int) -> str:
    """format_time of a time in microseconds since the epoch, exactly (no float)."""
    seconds, micros = divmod(time_us, 1_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{micros:06d}Z"


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
