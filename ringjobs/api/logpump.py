"""A log stream's pages read and sent on a thread of the stream's, past aiohttp's writer.

`logs RUN` of a large log went through two threads that waited for each other: the
store's reader built each page, and the event loop sent it in 64 KiB writes through
aiohttp. Here one thread reads a page (with the stream's own connection: LogPageReader)
and writes it as an HTTP/1.1 chunk straight to a duplicate of the client's socket, then
reads the next while the kernel's socket buffer drains: 250 -> 400 MiB/s with `curl`
here (README "At scale"). The event loop only starts each batch of pages and awaits it.

aiohttp writes the headers before and the last chunk after (`write_eof`); in between,
the response's bytes are all written here: nothing else writes to a log stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import asynccontextmanager

from aiohttp import web

from ringjobs.api.access import StreamAborted
from ringjobs.store import Store
from ringjobs.store.store import LogPage, LogPageReader

Pages = Callable[[LogPageReader], Iterator[LogPage]]
_DRAIN_POLL = 0.005  # seconds; aiohttp's headers are out at once unless the client stalls


class LogPump:
    """Sends batches of log pages as HTTP chunks, one batch at a time (see module)."""

    def __init__(
        self,
        threads: Executor,
        transport: asyncio.Transport,
        outlet: socket.socket,
        reader: LogPageReader,
    ) -> None:
        self._threads = threads
        self._transport = transport
        self._outlet = outlet  # a duplicate of the client's socket, with a write timeout
        self._reader = reader
        self._stop = threading.Event()
        self._closing = threading.Lock()  # the outlet is shut down or closed, never both
        self._job: Future[int] | None = None

    async def send(self, pages: Pages, after: int) -> int:
        """Send what `pages` reads, on a thread of the stream's; returns the seq of the
        last line sent (`after` if none). A client that has not read for the write
        timeout, or went away, has its connection dropped: StreamAborted."""
        self._job = self._threads.submit(self._send, pages, after)
        try:
            return await asyncio.wrap_future(self._job)
        except OSError as exc:  # TimeoutError (not read meanwhile) is one too
            self._transport.abort()
            raise StreamAborted(str(exc) or type(exc).__name__) from None

    def _send(self, pages: Pages, after: int) -> int:
        for page in pages(self._reader):
            if self._stop.is_set():
                break
            if self._transport.is_closing():  # aiohttp saw the client leave (read from here)
                raise ConnectionResetError("the client closed the connection")
            self._outlet.sendall(b"%x\r\n" % len(page.data))
            self._outlet.sendall(page.data)
            self._outlet.sendall(b"\r\n")
            after = page.last_seq
        return after

    def close(self) -> None:
        """Stop: a batch under way (the stream was cancelled) ends at its next write,
        and the outlet and the reader are closed once nothing uses them."""
        self._stop.set()
        job = self._job
        if job is None or job.done():
            self._release()
            return
        with self._closing, contextlib.suppress(OSError):
            self._outlet.shutdown(socket.SHUT_RDWR)  # a write under way fails now
        job.add_done_callback(lambda _: self._release())  # at once if done meanwhile

    def _release(self) -> None:
        with self._closing:
            self._outlet.close()
        self._reader.close()


@asynccontextmanager
async def log_pump(
    request: web.Request, store: Store, threads: Executor, write_timeout: float
) -> AsyncIterator[LogPump]:
    """A LogPump for a log stream whose headers aiohttp has written (prepare)."""
    transport = request.transport
    if transport is None:
        raise StreamAborted("the client went away")
    try:
        async with asyncio.timeout(write_timeout):  # aiohttp's bytes first, all of them
            # Polled: the transport tells when its buffer is under a mark, not empty.
            while transport.get_write_buffer_size():  # noqa: ASYNC110
                await asyncio.sleep(_DRAIN_POLL)
    except TimeoutError:
        transport.abort()
        raise StreamAborted("the client did not read the headers") from None
    if transport.is_closing():
        raise StreamAborted("the client went away")
    reader = store.page_reader()  # its connection opens at its first page
    client = transport.get_extra_info("socket")
    # Duplicated on the event loop's thread, where the transport would close the
    # original: the number cannot be reused under the stream's thread.
    outlet = socket.socket(client.family, client.type, fileno=os.dup(client.fileno()))
    outlet.settimeout(write_timeout)  # kept non-blocking: the timeout is Python's poll
    pump = LogPump(threads, transport, outlet, reader)
    try:
        yield pump
    finally:
        pump.close()
