"""What an attempt needs before its container is created: the live source, the layered
environment with secrets opened, and the network and mounts it lends.

Precedence of variables, lowest first: the source container's environment, the
namespace's `environment`, the job's `environment`, then per-run overrides (which the
run's snapshot already holds on top of the job's). Secrets are opened here and only
here, right before the container is created; their values go nowhere else.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ringjobs.config import Policy
from ringjobs.engine.containers import network_name
from ringjobs.engine.secretvault import SecretVault, secret_refs
from ringjobs.engine.source import (
    SourceMatch,
    borrow,
    find_live_source,
    source_environment,
)
from ringjobs.models import Run
from ringjobs.runtime.base import ContainerSpec, ImageInfo, ImageNotFound, Runtime
from ringjobs.store import Store

EnvLayer = Mapping[str, Any]


def layer_environment(
    layers: list[tuple[str, EnvLayer]],
) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge (origin, variables) layers, later ones winning; also each name's origin."""
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for origin, variables in layers:
        for name, value in variables.items():
            merged[name] = value
            ref = secret_refs({name: value}).get(name)
            origins[name] = f"{origin} (secret {ref})" if ref else origin
    return merged, origins


@dataclass
class PreparedAttempt:
    """The environment and source of one attempt; `container` adapts its container spec."""

    env: dict[str, str]
    image: ImageInfo | None = None
    match: SourceMatch | None = None
    origins: dict[str, str] = field(default_factory=dict)
    namespace_network: str | None = None
    namespace_limits: dict[str, int] = field(default_factory=dict)

    def container(
        self, spec: ContainerSpec, run: Run, policy: Policy
    ) -> tuple[ContainerSpec, list[str]]:
        """The spec with the namespace's network setting and what the source lends."""
        if run.spec.network == "namespace" and self.namespace_network == "none":
            spec = dataclasses.replace(spec, network="none")
        spec = _namespace_limits(spec, run, self.namespace_limits)
        if self.match is None or run.spec.source is None:
            return spec, []
        return borrow(
            spec,
            self.match.container,
            run.spec.source,
            policy,
            job_working_dir=run.spec.working_dir,
            job_user=run.spec.user,
            network_choice=run.spec.network,
        )

    def needs_namespace_network(self, spec: ContainerSpec, run: Run) -> bool:
        name = network_name(run.namespace)
        return spec.network == name or name in spec.extra_networks


def _namespace_limits(spec: ContainerSpec, run: Run, limits: dict[str, int]) -> ContainerSpec:
    """Namespace defaults sit between the job's own limits and the daemon's defaults."""
    own = run.spec.resources
    update: dict[str, int] = {}
    if own.memory_limit_bytes is None and limits.get("default_memory_bytes"):
        update["memory_bytes"] = limits["default_memory_bytes"]
    if own.cpu_limit_nanos is None and limits.get("default_cpu_nanos"):
        update["cpu_nanos"] = limits["default_cpu_nanos"]
    return dataclasses.replace(spec, **update) if update else spec  # type: ignore[arg-type]


async def prepare_attempt(
    store: Store, runtime: Runtime, vault: SecretVault | None, run: Run, attempt: int
) -> PreparedAttempt:
    """Find the source, layer the environment, open the secrets it references."""
    settings = await _namespace_settings(store, run.namespace)
    spec = run.spec
    match = await find_live_source(runtime, spec.source) if spec.source else None
    layers: list[tuple[str, EnvLayer]] = [
        ("namespace", settings.get("environment") or {}),
        ("job", spec.environment),
    ]
    if match is not None:
        layers.insert(0, ("source", source_environment(match.container)))
    merged, origins = layer_environment(layers)
    refs = secret_refs(merged)
    vault = vault or SecretVault(store, None)  # without a key, a secretRef is a config_error
    values = await vault.reveal(run.namespace, set(refs.values())) if refs else {}
    env = {
        name: values[refs[name]] if name in refs else str(value) for name, value in merged.items()
    }
    prepared = PreparedAttempt(env, match=match, origins=origins)
    prepared.namespace_network = settings.get("network")
    prepared.namespace_limits = {
        key: int(settings[key])
        for key in ("default_memory_bytes", "default_cpu_nanos")
        if settings.get(key)
    }
    if match is not None:
        prepared.image = await _source_image(runtime, match)
        await _record_source(store, run, attempt, match, origins)
    return prepared


async def _namespace_settings(store: Store, namespace: str) -> dict[str, Any]:
    row = await store.get_namespace(namespace)
    settings = json.loads(row["environment"]) if row else {}
    return settings if isinstance(settings, dict) else {}


async def _source_image(runtime: Runtime, match: SourceMatch) -> ImageInfo:
    container = match.container
    try:
        found = await runtime.resolve_image(container.image_id, "Never")
    except ImageNotFound:
        raise ImageNotFound(
            f"the image of source container {container.name} ({container.image_id}, started "
            f"from {container.image or 'an unknown reference'}) is no longer on this host: it "
            "was removed after the container started. Recreate the source container from an "
            "image that exists, then run the job again"
        ) from None
    return ImageInfo(id=found.id, ref=f"{container.image or found.id} (source {container.name})")


async def _record_source(
    store: Store, run: Run, attempt: int, match: SourceMatch, origins: dict[str, str]
) -> None:
    assert run.spec.source is not None
    container = match.container
    await store.record_run_source(run.id, attempt, match.record(run.spec.source, origins))
    from_source = sum(1 for origin in origins.values() if origin == "source")
    await store.add_event(
        run.id,
        "source_resolved",
        f"source {container.name} ({container.id[:12]}) for {run.spec.source.describe()}: "
        f"image {container.image_id}, {from_source} variables kept from it",
        {"container": container.name, "container_id": container.id, "image_id": container.image_id},
    )
    if match.others:
        await store.add_event(
            run.id,
            "warning",
            f"{len(match.others) + 1} running containers match {run.spec.source.describe()}; "
            f"using the newest, {container.name}; also matched: {', '.join(match.others)}",
            {"matched": [container.name, *match.others]},
        )
