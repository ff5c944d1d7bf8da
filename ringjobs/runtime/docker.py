"""Docker implementation of the runtime.

Every call goes over `EngineAPI`: aiohttp on the event loop, one kept-alive pool,
the events stream included. docker-py is imported only to pull an image, for its
registry credentials (config.json auths and credential helpers): a daemon that never
pulls never loads it, nor requests and urllib3 (~7 MB of RSS, issue 7).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

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
from ringjobs.runtime.dockerenv import (
    EngineAddress,
    docker_config,
    engine_address,
    proxy_environment,
)
from ringjobs.runtime.engine_api import EngineAPI, EngineAPIError, demux

_EVENT_ACTIONS = ["die", "oom", "kill", "destroy"]
_PULL_TIMEOUT = 600.0
_SDK_TIMEOUT = 60  # seconds docker-py waits for each answer during a pull
_EVENTS_RECONNECT = 1.0  # seconds between attempts to reopen the events stream
_REMOVAL_GRACE = 10.0  # on close, how long removals under way may take to finish


class PullRefused(Exception):
    """The engine answered a pull with an error (unknown image, registry auth...)."""


class DockerRuntime:
    """Runtime backed by the local Docker engine."""

    def __init__(self, base_url: str | None, max_concurrent_runs: int) -> None:
        self._address = engine_address(base_url, os.environ)
        # What docker-py added to every container's environment, from ~/.docker/config.json.
        self._proxy_env = proxy_environment(docker_config(os.environ), self._address.host)
        tls = self._address.tls.context() if self._address.tls else None
        self._engine = EngineAPI(self._address.url, tls)
        # Pulls only (one per run at most); threads are made when a pull needs one.
        self._pool_size = 2 * max_concurrent_runs + 8
        self._pool = ThreadPoolExecutor(max_workers=self._pool_size, thread_name_prefix="pull")
        self._sdk: Any = None  # docker-py's APIClient, made by the first pull
        self._sdk_lock = asyncio.Lock()
        self._closed = False
        self._network_locks: dict[str, asyncio.Lock] = {}
        self._removals: set[asyncio.Future[None]] = set()

    async def version(self) -> str:
        info = await self._engine.call("GET", "/version")
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
        loop = asyncio.get_running_loop()
        try:
            api = await self._sdk_client()
            pull = functools.partial(_sdk_pull, api, ref)
            await asyncio.wait_for(loop.run_in_executor(self._pool, pull), _PULL_TIMEOUT)
        except (PullRefused, TimeoutError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise ImageNotFound(
                f'image "{ref}" is not on this host and could not be pulled: {why}'
            ) from exc

    async def _sdk_client(self) -> Any:
        """docker-py's client for the same engine and API version, made on first use."""
        async with self._sdk_lock:
            if self._sdk is None:
                version = await self._engine.api_version()
                make = functools.partial(_sdk_client, self._address, version, self._pool_size)
                # In a pool thread: importing docker-py takes ~0.1 s of CPU.
                self._sdk = await asyncio.get_running_loop().run_in_executor(self._pool, make)
        return self._sdk

    async def ensure_network(self, name: str, labels: dict[str, str]) -> None:
        # Asked on every run, not cached: Docker 20.10 accepts a container on a missing
        # network (docker network prune) and refuses only its start, after the attach
        # stream is open. One GET on the kept-alive pool; more only if it is missing.
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
        existing = await self._engine.call("GET", "/networks", params=_filters({"name": [name]}))
        if any(n.get("Name") == name for n in existing):
            return
        body = {"Name": name, "Driver": "bridge", "CheckDuplicate": True, "Labels": labels}
        try:
            await self._engine.call("POST", "/networks/create", body=body)
        except EngineAPIError as exc:
            if exc.status != 409:  # 409: created meanwhile by a concurrent run
                raise StartFailed(f"cannot create network {name}: {exc.explanation}") from exc

    async def create(self, spec: ContainerSpec) -> str:
        body = _create_body(spec, self._proxy_env)
        try:
            created = await self._engine.call(
                "POST", "/containers/create", params={"name": spec.name}, body=body
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
            body = {"Container": container_id, "EndpointConfig": {}}
            try:
                await self._engine.call("POST", f"/networks/{_quote(network)}/connect", body=body)
            except EngineAPIError as exc:
                await self.remove(container_id)
                raise StartFailed(f"cannot join network {network}: {exc.explanation}") from exc

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
        rows = await self._list_containers(filters)
        if name is not None:  # Docker's name filter is a regex search: keep exact names only
            wanted = "/" + name.removeprefix("/")
            rows = [row for row in rows if wanted in (row.get("Names") or [])]
        found = []
        for row in rows:
            with contextlib.suppress(ContainerNotFound):  # gone meanwhile
                found.append(await self._inspect(str(row["Id"])))
        sources = [
            _source_from_inspect(d)
            for d in found
            if (d.get("State") or {}).get("Running") and not _is_managed(d)
        ]
        return sorted(sources, key=lambda s: s.created, reverse=True)

    async def running_names(self) -> list[str]:
        rows = await self._list_containers({"status": ["running"]})
        names = [
            str(name).lstrip("/")
            for row in rows
            if (row.get("Labels") or {}).get(LABEL_MANAGED) != "true"
            for name in (row.get("Names") or [])[:1]
        ]
        return sorted(names)

    async def _list_containers(
        self, filters: dict[str, list[str]], stopped_too: bool = False
    ) -> list[dict[str, Any]]:
        params = {"all": "1" if stopped_too else "0", **_filters(filters)}
        return list(await self._engine.call("GET", "/containers/json", params=params))

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
        return _state_from_inspect(await self._inspect(container_id))

    async def _inspect(self, container_id: str) -> dict[str, Any]:
        try:
            data = await self._engine.call("GET", f"/containers/{_quote(container_id)}/json")
        except EngineAPIError as exc:
            if exc.status == 404:
                raise ContainerNotFound(f"container {container_id[:12]} is gone") from exc
            raise
        return dict(data)

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
        # The query docker-py's logs(stream=False) sent: everything kept, no timestamps.
        params = {
            "stdout": "1" if stream == "stdout" else "0",
            "stderr": "1" if stream == "stderr" else "0",
            "timestamps": "0",
            "follow": "0",
            "tail": "all",
        }
        try:
            data = await self._engine.read(f"/containers/{_quote(container_id)}/logs", params)
        except EngineAPIError as exc:
            if exc.status == 404:
                raise ContainerNotFound(f"container {container_id[:12]} is gone") from exc
            raise
        return demux(data)  # one stream asked: every frame is of that stream

    async def list_managed(self, instance: str) -> list[ContainerState]:
        labels = [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={instance}"]
        rows = await self._list_containers({"label": labels}, stopped_too=True)
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
        if self._sdk is not None:
            with contextlib.suppress(Exception):
                self._sdk.close()


def _create_body(spec: ContainerSpec, proxy_env: list[str]) -> dict[str, Any]:
    """The JSON of POST /containers/create: the one place for container settings.

    Key for key what docker-py's `containers.create()` sent for them (a unit test
    compares), without its null values; `proxy_env` goes first, as it put it.
    """
    named_network = spec.network not in (None, "", "none", "host")
    host = {
        # Hardening (SPEC 5): no capabilities, no privilege gain, a pid limit, an init.
        "CapDrop": ["ALL"],
        "CapAdd": spec.cap_add or None,
        "SecurityOpt": ["no-new-privileges", *spec.security_opt],
        "PidsLimit": spec.pids_limit or None,
        "Init": True,
        "Privileged": spec.privileged or None,
        "ReadonlyRootfs": spec.read_only_rootfs,
        "Memory": spec.memory_bytes or None,
        "MemorySwap": spec.memory_bytes or None,  # unset would mean swap = 2 x memory
        "NanoCpus": spec.cpu_nanos or None,
        "NetworkMode": spec.network or "default",
        "PidMode": spec.pid_mode or None,
        "IpcMode": spec.ipc_mode or None,
        "UTSMode": spec.uts_mode or None,
        "UsernsMode": spec.userns_mode or None,
        "Devices": [_device(d) for d in spec.devices] or None,
        "Tmpfs": spec.tmpfs or None,
        "Mounts": [_mount(m) for m in spec.mounts],
        "LogConfig": {
            "Type": "json-file",
            "Config": {"max-size": spec.log_max_size, "max-file": str(spec.log_max_file)},
        },
    }
    body = {
        "User": spec.user,
        **dict.fromkeys(("Tty", "OpenStdin", "StdinOnce", "NetworkDisabled"), False),
        **dict.fromkeys(("AttachStdin", "AttachStdout", "AttachStderr"), False),  # detached
        "Env": proxy_env + [f"{k}={v}" for k, v in spec.environment.items()] or None,
        "Cmd": spec.command,
        "Image": spec.image,
        "Entrypoint": spec.entrypoint,
        "WorkingDir": spec.working_dir,
        "Labels": spec.labels,
        "HostConfig": _without_none(host),
        # docker-py's shape, not the API's (EndpointsConfig): the engine ignores it and
        # HostConfig.NetworkMode names the network. Kept: it is what was always sent.
        "NetworkingConfig": {spec.network: None} if named_network else None,
    }
    return _without_none(body)


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _filters(filters: dict[str, list[str]]) -> dict[str, str]:
    return {"filters": json.dumps(filters)}


def _quote(value: str) -> str:
    return quote(value, safe="/:@")


def _mount(volume: VolumeMount) -> dict[str, Any]:
    return {
        "Target": volume.destination,
        "Source": volume.source,
        "Type": volume.type,
        "ReadOnly": volume.read_only,
    }


def _device(device: str) -> dict[str, str]:
    """HOST[:CONTAINER[:PERMISSIONS]], as Docker's --device."""
    parts = device.split(":")
    return {
        "PathOnHost": parts[0],
        "PathInContainer": parts[1] if len(parts) > 1 else parts[0],
        "CgroupPermissions": parts[2] if len(parts) > 2 else "rwm",
    }


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


def _sdk_client(address: EngineAddress, version: str, pool_size: int) -> Any:
    # Imported here, not at the top: only a pull needs it (module doc).
    import docker
    import docker.tls

    tls: Any = False
    if address.tls is not None:
        files = address.tls
        tls = docker.tls.TLSConfig(files.client_cert, files.ca_cert, files.verify)
    return docker.APIClient(
        base_url=address.host,
        version=version,
        timeout=_SDK_TIMEOUT,
        tls=tls,
        max_pool_size=pool_size,
    )


def _sdk_pull(api: Any, ref: str) -> None:
    """Pull with docker-py (in a pool thread): PullRefused or EngineUnavailable if not."""
    import docker.errors  # loaded with the client already
    import requests.exceptions
    import urllib3.exceptions

    repository, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
    try:
        api.pull(repository, tag=tag or "latest")
    except docker.errors.APIError as exc:
        raise PullRefused(str(exc.explanation or exc)) from exc
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise EngineUnavailable(
            f"cannot reach the Docker engine ({exc.__class__.__name__}); "
            "check that dockerd is running and its socket is readable"
        ) from exc
