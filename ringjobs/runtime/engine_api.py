"""The Docker Engine API over aiohttp on the event loop: one kept-alive pool.

docker-py over `requests` costs ~0.9 ms of Python per call in a pool thread, plus a
thread hop each way, and keys its connection pools by full URL (a new unix
connection per container); these calls (~0.3 ms each, no thread) happen for every
run. Importing docker-py also costs ~7 MB of RSS (issue 7), so every call goes here;
only a pull uses it (runtime/docker.py).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from ringjobs.exceptions import EngineUnavailable

if TYPE_CHECKING:
    import ssl  # only a tcp:// engine over TLS loads it: see ringjobs/sslgate.py

FALLBACK_API_VERSION = "1.41"  # if the engine answers /version without one
_CALL_TIMEOUT = aiohttp.ClientTimeout(total=60)
_STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=60)  # wait, attach
_READ_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=60)  # logs
_FRAME_HEADER = struct.Struct(">BxxxL")  # stream id, 3 bytes padding, payload length
_STREAMS = {1: "stdout", 2: "stderr"}
_BROKEN = (aiohttp.ClientError, TimeoutError, OSError)


class EngineAPIError(Exception):
    """The engine answered with an error status."""

    def __init__(self, status: int, explanation: str) -> None:
        super().__init__(f"{status}: {explanation}")
        self.status = status
        self.explanation = explanation


def _unavailable(exc: BaseException) -> EngineUnavailable:
    return EngineUnavailable(
        f"cannot reach the Docker engine ({exc.__class__.__name__}); "
        "check that dockerd is running and its socket is readable"
    )


class EngineAPI:
    """The Engine API on one kept-alive connection pool.

    `url` is what `dockerenv.engine_url` returns: `http+unix:///path`,
    `http://host:port` or `https://host:port` (with `tls`). The API version is the
    engine's own, asked on the first call that reaches it (docker-py's "auto").
    """

    def __init__(self, url: str, tls: ssl.SSLContext | None = None) -> None:
        self._url = url
        self._tls = tls
        self._version: str | None = None
        self._negotiating = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:  # e.g. a delayed removal after shutdown: nothing may reopen it
            raise EngineUnavailable("the Docker client is closed (the daemon is shutting down)")
        # Made on first use: it belongs to the running loop.
        if self._session is None:
            connector: aiohttp.BaseConnector
            if self._url.startswith("http+unix://"):
                path = "/" + self._url.removeprefix("http+unix://").lstrip("/")
                connector = aiohttp.UnixConnector(path=path, limit=0)
                base = "http://docker"
            else:
                connector = aiohttp.TCPConnector(limit=0, ssl=self._tls or False)
                base = self._url
            self._session = aiohttp.ClientSession(
                base_url=base, connector=connector, timeout=_CALL_TIMEOUT
            )
        return self._session

    async def api_version(self) -> str:
        """The engine's API version, asked once it answers; until then every call fails
        with EngineUnavailable, so an engine started after the daemon is asked then."""
        if self._version is None:
            async with self._negotiating:
                if self._version is None:
                    self._version = await self._negotiate()
        return self._version

    async def _negotiate(self) -> str:
        try:
            data = await self._request("GET", "/version", None, None, _CALL_TIMEOUT)
            version = _decode(data).get("ApiVersion")
        except (EngineAPIError, ValueError, AttributeError):
            version = None  # it answers, but not with a version: the fallback, as before
        return str(version) if version else FALLBACK_API_VERSION

    async def _path(self, path: str) -> str:
        return f"/v{await self.api_version()}{path}"

    async def call(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: Any = None,
        time_limit: float | None = 60.0,
    ) -> Any:
        """One request; the decoded JSON answer (None if empty), EngineAPIError on >= 400.

        `time_limit=None` for calls that last as long as a container (wait).
        """
        limit = _STREAM_TIMEOUT if time_limit is None else aiohttp.ClientTimeout(total=time_limit)
        data = await self._request(method, await self._path(path), params, body, limit)
        return _decode(data) if data else None

    async def read(self, path: str, params: dict[str, str]) -> bytes:
        """The raw answer of one GET (logs: as long as it takes, while bytes keep coming)."""
        return await self._request("GET", await self._path(path), params, None, _READ_TIMEOUT)

    async def _request(
        self,
        method: str,
        url: str,
        params: dict[str, str] | None,
        body: Any,
        limit: aiohttp.ClientTimeout,
    ) -> bytes:
        try:
            async with self._client().request(
                method, url, params=params, json=body, timeout=limit
            ) as response:
                data = await response.read()
                if response.status >= 400:
                    raise EngineAPIError(response.status, _explanation(data))
        except _BROKEN as exc:
            raise _unavailable(exc) from exc
        return data

    async def attach(self, container_id: str) -> AsyncIterator[tuple[str, bytes]]:
        """Open the attach stream now (call before start); the reader of its frames.

        Without `Upgrade`, dockerd answers `200 OK` and streams the multiplexed frames
        on the connection until the container exits (no TTY: 8-byte headers).
        """
        params = {"stdout": "1", "stderr": "1", "stream": "1", "logs": "0"}
        path = await self._path(f"/containers/{quote(container_id)}/attach")
        try:
            response = await self._client().post(path, params=params, timeout=_STREAM_TIMEOUT)
        except _BROKEN as exc:
            raise _unavailable(exc) from exc
        if response.status >= 400:
            data = await response.read()
            response.release()
            raise EngineAPIError(response.status, _explanation(data))
        return _frames(response)

    async def stream(self, path: str, params: dict[str, str]) -> AsyncIterator[Any]:
        """The JSON objects of a streaming endpoint (one per line: events) until it ends."""
        url = await self._path(path)
        try:
            async with self._client().get(url, params=params, timeout=_STREAM_TIMEOUT) as response:
                if response.status >= 400:
                    raise EngineAPIError(response.status, _explanation(await response.read()))
                async for line in response.content:
                    if line.strip():
                        yield _decode(line)
        except _BROKEN as exc:
            raise _unavailable(exc) from exc

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


def demux(data: bytes) -> bytes:
    """The payloads of a whole multiplexed answer (logs of one stream), headers dropped.

    As docker-py read it: a last frame cut short gives what there is of it.
    """
    payloads = []
    at = 0
    while len(data) - at >= _FRAME_HEADER.size:
        _, size = _FRAME_HEADER.unpack_from(data, at)
        at += _FRAME_HEADER.size
        payloads.append(data[at : at + size])
        at += size
    return b"".join(payloads)


async def _frames(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, bytes]]:
    """(stream, payload) until the stream ends; reading slowly slows the container."""
    content = response.content
    try:
        while True:
            header = await content.readexactly(_FRAME_HEADER.size)
            stream_id, size = _FRAME_HEADER.unpack(header)
            if size:
                yield _STREAMS.get(stream_id, "stdout"), await content.readexactly(size)
    except (asyncio.IncompleteReadError, *_BROKEN):
        return  # the container exited (or the engine went away): the stream is over
    finally:
        response.close()


def _decode(data: bytes) -> Any:
    return json.loads(data)


def _explanation(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    try:
        message = _decode(data).get("message")
    except (ValueError, AttributeError):
        return text
    return str(message or text)
