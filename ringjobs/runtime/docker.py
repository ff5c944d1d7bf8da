"""Docker implementation of the runtime, on the synchronous docker SDK.

Every SDK call runs in a dedicated thread pool: `wait()`, an attach stream and the
events stream each hold a thread for as long as they last, so the pool is sized for
the configured concurrency (the default executor would starve).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions
from docker.types import LogConfig, Mount
from docker.utils.socket import frames_iter

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

T = TypeVar("T")
_STREAMS = {1: "stdout", 2: "stderr"}
_QUEUE_CHUNKS = 64  # bounded: a slow database slows the container's output, never our memory
_EVENT_ACTIONS = ["die", "oom", "kill", "destroy"]
_PULL_TIMEOUT = 600.0
_FALLBACK_API_VERSION = "1.41"
_PUMP_EXIT_TIMEOUT = 2.0  # a reader thread gets this long to notice its socket closed
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
        self._closed = threading.Event()
        self._event_streams: list[Any] = []
        self._network_locks: dict[str, asyncio.Lock] = {}

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

    async def _call_detached(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a call that may block for as long as a container lives on a daemon thread.

        Pool threads are joined at interpreter exit, so a daemon stopping with containers
        still running would wait for them; daemon threads are simply dropped.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def deliver(setter: Callable[[Any], None], value: Any) -> None:
            if not future.done():
                setter(value)

        def target() -> None:
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the awaiting coroutine
                outcome: tuple[Callable[[Any], None], Any] = (future.set_exception, exc)
            else:
                outcome = (future.set_result, result)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(deliver, *outcome)

        threading.Thread(target=target, daemon=True, name="docker-long").start()
        try:
            return await future
        except docker.errors.APIError:
            raise
        except _BROKEN_CONNECTION as exc:
            raise EngineUnavailable(
                f"lost the Docker engine ({exc.__class__.__name__}); "
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
            data = await self._call(self._api.inspect_image, ref)
        except docker.errors.NotFound:
            return None
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
        # Docker's duplicate check is racy: two concurrent creates make two networks.
        lock = self._network_locks.setdefault(name, asyncio.Lock())
        async with lock:
            await self._ensure_network(name, labels)

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
        kwargs = _create_kwargs(spec)
        try:
            container = await self._call(self._client.containers.create, **kwargs)
        except docker.errors.ImageNotFound as exc:
            raise ImageNotFound(f'image "{spec.image}" disappeared: {_explain(exc)}') from exc
        except docker.errors.APIError as exc:
            raise StartFailed(f"Docker refused to create the container: {_explain(exc)}") from exc
        await self._join_networks(str(container.id), spec.extra_networks)
        return str(container.id)

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
        if name is not None:
            try:
                data = await self._call(self._api.inspect_container, name)
            except docker.errors.NotFound:
                return []
            found = [data]
        else:
            filters = {"label": list(labels), "status": "running"}
            rows = await self._call(self._api.containers, filters=filters)
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
        """Open the attach socket now (before start) and return its reader."""
        sock = await self._call(
            self._api.attach_socket,
            container_id,
            # logs=0: attached before start there is nothing to replay, and replaying raced
            # the live stream (about 1 run in 100 stored its output twice).
            params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 0},
        )
        return self._read_frames(sock)

    async def _read_frames(self, sock: Any) -> AsyncIterator[OutputChunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[OutputChunk | None] = asyncio.Queue(_QUEUE_CHUNKS)

        def pump() -> None:
            try:
                for stream_id, data in frames_iter(sock, tty=False):
                    item = (_STREAMS.get(stream_id, "stdout"), data)
                    asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
            except Exception:
                pass
            finally:
                _close_socket(sock)
                if not loop.is_closed():
                    with contextlib.suppress(RuntimeError):
                        asyncio.run_coroutine_threadsafe(queue.put(None), loop)

        future = asyncio.ensure_future(self._call_detached(pump))
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            _close_socket(sock)
            while not queue.empty():  # unblock the pump if it waits on a full queue
                queue.get_nowait()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(future), _PUMP_EXIT_TIMEOUT)

    async def start(self, container_id: str) -> None:
        try:
            await self._call(self._api.start, container_id)
        except docker.errors.NotFound as exc:
            raise ContainerNotFound(f"container {container_id[:12]} is gone") from exc
        except docker.errors.APIError as exc:
            raise StartFailed(f"the container could not start: {_explain(exc)}") from exc

    async def wait(self, container_id: str) -> int:
        try:
            result = await self._call_detached(self._api.wait, container_id, timeout=None)
        except docker.errors.NotFound as exc:
            raise ContainerNotFound(f"container {container_id[:12]} is gone") from exc
        return int(result.get("StatusCode", -1))

    async def inspect(self, container_id: str) -> ContainerState:
        try:
            data = await self._call(self._api.inspect_container, container_id)
        except docker.errors.NotFound as exc:
            raise ContainerNotFound(f"container {container_id[:12]} is gone") from exc
        return _state_from_inspect(data)

    async def stop(self, container_id: str, grace_seconds: float) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            await self._call(self._api.stop, container_id, timeout=math.ceil(grace_seconds))

    async def remove(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            await self._call(self._api.remove_container, container_id, v=True, force=True)

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
        """Managed containers' events; reconnects with `since` so none is lost."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RuntimeEvent] = asyncio.Queue()
        future = asyncio.ensure_future(self._call_detached(self._listen, loop, queue))
        try:
            while True:
                yield await queue.get()
        finally:
            self._closed.set()
            for stream in list(self._event_streams):
                with contextlib.suppress(Exception):
                    stream.close()
            future.cancel()

    def _listen(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[RuntimeEvent]) -> None:
        since = time.time()
        while not self._closed.is_set():
            stream = None
            try:
                stream = self._client.events(
                    decode=True,
                    since=since,
                    filters={
                        "type": "container",
                        "label": f"{LABEL_MANAGED}=true",
                        "event": _EVENT_ACTIONS,
                    },
                )
                self._event_streams.append(stream)
                for raw in stream:
                    event = _event_from_raw(raw)
                    since = event.time_ns / 1e9
                    loop.call_soon_threadsafe(queue.put_nowait, event)
            except Exception:
                pass  # the engine went away or the loop closed: reconnect from `since`
            finally:
                self._event_streams.clear()
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()
            self._closed.wait(1.0)

    async def close(self) -> None:
        self._closed.set()
        for stream in list(self._event_streams):
            with contextlib.suppress(Exception):
                stream.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
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


def _close_socket(sock: Any) -> None:
    """docker-py hands out a SocketIO wrapper; the real socket and response need closing too.

    shutdown() first: close() alone does not wake a thread blocked in recv() on it.
    """
    raw = getattr(sock, "_sock", sock)
    with contextlib.suppress(Exception):
        raw.shutdown(socket.SHUT_RDWR)
    for part in (sock, getattr(sock, "_sock", None), getattr(sock, "_response", None)):
        if part is not None:
            with contextlib.suppress(Exception):
                part.close()


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
