"""A log stream's pages read on one thread and sent on another, past aiohttp's writer.

`logs RUN` of a large log went through two threads that waited for each other: the
store's reader built each page, and the event loop sent it in 64 KiB writes through
aiohttp. Here a thread of the stream's reads pages (with the stream's own connection:
LogPageReader) and hands each over, one at a time, to a second thread, which writes it
as an HTTP/1.1 chunk straight to a duplicate of the client's socket. Both are CPU-bound
(SQLite's reads and the page built; the copy into the socket), and on one thread each
waited for the other: 1 GiB through the CLI 1220 -> 1394 MiB/s here with the second
thread (README "At scale"). The event loop only starts each batch of pages and awaits it.

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
from typing import TypeVar

from aiohttp import web

from ringjobs.api.access import StreamAborted, StreamThreads
from ringjobs.store import Store
from ringjobs.store.store import LogPage, LogPageReader

Pages = Callable[[LogPageReader], Iterator[LogPage]]
_T = TypeVar("_T")
_DRAIN_POLL = 0.005  # seconds; aiohttp's headers are out at once unless the client stalls


class _End:
    """The reading thread has read the last page."""


_END = _End()
_Handed = LogPage | BaseException | _End


class _Handoff:
    """One page at a time from the reading thread to the sending one: the reader builds
    the next page while the sender sends this one, and no more is held (about three
    pages per stream: one built, one handed over, one being sent)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._item: _Handed | None = None
        self._stopped = False
        self._reader_gone = False

    def put(self, item: _Handed) -> bool:
        """Hand over once the last one was taken; False (not handed) once stopped."""
        with self._changed:
            while self._item is not None and not self._stopped:
                self._changed.wait()
            if self._stopped:
                return False
            self._item = item
            self._changed.notify_all()
            return True

    def take(self) -> _Handed:
        """The next item. Only the sender takes, and only until the reader's last item
        (_END or its error); a reader that ended without one (its future cancelled while
        queued) is a ConnectionAbortedError, not a wait for ever. StreamThreads.close
        lets queued readers run: this is a defence, for a pool shut down otherwise."""
        with self._changed:
            while self._item is None and not self._reader_gone:
                self._changed.wait()
            if self._item is None:
                raise ConnectionAbortedError("the log stream's reader stopped (shutdown)")
            item, self._item = self._item, None
            self._changed.notify_all()
            return item

    def stop(self) -> None:
        """The sender is done: a reader waiting to hand over, or about to, stops."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def reader_done(self, _: object) -> None:
        """The reader's future is done (a done callback), with or without a last item."""
        with self._changed:
            self._reader_gone = True
            self._changed.notify_all()

    def join(self) -> None:
        """Until the reader's future is done. Not `concurrent.futures.wait`: a future that
        a pool's shutdown cancelled in its queue never counts as done there."""
        with self._changed:
            while not self._reader_gone:
                self._changed.wait()


class LogPump:
    """Sends batches of log pages as HTTP chunks, one batch at a time (see module)."""

    def __init__(
        self,
        threads: StreamThreads,
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
        """Send what `pages` reads, on threads of the stream's; returns the seq of the
        last line sent (`after` if none). A client that has not read for the write
        timeout, or went away, has its connection dropped: StreamAborted."""
        try:
            self._job = _submit(self._threads.senders, self._send, pages, after)
            return await asyncio.wrap_future(self._job)
        except OSError as exc:  # TimeoutError (not read meanwhile) is one too
            self._transport.abort()
            raise StreamAborted(str(exc) or type(exc).__name__) from None

    def _send(self, pages: Pages, after: int) -> int:
        handoff = _Handoff()
        reading = _submit(self._threads.readers, self._read, pages, handoff)
        reading.add_done_callback(handoff.reader_done)
        try:
            while not isinstance(page := handoff.take(), _End):
                if isinstance(page, BaseException):
                    raise page
                if self._stop.is_set():
                    break
                if self._transport.is_closing():  # aiohttp saw the client leave
                    raise ConnectionResetError("the client closed the connection")
                self._outlet.sendall(b"%x\r\n" % len(page.data))
                self._outlet.sendall(page.data)
                self._outlet.sendall(b"\r\n")
                after = page.last_seq
            return after
        finally:
            handoff.stop()
            handoff.join()  # within a page's read: then the reader's connection is free

    def _read(self, pages: Pages, handoff: _Handoff) -> None:
        try:
            for page in pages(self._reader):
                if not handoff.put(page):
                    return
        except BaseException as exc:  # the sender raises it, on its thread
            handoff.put(exc)
        else:
            handoff.put(_END)

    def close(self) -> None:
        """Stop: a batch under way (the stream was cancelled) ends at its next write, or
        once the page being read is read, and the outlet and the reader are closed once
        nothing uses them."""
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


def _submit(pool: Executor, call: Callable[..., _T], *args: object) -> Future[_T]:
    try:
        return pool.submit(call, *args)
    except RuntimeError:  # the pool is shut down: the daemon is stopping
        raise ConnectionAbortedError("the daemon is shutting down") from None


@asynccontextmanager
async def log_pump(
    request: web.Request, store: Store, threads: StreamThreads, write_timeout: float
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
    # original: the number cannot be reused under the stream's sending thread.
    outlet = socket.socket(client.family, client.type, fileno=os.dup(client.fileno()))
    outlet.settimeout(write_timeout)  # kept non-blocking: the timeout is Python's poll
    pump = LogPump(threads, transport, outlet, reader)
    try:
        yield pump
    finally:
        pump.close()
