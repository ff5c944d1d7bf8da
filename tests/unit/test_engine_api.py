"""EngineAPI against a fake engine on a unix socket: API version, frames, logs."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from ringjobs.exceptions import EngineUnavailable
from ringjobs.runtime.engine_api import EngineAPI, _frames, demux


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


class FakeEngine:
    """Answers /version with `version_answer`; records every other path it is asked."""

    def __init__(self, socket_path: Path, version_answer: Callable[[], web.Response]) -> None:
        self.socket_path = socket_path
        self.version_answer = version_answer
        self.paths: list[str] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/version":
            return self.version_answer()
        self.paths.append(request.path)
        if request.path.endswith("/logs"):
            return web.Response(body=frame(1, b"one\n") + frame(1, b"two\n"))
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.UnixSite(self.runner, str(self.socket_path)).start()

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
def sock(short_tmp: Path) -> Iterator[Path]:
    yield short_tmp / "engine.sock"


async def test_the_engines_api_version_is_used_once_it_answers(sock: Path) -> None:
    engine = FakeEngine(sock, lambda: web.json_response({"ApiVersion": "1.43"}))
    api = EngineAPI(f"http+unix://{sock}")
    try:
        with pytest.raises(EngineUnavailable):  # not up yet: nothing is pinned
            await api.call("GET", "/containers/json")
        await engine.start()
        await api.call("GET", "/containers/json")
        assert await api.api_version() == "1.43"
        assert engine.paths == ["/v1.43/containers/json"]
    finally:
        await api.close()
        await engine.stop()


@pytest.mark.parametrize(
    "answer",
    [
        lambda: web.json_response({"Version": "20.10"}),
        lambda: web.Response(status=500, text="no"),
        lambda: web.Response(text="not json"),
    ],
    ids=["no-api-version", "error", "not-json"],
)
async def test_an_engine_without_a_version_answer_gets_the_fallback(
    sock: Path, answer: Callable[[], web.Response]
) -> None:
    engine = FakeEngine(sock, answer)
    await engine.start()
    api = EngineAPI(f"http+unix://{sock}")
    try:
        assert await api.read("/containers/x/logs", {}) == frame(1, b"one\n") + frame(1, b"two\n")
        assert engine.paths == ["/v1.41/containers/x/logs"]
    finally:
        await api.close()
        await engine.stop()


def test_demux_joins_the_payloads_and_keeps_a_cut_last_frame() -> None:
    data = frame(1, b"a\n") + frame(1, b"") + frame(2, b"bc") + frame(1, b"defgh")[:-2]
    assert demux(data) == b"a\nbcdef"
    assert demux(b"") == b""
    assert demux(frame(1, b"x") + b"\x01\x00") == b"x"  # a header cut short: nothing of it


class _Response:
    """What `_frames` reads of an aiohttp response: its content, then close()."""

    def __init__(self, content: asyncio.StreamReader) -> None:
        self.content = content
        self.closed = False

    def close(self) -> None:
        self.closed = True


async def read_frames(chunks: list[bytes]) -> tuple[list[tuple[str, bytes]], bool]:
    content = asyncio.StreamReader()
    response = _Response(content)

    async def feed() -> None:
        for chunk in chunks:
            content.feed_data(chunk)
            await asyncio.sleep(0)
        content.feed_eof()

    feeder = asyncio.create_task(feed())
    reader: AsyncIterator[tuple[str, bytes]] = _frames(response)  # type: ignore[arg-type]
    got = [item async for item in reader]
    await feeder
    return got, response.closed


@pytest.mark.parametrize("size", [1, 3, 7, 8, 9, 1000])
async def test_frames_split_anywhere_across_chunks_come_out_whole(size: int) -> None:
    data = frame(1, b"out 1\n") + frame(2, b"err 1\n") + frame(1, b"") + frame(1, b"x" * 300)
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    got, closed = await read_frames(chunks)
    assert got == [("stdout", b"out 1\n"), ("stderr", b"err 1\n"), ("stdout", b"x" * 300)]
    assert closed


async def test_a_stream_cut_mid_frame_ends_without_error() -> None:
    got, closed = await read_frames([frame(2, b"whole"), frame(1, b"cut short")[:-3]])
    assert (got, closed) == ([("stderr", b"whole")], True)


async def test_a_closed_client_opens_no_connection() -> None:
    api = EngineAPI("http+unix:///nonexistent.sock")
    await api.close()
    with pytest.raises(EngineUnavailable, match="closed"):
        await api.call("GET", "/version")
