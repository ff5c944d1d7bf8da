"""Limits on the daemon process itself: open files, raw connections, file modes."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from ringjobs.api.connections import ConnectionGuard, GuardedUnixSite
from ringjobs.config import load_config
from ringjobs.daemon import Daemon, raise_open_file_limit
from ringjobs.store import Store

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_the_soft_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        with capture_logs() as logs:
            assert raise_open_file_limit() == (hard, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        line = next(entry for entry in logs if entry["event"] == "nofile_limit")
        assert (line["soft_was"], line["soft"], line["hard"]) == (lowered, hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- connections -------------------------------------------------------------------------


@pytest.fixture
async def guarded(short_tmp: Path) -> AsyncIterator[tuple[Path, ConnectionGuard]]:
    """A real aiohttp server on a unix socket behind a guard of 3 connections, 0.5 s."""

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    guard = ConnectionGuard(max_connections=3, header_timeout=0.5)
    path = short_tmp / "g.sock"
    await GuardedUnixSite(runner, str(path), guard).start()
    try:
        yield path, guard
    finally:
        await runner.cleanup()


async def _until(check: Callable[[], bool], within: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def _connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(str(path))


async def _response_head(reader: asyncio.StreamReader) -> bytes:
    """The status line and headers; the body ("hello", 5 bytes here) is read too."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    await asyncio.wait_for(reader.readexactly(5), 30)
    return head


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_connections_over_the_cap_get_503_and_are_closed(
    guarded: tuple[Path, ConnectionGuard],
) -> None:
    path, guard = guarded
    held = [await _connect(path) for _ in range(3)]  # idle: they send nothing
    await _until(lambda: guard.open == 3)
    reader, writer = await _connect(path)
    answer = await asyncio.wait_for(reader.read(), 30)  # read() ends only at EOF
    assert answer.startswith(b"HTTP/1.1 503")
    assert b"application/problem+json" in answer and b"limits.max_connections" in answer
    await _close(writer)
    assert guard.open == 3 and guard.refused == 1
    await _close(held[0][1])  # one leaves: a new client is served
    await _until(lambda: guard.open == 2)
    reader, writer = await _connect(path)
    writer.write(REQUEST)
    assert (await _response_head(reader)).startswith(b"HTTP/1.1 200")
    await _close(writer)
    for _, other in held[1:]:
        await _close(other)
    await _until(lambda: guard.open == 0)


async def test_a_connection_without_complete_headers_is_closed(
    guarded: tuple[Path, ConnectionGuard],
) -> None:
    path, guard = guarded
    reader, writer = await _connect(path)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # one CRLF short, then nothing more
    assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the daemon
    await _close(writer)
    assert guard.timed_out == 1
    await _until(lambda: guard.open == 0)


async def test_headers_split_across_writes_are_served_and_not_timed_out(
    guarded: tuple[Path, ConnectionGuard],
) -> None:
    path, guard = guarded
    reader, writer = await _connect(path)
    writer.write(REQUEST[:-3])  # the header end split over two reads
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.write(REQUEST[-3:])
    head = await _response_head(reader)
    assert head.startswith(b"HTTP/1.1 200")
    await asyncio.sleep(1.5)  # three header timeouts: a served connection stays open
    writer.write(REQUEST)  # kept alive: a second request on it is answered
    assert (await _response_head(reader)).startswith(b"HTTP/1.1 200")
    assert guard.timed_out == 0
    await _close(writer)


async def test_the_daemon_listens_through_the_guard(short_tmp: Path) -> None:
    """Daemon.listen (what startup calls) applies limits.max_connections from the config."""
    config = load_config(
        None,
        {
            "socket": short_tmp / "d.sock",
            "database": short_tmp / "rj.db",
            "limits": {"max_connections": 8, "header_timeout": "1s"},
        },
        environ={},
    )
    daemon = Daemon(config)
    guard = await daemon.listen(web.Application())
    assert daemon.runner is not None
    try:
        assert stat.S_IMODE(config.socket.stat().st_mode) == 0o660
        held = [await _connect(config.socket) for _ in range(8)]
        await _until(lambda: guard.open == 8)
        reader, writer = await _connect(config.socket)
        assert (await asyncio.wait_for(reader.read(), 30)).startswith(b"HTTP/1.1 503")
        await _close(writer)
        for _, other in held:
            await _close(other)
        await _until(lambda: guard.open == 0)
    finally:
        await daemon.runner.cleanup()


# -- file modes --------------------------------------------------------------------------


async def test_a_fresh_store_is_private(short_tmp: Path) -> None:
    path = short_tmp / "state" / "rj.db"
    store = Store(path)
    await store.open()
    try:
        names = ["rj.db", "rj.db-wal", "rj.db-shm"]
        assert all((path.parent / name).exists() for name in names)
        modes = {name: stat.S_IMODE((path.parent / name).stat().st_mode) for name in names}
        assert modes == dict.fromkeys(names, 0o600)
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        await store.close()


async def test_an_existing_readable_database_is_made_private(short_tmp: Path) -> None:
    path = short_tmp / "rj.db"
    store = Store(path)
    await store.open()
    await store.close()
    path.chmod(0o644)
    store = Store(path)
    await store.open()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        await store.close()
