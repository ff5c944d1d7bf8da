"""Bounds on raw connections to the daemon's socket, before HTTP gets to see them.

aiohttp has no cap on open connections and no deadline for a request's headers, so a
client that opens sockets and sends nothing (or half a request line) would hold the
daemon's file descriptors until it ran out. `GuardedUnixSite` wraps aiohttp's protocol
factory: past `limits.max_connections` a new connection gets a 503 and is closed, and a
connection that has not sent complete request headers within `limits.header_timeout`
is closed. Idle keep-alive connections after a request end on aiohttp's own
keepalive_timeout, which the daemon sets to the same header timeout.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import cast

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

_HEADERS_END = b"\r\n\r\n"


def _busy_answer(limit: int) -> bytes:
    body = json.dumps(
        {
            "type": "urn:ringjobs:problem:unavailable",
            "title": "service unavailable",
            "status": 503,
            "detail": f"the daemon has {limit} open connections (limits.max_connections); "
            "close idle clients or follows and try again, or raise limits.max_connections",
            "code": "unavailable",
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGuard:
    """Counts open connections and makes the guarded protocols that enforce the limits."""

    def __init__(self, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open = 0
        self.refused = 0
        self.timed_out = 0

    def factory(self, inner: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _GuardedProtocol(self, inner)


class _GuardedProtocol(asyncio.Protocol):
    """Passes everything to aiohttp's protocol; refuses over the cap, times out headers."""

    def __init__(self, guard: ConnectionGuard, inner: Callable[[], asyncio.BaseProtocol]) -> None:
        self._guard = guard
        self._make_inner = inner
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, to find a header end split across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        guard = self._guard
        if guard.open >= guard.max_connections:
            guard.refused += 1
            if guard.refused == 1 or guard.refused % 100 == 0:  # a flood must not flood the log
                log.warning("connection_refused", open=guard.open, refused=guard.refused)
            self._transport.write(_busy_answer(guard.max_connections))
            self._transport.close()
            return
        guard.open += 1
        self._inner = cast(asyncio.Protocol, self._make_inner())
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(guard.header_timeout, self._headers_too_late)
        self._inner.connection_made(transport)

    def _headers_too_late(self) -> None:
        self._timer = None
        self._guard.timed_out += 1
        log.info("connection_header_timeout", seconds=self._guard.header_timeout)
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return  # refused: whatever it sends is dropped
        if self._timer is not None:
            seen = self._tail + data
            if _HEADERS_END in seen:
                self._timer.cancel()
                self._timer = None
            self._tail = seen[-(len(_HEADERS_END) - 1) :]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._inner is None:
            return
        self._guard.open -= 1
        inner, self._inner = self._inner, None
        inner.connection_lost(exc)


class GuardedUnixSite(web.UnixSite):
    """`web.UnixSite` whose connections go through a `ConnectionGuard`."""

    __slots__ = ("guard",)

    def __init__(self, runner: web.BaseRunner, path: str, guard: ConnectionGuard) -> None:
        super().__init__(runner, path)
        self.guard = guard

    async def start(self) -> None:
        # BaseSite.start registers the site with the runner; UnixSite.start would then
        # listen with the bare protocol factory, so this listens itself instead.
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            self.guard.factory(server), self._path, backlog=self._backlog
        )
