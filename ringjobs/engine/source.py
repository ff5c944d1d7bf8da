"""Live sources (SPEC 7): find the running container a job borrows from, and lend its
image, environment, working directory, user, networks and (if asked) mounts.

Never copied: ports, health checks, restart policy, labels. The runtime lookups live
behind the Runtime protocol; this module only decides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ringjobs.config import Policy
from ringjobs.manifest import bind_mount_problems
from ringjobs.models import LiveSource, VolumeMount
from ringjobs.runtime.base import ContainerSpec, Runtime, SourceContainer

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
_NAMES_SHOWN = 20
# Network modes that are not networks a job can join beside its own.
_UNJOINABLE = ("host", "none")


class SourceNotFound(Exception):
    """No running container matches the job's `from` (failed/source_not_found)."""


class SourceProblem(Exception):
    """The source exists but cannot be borrowed from as asked (failed/config_error)."""


@dataclass(frozen=True)
class SourceMatch:
    """The chosen source and the names of the other (older) running matches."""

    container: SourceContainer
    others: list[str]

    def record(self, source: LiveSource, origins: dict[str, str]) -> dict[str, object]:
        """What the run keeps: the source and where each variable came from (names only)."""
        return {
            "selector": source.describe(),
            "container": self.container.name,
            "container_id": self.container.id,
            "image_id": self.container.image_id,
            "environment": origins,
        }


def selector_labels(source: LiveSource) -> tuple[str, ...]:
    if source.label is not None:
        return (source.label,)
    return (
        f"{COMPOSE_PROJECT}={source.compose_project}",
        f"{COMPOSE_SERVICE}={source.compose_service}",
    )


def _looked_for(source: LiveSource) -> str:
    if source.container is not None:
        return f'a running container named "{source.container}"'
    return "a running container labelled " + " and ".join(selector_labels(source))


async def find_live_source(runtime: Runtime, source: LiveSource) -> SourceMatch:
    """The newest running container matching the selector; SourceNotFound if none."""
    if source.container is not None:
        found = await runtime.find_running(name=source.container)
    else:
        found = await runtime.find_running(labels=selector_labels(source))
    if not found:
        names = await runtime.running_names()
        shown = ", ".join(names[:_NAMES_SHOWN]) + (" ..." if len(names) > _NAMES_SHOWN else "")
        raise SourceNotFound(
            f"no running container matches {source.describe()} (looked for "
            f"{_looked_for(source)}); running containers: {shown or 'none'}. "
            "Start the source, or fix the job's from:"
        )
    return SourceMatch(found[0], [c.name for c in found[1:]])


def source_environment(container: SourceContainer) -> dict[str, str]:
    """The source's variables (Docker keeps them as NAME=value; the first one wins)."""
    env: dict[str, str] = {}
    for item in container.environment:
        name, sep, value = item.partition("=")
        if sep and name and name not in env:
            env[name] = value
    return env


def borrow(
    spec: ContainerSpec,
    container: SourceContainer,
    source: LiveSource,
    policy: Policy,
    *,
    job_working_dir: str | None,
    job_user: str | None,
    network_choice: str,
) -> tuple[ContainerSpec, list[str]]:
    """The container spec with what the source lends; also warnings for the run's events.

    The job's own working_dir and user win over the source's.
    """
    warnings: list[str] = []
    networks = _networks(spec, container, network_choice, warnings)
    update: dict[str, object] = {
        "working_dir": job_working_dir or container.working_dir or None,
        "user": job_user or container.user or None,
        "network": networks[0] if networks else "none",
        "extra_networks": networks[1:],
    }
    if source.mounts != "none":
        update["mounts"] = _merged_mounts(spec.mounts, container, source, policy)
    return dataclasses.replace(spec, **update), warnings  # type: ignore[arg-type]


def _networks(
    spec: ContainerSpec, container: SourceContainer, choice: str, warnings: list[str]
) -> list[str]:
    own = [] if choice == "source" or spec.network in (None, "none") else [spec.network]
    if choice == "none":
        return []
    mode = container.network_mode
    if mode in _UNJOINABLE or mode.startswith("container:"):
        warnings.append(
            f"source {container.name} uses network mode {mode}, which a job cannot share; "
            "its networks are not joined"
        )
        return [n for n in own if n]
    return [n for n in [*own, *container.networks] if n and n not in _UNJOINABLE]


def _merged_mounts(
    own: list[VolumeMount], container: SourceContainer, source: LiveSource, policy: Policy
) -> list[VolumeMount]:
    taken = {m.destination for m in own}
    mounts = list(own)
    for mount in container.mounts:
        if mount.destination in taken:
            continue  # the job's own mount at that path wins
        if mount.type == "bind":
            problems = bind_mount_problems(mount.source, policy)
            if problems:
                raise SourceProblem(
                    f"cannot copy mount {mount.destination} of source {container.name}: "
                    + "; ".join(problems)
                )
        read_only = True if source.mounts == "ro" else mount.read_only
        mounts.append(mount.model_copy(update={"read_only": read_only}))
    return mounts
