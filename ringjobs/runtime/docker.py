"""Docker implementation of the runtime.

The calls every run makes (image inspect, create, attach, start, wait, inspect,
stop, remove) go through `EngineAPI`: aiohttp on the event loop, one kept-alive
pool. The events stream is read there too. The rare calls (pull, network create, logs
recovery, list, version) use the synchronous docker SDK in a dedicated thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions
from docker.models.containers import _create_container_args
from docker.types import LogConfig, Mount
from docker.utils import format_environment, parse_host

from ringjobs.exceptions import EngineUnavailable
from ringjobs.models import VolumeMount
from ringjobs.runtime.base import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    ContainerNotFound,
    ContainerSpec,
    ContainerState,
    ImageInfo,
    ImageNotFound,
    OutputChunk,
    RuntimeEvent,
    SourceContainer,
    StartFailed,
)
from ringjobs.runtime.engine_api import EngineAPI, EngineAPIError

T = TypeVar("T")
_EVENT_ACTIONS = ["die", "oom", "kill", "destroy"]
_PULL_TIMEOUT = 600.0
_FALLBACK_API_VERSION = "1.41"
_EVENTS_RECONNECT = 1.0  # seconds between attempts to reopen the events stream
_REMOVAL_GRACE = 10.0  # on close, how long removals under way may take to finish
# An engine that went away mid-answer, as opposed to one that answered with an error.
_BROKEN_CONNECTION = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError)


def _client(base_url: str | None, **kwargs: Any) -> docker.DockerClient:
    if base_url:
        return docker.DockerClient(base_url=base_url, **kwargs)
    return docker.from_env(**kwargs)


class DockerRuntime:
    """Runtime backed by the local Docker engine."""

    def __init__(self, base_url: str | None, max_concurrent_runs: int) -> None:
        workers = 2 * max_concurrent_runs + 8
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="docker")
        kwargs: dict[str, Any] = {"max_pool_size": workers, "timeout": 60}
        try:
            self._client = _client(base_url, **kwargs)
        except docker.errors.DockerException:
            # Engine down at start: pin an API version every supported engine speaks and
            # let calls fail (and health report it) until the engine answers.
            self._client = _client(base_url, version=_FALLBACK_API_VERSION, **kwargs)
        self._api = self._client.api
        self._engine = _engine_api(base_url, self._api)
        self._closed = False
        self._network_locks: dict[str, asyncio.Lock] = {}
        self._removals: set[asyncio.Future[None]] = set()

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except docker.errors.APIError:
            raise  # an answer from the engine, for the caller to judge
        except _BROKEN_CONNECTION as exc:
            raise EngineUnavailable(
                f"cannot reach the Docker engine ({exc.__class__.__name__}); "
                "check that dockerd is running and its socket is readable"
            ) from exc

    async def version(self) -> str:
        info = await self._call(self._client.version)
        return str(info.get("Version", "unknown"))

    async def resolve_image(self, ref: str, pull_policy: str) -> ImageInfo:
        if pull_policy != "Always":
            found = await self._inspect_image(ref)
            if found is not None:
                return found
            if pull_policy == "Never":
                raise ImageNotFound(
                    f'image "{ref}" is not present on this host and image_pull_policy is '
                    "Never; load it (docker pull / docker load) or change the policy"
                )
        await self._pull(ref)
        found = await self._inspect_image(ref)
        if found is None:
            raise ImageNotFound(f'image "{ref}" was pulled but cannot be inspected')
        return found

    async def _inspect_image(self, ref: str) -> ImageInfo | None:
        try:
            data = await self._engine.call("GET", f"/images/{_quote(ref)}/json")
        except EngineAPIError as exc:
            if exc.status == 404:
                return None
            raise
        return ImageInfo(id=str(data["Id"]), ref=ref)

    async def _pull(self, ref: str) -> None:
        repository, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
        try:
            await asyncio.wait_for(
                self._call(self._api.pull, repository, tag=tag or "latest"), _PULL_TIMEOUT
            )
        except (docker.errors.APIError, TimeoutError) as exc:
            raise ImageNotFound(
                f'image "{ref}" is not on this host and could not be pulled: {_explain(exc)}'
            ) from exc

    async def ensure_network(self, name: str, labels: dict[str, str]) -> None:
        # Asked on every run, not cached: Docker 20.10 accepts a container on a missing
        # network (docker network prune) and refuses only its start, after the attach
        # stream is open. One GET on the kept-alive pool; the SDK only if it is missing.
        if await self._network_exists(name):
            return
        # Docker's duplicate check is racy: two concurrent creates make two networks.
        lock = self._network_locks.setdefault(name, asyncio.Lock())
        async with lock:
            await self._ensure_network(name, labels)

    async def _network_exists(self, name: str) -> bool:
        try:
            data = await self._engine.call("GET", f"/networks/{_quote(name)}")
        except EngineAPIError as exc:
            if exc.status == 404:
                return False
            raise
        return bool(data.get("Name") == name)

    async def _ensure_network(self, name: str, labels: dict[str, str]) -> None:
        existing = await self._call(self._api.networks, names=[name])
        if any(n.get("Name") == name for n in existing):
            return
        try:
            await self._call(
                self._api.create_network,
                name,
                driver="bridge",
                labels=labels,
                check_duplicate=True,
            )
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: created meanwhile by a concurrent run
                raise StartFailed(f"cannot create network {name}: {_explain(exc)}") from exc

    async def create(self, spec: ContainerSpec) -> str:
        name, body = _create_body(self._api, _create_kwargs(spec))
        try:
            created = await self._engine.call(
                "POST", "/containers/create", params={"name": name}, body=body
            )
        except EngineAPIError as exc:
            if exc.status == 404:
                raise ImageNotFound(f'image "{spec.image}" disappeared: {exc.explanation}') from exc
            raise StartFailed(f"Docker refused to create the container: {exc.explanation}") from exc
        container_id = str(created["Id"])
        await self._join_networks(container_id, spec.extra_networks)
        return container_id

    async def _join_networks(self, container_id: str, networks: list[str]) -> None:
        # The engine API this targets takes one network at create; the rest join before start.
        for network in networks:
            try:
                await self._call(self._api.connect_container_to_network, container_id, network)
            except docker.errors.APIError as exc:
                await self.remove(container_id)
                raise StartFailed(f"cannot join network {network}: {_explain(exc)}") from exc

    async def find_running(
        self, name: str | None = None, labels: tuple[str, ...] = ()
    ) -> list[SourceContainer]:
        # Listed through filters (sent as query JSON), then inspected by full ID: a name
        # never reaches the URL path, where `a/../../containers/b` or an ID prefix matched.
        filters: dict[str, list[str]] = {"status": ["running"]}
        if name is not None:
            filters["name"] = [name.removeprefix("/")]
        else:
            filters["label"] = list(labels)
        rows = await self._call(self._api.containers, filters=filters)
        if name is not None:  # Docker's name filter is a regex search: keep exact names only
            wanted = "/" + name.removeprefix("/")
            rows = [row for row in rows if wanted in (row.get("Names") or [])]
        found = []
        for row in rows:
            with contextlib.suppress(docker.errors.NotFound):  # gone meanwhile
                found.append(await self._call(self._api.inspect_container, row["Id"]))
        sources = [
            _source_from_inspect(d)
            for d in found
            if (d.get("State") or {}).get("Running") and not _is_managed(d)
        ]
        return sorted(sources, key=lambda s: s.created, reverse=True)

    async def running_names(self) -> list[str]:
        rows = await self._call(self._api.containers, filters={"status": "running"})
        names = [
            str(name).lstrip("/")
            for row in rows
            if (row.get("Labels") or {}).get(LABEL_MANAGED) != "true"
            for name in (row.get("Names") or [])[:1]
        ]
        return sorted(names)

    async def attach(self, container_id: str) -> AsyncIterator[OutputChunk]:
        """Open the attach stream now (before start) and return its reader.

        logs=0: attached before start there is nothing to replay, and replaying raced the
        live stream (about 1 run in 100 stored its output twice).
        """
        try:
            return await self._engine.attach(container_id)
        except EngineAPIError as exc:
            if exc.status == 404:
                raise ContainerNotFound(f"container {container_id[:12]} is gone") from exc
            raise

    async def start(self, container_id: str) -> None:
        try:
            await self._engine.call("POST", f"/containers/{_quote(container_id)}/start")
        except EngineAPIError as exc:
            if exc.status == 404:
                raise ContainerNotFound(f"container {container_id[:12]} is gone") from exc
            raise StartFailed(f"the container could not start: {exc.explanation}") from exc

    async def wait(self, container_id: str) -> int:
        try:
            result = await self._engine.call(
                "POST", f"/containers/{_quote(container_id)}/wait", time_limit=None
            )
        except EngineAPIError as exc:
            if exc.status == 404:
                raise ContainerNotFound(f"container {container_id[:12]} is gone") from exc
            raise
        return int(result.get("StatusCode", -1))

    async def inspect(self, container_id: str) -> ContainerState:
        try:
            data = await self._engine.call("GET", f"/containers/{_quote(container_id)}/json")
        except EngineAPIError as exc:
            if exc.status == 404:
                raise ContainerNotFound(f"container {container_id[:12]} is gone") from exc
            raise
        return _state_from_inspect(data)

    async def stop(self, container_id: str, grace_seconds: float) -> None:
        grace = math.ceil(grace_seconds)
        try:
            await self._engine.call(
                "POST",
                f"/containers/{_quote(container_id)}/stop",
                params={"t": str(grace)},
                time_limit=grace + 60.0,
            )
        except EngineAPIError as exc:
            if exc.status != 404:
                raise

    async def remove(self, container_id: str) -> None:
        # Finished even if the caller is cancelled (a daemon stopping), and close() waits
        # for it: a removal cut off mid-request would leave the container behind.
        task = asyncio.ensure_future(self._remove(container_id))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)
        await asyncio.shield(task)

    async def _remove(self, container_id: str) -> None:
        try:
            await self._engine.call(
                "DELETE",
                f"/containers/{_quote(container_id)}",
                params={"v": "1", "force": "1"},
            )
        except EngineAPIError as exc:
            if exc.status != 404:
                raise

    async def output(self, container_id: str, stream: str) -> bytes:
        try:
            data = await self._call(
                self._api.logs,
                container_id,
                stdout=stream == "stdout",
                stderr=stream == "stderr",
                stream=False,
            )
        except docker.errors.NotFound as exc:
            raise ContainerNotFound(f"container {container_id[:12]} is gone") from exc
        return bytes(data)

    async def list_managed(self, instance: str) -> list[ContainerState]:
        labels = [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={instance}"]
        rows = await self._call(self._api.containers, all=True, filters={"label": labels})
        states = []
        for row in rows:
            with contextlib.suppress(ContainerNotFound):
                states.append(await self.inspect(str(row["Id"])))
        return states

    async def events(self) -> AsyncIterator[RuntimeEvent]:
        """Managed containers' events; reconnects with `since` so none is lost.

        Read on the event loop (no thread): a few events per run, each a JSON line.
        """
        since_ns = time.time_ns()
        filters = json.dumps(
            {"type": ["container"], "label": [f"{LABEL_MANAGED}=true"], "event": _EVENT_ACTIONS}
        )
        while not self._closed:
            params = {"since": f"{since_ns // 10**9}.{since_ns % 10**9:09d}", "filters": filters}
            try:
                async for raw in self._engine.stream("/events", params):
                    event = _event_from_raw(raw)
                    since_ns = event.time_ns
                    yield event
            except (EngineUnavailable, EngineAPIError):
                pass  # the engine went away: reconnect from `since`
            await asyncio.sleep(_EVENTS_RECONNECT)

    async def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._removals:
            await asyncio.wait(self._removals, timeout=_REMOVAL_GRACE)
        await self._engine.close()
        with contextlib.suppress(Exception):
            self._client.close()


def _create_kwargs(spec: ContainerSpec) -> dict[str, Any]:
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
        # Hardening (SPEC 5): no capabilities, no privilege gain, a pid limit, an init.
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
        "mounts": [_mount(m) for m in spec.mounts],
        "log_config": LogConfig(
            type="json-file",
            config={"max-size": spec.log_max_size, "max-file": str(spec.log_max_file)},
        ),
    }
    if spec.memory_bytes:
        kwargs["mem_limit"] = spec.memory_bytes
        kwargs["memswap_limit"] = spec.memory_bytes  # unset would mean swap = 2 x memory
    if spec.cpu_nanos:
        kwargs["nano_cpus"] = spec.cpu_nanos
    if spec.network in ("none", "host"):
        kwargs["network_mode"] = spec.network
    elif spec.network:
        kwargs["network"] = spec.network
    return kwargs


def _engine_api(base_url: str | None, api: docker.APIClient) -> EngineAPI:
    """The aiohttp client for the same engine, API version and TLS as the SDK's."""
    host = parse_host(base_url or os.environ.get("DOCKER_HOST"), tls=bool(api.cert))
    if host.startswith("ssh://"):
        raise StartFailed(
            "docker_host ssh:// is not supported; use unix:// or tcp:// (for a remote "
            "engine, forward its socket with ssh -L)"
        )
    tls = None
    if host.startswith("https://"):
        tls = ssl.create_default_context(cafile=api.verify if isinstance(api.verify, str) else None)
        if api.verify is False:
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        if api.cert:
            tls.load_cert_chain(*api.cert)
    return EngineAPI(host, api.api_version, tls)


def _create_body(api: docker.APIClient, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, JSON body) of POST /containers/create, built by the SDK's own helpers.

    Exactly what `client.containers.create(**kwargs)` sends, without its HTTP call and
    the inspect it makes after; `_create_kwargs` stays the one place for settings.
    """
    args = _create_container_args({**kwargs, "version": api.api_version})
    name = str(args.pop("name"))
    environment = args.pop("environment", None)
    if isinstance(environment, dict):
        environment = format_environment(environment)
    proxies = getattr(api, "_proxy_configs", None)  # the SDK adds ~/.docker proxy env
    if proxies is not None:
        environment = proxies.inject_proxy_environment(environment) or None
    return name, dict(api.create_container_config(environment=environment, **args))


def _quote(value: str) -> str:
    return quote(value, safe="/:@")


def _mount(volume: Any) -> Mount:
    return Mount(
        target=volume.destination,
        source=volume.source,
        type=volume.type,
        read_only=volume.read_only,
    )


def _is_managed(data: dict[str, Any]) -> bool:
    return ((data.get("Config") or {}).get("Labels") or {}).get(LABEL_MANAGED) == "true"


def _source_from_inspect(data: dict[str, Any]) -> SourceContainer:
    config = data.get("Config") or {}
    host = data.get("HostConfig") or {}
    networks = (data.get("NetworkSettings") or {}).get("Networks") or {}
    return SourceContainer(
        id=str(data["Id"]),
        name=str(data.get("Name") or "").lstrip("/"),
        image_id=str(data.get("Image") or ""),
        image=str(config.get("Image") or ""),
        # RFC 3339 with nanoseconds, all UTC: sorts as text.
        created=str(data.get("Created") or ""),
        environment=list(config.get("Env") or []),
        working_dir=str(config.get("WorkingDir") or ""),
        user=str(config.get("User") or ""),
        network_mode=str(host.get("NetworkMode") or ""),
        networks=sorted(networks),
        mounts=[m for raw in data.get("Mounts") or [] if (m := _source_mount(raw)) is not None],
    )


def _source_mount(raw: dict[str, Any]) -> VolumeMount | None:
    kind = raw.get("Type")
    source = raw.get("Source") if kind == "bind" else raw.get("Name")
    if kind not in ("bind", "volume") or not source or not raw.get("Destination"):
        return None  # tmpfs, npipe...: nothing to share
    return VolumeMount(
        type=kind,
        source=str(source),
        destination=str(raw["Destination"]),
        read_only=not raw.get("RW", True),
    )


def _state_from_inspect(data: dict[str, Any]) -> ContainerState:
    state = data.get("State", {})
    status = str(state.get("Status") or "")
    running = bool(state.get("Running"))
    return ContainerState(
        id=str(data["Id"]),
        status=status,
        running=running,
        exit_code=int(state.get("ExitCode", -1)) if status in ("exited", "dead") else None,
        oom_killed=bool(state.get("OOMKilled")),
        error=str(state.get("Error") or ""),
        labels=dict((data.get("Config") or {}).get("Labels") or {}),
        started_at=state.get("StartedAt"),
        finished_at=state.get("FinishedAt"),
    )


def _event_from_raw(raw: dict[str, Any]) -> RuntimeEvent:
    actor = raw.get("Actor") or {}
    return RuntimeEvent(
        action=str(raw.get("Action") or raw.get("status") or ""),
        container_id=str(actor.get("ID") or raw.get("id") or ""),
        labels=dict(actor.get("Attributes") or {}),
        time_ns=int(raw.get("timeNano") or raw.get("time", 0) * 10**9),
    )


def _explain(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc)
