"""From a run's snapshot to a ContainerSpec: hardening defaults, labels, environment."""

from __future__ import annotations

from ringjobs.config import Config
from ringjobs.manifest import bind_source_now, policy_refusals
from ringjobs.models import JobSpec, Run, VolumeMount
from ringjobs.runtime.base import (
    LABEL_ATTEMPT,
    LABEL_INSTANCE,
    LABEL_JOB,
    LABEL_MANAGED,
    LABEL_NAMESPACE,
    LABEL_RUN,
    ContainerSpec,
    ImageInfo,
)


class ConfigProblem(Exception):
    """The run's configuration cannot be turned into a container (config_error)."""


def network_name(namespace: str) -> str:
    return f"ringjobs_{namespace}"


def container_name(run: Run, attempt: int, instance: str) -> str:
    """Unique to this daemon's database: `_` never occurs in a name (DNS labels), so the
    parts cannot run into each other, and the instance id keeps another daemon's or
    another tool's `ringjobs-...` containers from ever colliding with ours."""
    return f"ringjobs_{run.namespace}_{run.job}_{run.id}_{attempt}_{instance[:12]}"


def managed_labels(run: Run, attempt: int, instance: str) -> dict[str, str]:
    return {
        LABEL_MANAGED: "true",
        LABEL_INSTANCE: instance,
        LABEL_RUN: str(run.id),
        LABEL_NAMESPACE: run.namespace,
        LABEL_JOB: run.job,
        LABEL_ATTEMPT: str(attempt),
    }


def container_spec(
    run: Run,
    attempt: int,
    image: ImageInfo,
    config: Config,
    env: dict[str, str],
    instance: str,
) -> ContainerSpec:
    spec = run.spec
    _check_policy(spec, config)  # the policy of today, not of the day it was applied
    limits = spec.resources
    return ContainerSpec(
        name=container_name(run, attempt, instance),
        image=image.id,  # pinned: every attempt runs exactly the resolved image
        labels={**spec.labels, **managed_labels(run, attempt, instance)},
        command=spec.command,
        entrypoint=["/bin/sh", "-c"] if spec.shell else None,
        environment=env,
        working_dir=spec.working_dir,
        user=spec.user,
        memory_bytes=limits.memory_limit_bytes or config.defaults.memory_bytes,
        cpu_nanos=limits.cpu_limit_nanos or config.defaults.cpu_nanos,
        pids_limit=config.defaults.pids_limit,
        network=_network(spec),
        read_only_rootfs=spec.read_only_rootfs,
        tmpfs=dict(spec.tmpfs),
        mounts=_checked_mounts(spec, config),
        privileged=spec.privileged,
        cap_add=list(spec.cap_add),
        pid_mode=spec.pid_mode,
        ipc_mode=spec.ipc_mode,
        uts_mode=spec.uts_mode,
        userns_mode=spec.userns_mode,
        devices=list(spec.devices),
        security_opt=list(spec.security_opt),
        log_max_size=config.logs.docker_max_size,
        log_max_file=config.logs.docker_max_file,
        stop_grace_seconds=spec.stop_grace_period_seconds,
    )


def _check_policy(spec: JobSpec, config: Config) -> None:
    refusals = policy_refusals(spec, config.policy)
    if refusals:
        raise ConfigProblem("; ".join(refusals))


def _checked_mounts(spec: JobSpec, config: Config) -> list[VolumeMount]:
    """Bind sources checked again at creation: the filesystem may have changed since apply."""
    mounts = []
    for mount in spec.volumes:
        if mount.type == "bind":
            try:
                mount = mount.model_copy(
                    update={"source": bind_source_now(mount.source, config.policy)}
                )
            except ValueError as exc:
                raise ConfigProblem(str(exc)) from None
        mounts.append(mount)
    return mounts


def _network(spec: JobSpec) -> str | None:
    if spec.network == "namespace":
        return network_name(spec.namespace)
    if spec.network == "source":
        return None  # only the live source's networks: set when the source lends them
    return spec.network
