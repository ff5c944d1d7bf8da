"""The real API app, engine and store on a unix socket (and optionally TCP), in a thread.

The runtime is a stand-in that has no images, so every run fails at once with
image_not_found: these tests are about the API surface, not about Docker.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from ringjobs.api.app import create_app
from ringjobs.config import Config, load_config
from ringjobs.engine.engine import Engine
from ringjobs.runtime.base import (
    ContainerState,
    ImageInfo,
    ImageNotFound,
    OutputChunk,
    RuntimeEvent,
)
from ringjobs.store import Store


class NoImagesRuntime:
    """A runtime that answers but has no images."""

    async def version(self) -> str:
        return "fake"

    async def resolve_image(self, ref: str, pull_policy: str) -> ImageInfo:
        raise ImageNotFound(f'image "{ref}" does not exist (fake runtime)')

    async def list_managed(self, instance: str) -> list[ContainerState]:
        return []

    async def events(self) -> AsyncIterator[RuntimeEvent]:
        await asyncio.Event().wait()
        yield RuntimeEvent("never", "", {}, 0)

    async def ensure_network(self, name: str, labels: dict[str, str]) -> None: ...
    async def create(self, spec: Any) -> str: ...
    async def attach(self, container_id: str) -> AsyncIterator[OutputChunk]: ...
    async def start(self, container_id: str) -> None: ...
    async def wait(self, container_id: str) -> int: ...
    async def inspect(self, container_id: str) -> ContainerState: ...
    async def stop(self, container_id: str, grace_seconds: float) -> None: ...
    async def remove(self, container_id: str) -> None: ...
    async def output(self, container_id: str, stream: str) -> bytes: ...
    async def close(self) -> None: ...


class ApiServer:
    """Start with `with ApiServer(tmp, ...) as server:`; `server.url` is set when tcp=True."""

    def __init__(self, tmp: Path, tcp: bool = False, **overrides: Any) -> None:
        self.config: Config = load_config(
            None, {"database": tmp / "rj.db", "socket": tmp / "rj.sock", **overrides}, environ={}
        )
        self.socket_path = self.config.socket
        self.tcp = tcp
        self.url = ""
        self.store = Store(self.config.database)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),))
        self.engine: Engine | None = None
        self.app: web.Application | None = None
        self.error: BaseException | None = None

    def __enter__(self) -> ApiServer:
        self._thread.start()
        if not self._ready.wait(30) or self.error:
            raise RuntimeError(f"API server did not start: {self.error}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self.loop.close()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop (e.g. a store query) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.store.open()
            self.engine = Engine(self.store, NoImagesRuntime(), self.config)  # type: ignore[arg-type]
            await self.engine.start()
            self.app = create_app(self.engine)
            runner = web.AppRunner(self.app, shutdown_timeout=0.5)
            await runner.setup()
            await web.UnixSite(runner, str(self.socket_path)).start()
            self.socket_path.chmod(0o666)  # so tests can call it as another uid
            if self.tcp:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", 0))
                    port = probe.getsockname()[1]
                await web.TCPSite(runner, "127.0.0.1", port).start()
                self.url = f"http://127.0.0.1:{port}"
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            raise
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await self.engine.stop()
            await self.store.close()
