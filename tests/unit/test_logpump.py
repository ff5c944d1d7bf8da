"""LogPump: a log stream's pages sent as HTTP chunks from a thread, on real sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ringjobs.api.access import StreamAborted, StreamThreads
from ringjobs.api.logpump import LogPump
from ringjobs.exceptions import StoreUnavailable
from ringjobs.store.store import LogPage


class Transport:
    """What LogPump asks of the event loop's transport: whether the client left, and to
    drop the connection."""

    def __init__(self) -> None:
        self.aborted = self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.aborted = True


class Reader:
    """Stands in for LogPageReader: the pump only hands it to `pages` and closes it.
    `reading` is set by a test's pages while one is read."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.reading = False
        self.closed_while_reading = False

    def close(self) -> None:
        self.closed_while_reading = self.reading
        self.closed.set()


@pytest.fixture
def threads() -> Iterator[StreamThreads]:
    pools = StreamThreads(1)
    yield pools
    pools.senders.shutdown(wait=True)
    pools.readers.shutdown(wait=True)


@pytest.fixture
def pump_pair(threads: StreamThreads) -> Any:
    def make(timeout: float = 10.0) -> tuple[LogPump, socket.socket, Transport, Reader]:
        ours, client = socket.socketpair()
        ours.settimeout(timeout)
        client.settimeout(10)  # a test that fails does not hang on its read
        transport, reader = Transport(), Reader()
        pump = LogPump(threads, transport, ours, reader)  # type: ignore[arg-type]
        return pump, client, transport, reader

    return make


def pages(*sizes: int, first_seq: int = 1, started: threading.Event | None = None) -> Any:
    def read(reader: Reader) -> Iterator[LogPage]:
        for index, size in enumerate(sizes):
            if started is not None:
                started.set()
            yield LogPage(bytes([65 + index]) * size, first_seq + index, 1)

    return read


def dechunk(data: bytes) -> list[bytes]:
    chunks = []
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        chunks.append(data[:size])
        assert data[size : size + 2] == b"\r\n"
        data = data[size + 2 :]
    return chunks


def read_all(client: socket.socket) -> bytes:
    received = b""
    while chunk := client.recv(1 << 20):
        received += chunk
    return received


async def test_pages_go_out_as_chunks_in_order_and_the_last_seq_comes_back(pump_pair: Any) -> None:
    pump, client, transport, reader = pump_pair()
    reading = asyncio.get_running_loop().run_in_executor(None, read_all, client)
    assert await pump.send(pages(3, 300_000, 1, first_seq=5), 4) == 7
    assert await pump.send(pages(), 7) == 7  # nothing new: the seq it was given
    pump.close()  # the socket with it: the reader sees the end
    received = await reading
    client.close()
    assert dechunk(received) == [b"A" * 3, b"B" * 300_000, b"C"]
    assert reader.closed.is_set() and not transport.aborted


async def test_a_client_that_does_not_read_is_dropped_after_the_write_timeout(
    pump_pair: Any,
) -> None:
    pump, client, transport, reader = pump_pair(timeout=0.3)
    start = time.monotonic()
    with pytest.raises(StreamAborted):
        await pump.send(pages(64 << 20), 0)  # more than any socket buffer holds
    assert 0.25 < time.monotonic() - start < 5
    assert transport.aborted
    pump.close()
    assert reader.closed.wait(5)
    client.close()


async def test_a_client_that_went_away_ends_the_stream(pump_pair: Any) -> None:
    pump, client, transport, reader = pump_pair()
    client.close()
    with pytest.raises(StreamAborted):
        await pump.send(pages(10, 10), 0)
    assert transport.aborted
    pump.close()
    assert reader.closed.wait(5)


async def test_a_client_that_aiohttp_saw_leave_ends_the_stream_at_the_next_page(
    pump_pair: Any,
) -> None:
    pump, client, transport, reader = pump_pair()
    transport.closing = True  # EOF from the client: aiohttp closes its side
    with pytest.raises(StreamAborted, match="closed the connection"):
        await pump.send(pages(10, 10), 0)
    assert transport.aborted
    pump.close()
    assert reader.closed.wait(5)
    assert client.recv(100) == b""  # not a byte of the pages went out
    client.close()


async def test_a_cancelled_stream_stops_its_thread_and_closes_what_it_used(
    pump_pair: Any,
) -> None:
    pump, client, _, reader = pump_pair()
    started = threading.Event()
    sending = asyncio.ensure_future(pump.send(pages(*[1 << 20] * 64, started=started), 0))
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, started.wait, 5)  # 64 MiB: never all out
    assert not sending.done()
    sending.cancel()
    pump.close()  # what the handler does when the daemon stops
    assert reader.closed.wait(5)  # the thread's write failed at once, then it let go
    assert pump._outlet.fileno() == -1
    with pytest.raises(asyncio.CancelledError):
        await sending
    client.close()


async def test_a_read_that_fails_ends_the_stream_with_its_error_after_the_pages_before(
    pump_pair: Any,
) -> None:
    pump, client, transport, reader = pump_pair()

    def failing(_: Reader) -> Iterator[LogPage]:
        yield LogPage(b"x" * 10, 1, 1)
        raise StoreUnavailable("cannot read the database: disk I/O error")

    reading = asyncio.get_running_loop().run_in_executor(None, read_all, client)
    with pytest.raises(StoreUnavailable, match="disk I/O error"):
        await pump.send(failing, 0)
    pump.close()
    assert dechunk(await reading) == [b"x" * 10]
    assert reader.closed.wait(5)
    assert not transport.aborted  # the handler cuts the answer short (app._after_headers)
    client.close()


async def test_the_reader_reads_no_more_than_a_page_ahead_of_a_client_that_does_not_read(
    pump_pair: Any,
) -> None:
    pump, client, _, _ = pump_pair(timeout=0.5)
    yielded = 0

    def counted(_: Reader) -> Iterator[LogPage]:
        nonlocal yielded
        for seq in range(1, 17):
            yield LogPage(b"y" * (8 << 20), seq, 1)  # more than any socket buffer holds
            yielded += 1

    with pytest.raises(StreamAborted):
        await pump.send(counted, 0)
    pump.close()
    # The first page stuck in the socket, the second handed over, the third built and
    # waiting to be handed over, refused at the end: the generator is not resumed after
    # it, so it counts two (three with a queue of two pages).
    assert yielded == 2
    client.close()


async def test_the_readers_connection_is_let_go_only_after_the_page_it_is_reading(
    pump_pair: Any,
) -> None:
    pump, client, _, reader = pump_pair(timeout=0.3)

    def slow(reader: Reader) -> Iterator[LogPage]:
        yield LogPage(b"z" * (64 << 20), 1, 1)  # stuck: the client does not read
        reader.reading = True  # within ms of that; the write times out 0.3 s after
        time.sleep(1.0)
        reader.reading = False
        yield LogPage(b"z" * 10, 2, 1)

    with pytest.raises(StreamAborted):
        await pump.send(slow, 0)
    pump.close()
    assert reader.closed.wait(5)
    assert not reader.closed_while_reading
    client.close()


async def test_a_stream_ends_when_the_daemon_stops_its_threads(
    pump_pair: Any, threads: StreamThreads
) -> None:
    pump, client, transport, reader = pump_pair(timeout=0.3)
    started = threading.Event()
    sending = asyncio.ensure_future(pump.send(pages(*[1 << 20] * 64, started=started), 0))
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, started.wait, 5)
    threads.close()  # what StreamSlots.close does at shutdown, streams in flight
    with pytest.raises(StreamAborted):  # the client does not read: the write times out
        await asyncio.wait_for(sending, 5)
    assert transport.aborted
    pump.close()
    assert reader.closed.wait(5)
    client.close()


@pytest.mark.parametrize("pool", ["senders", "readers"])
async def test_a_stream_that_starts_once_the_threads_are_stopped_is_refused(
    pump_pair: Any, threads: StreamThreads, pool: str
) -> None:
    getattr(threads, pool).shutdown()
    pump, client, transport, reader = pump_pair()
    with pytest.raises(StreamAborted, match="shutting down"):
        await asyncio.wait_for(pump.send(pages(10), 0), 5)
    assert transport.aborted
    pump.close()
    assert reader.closed.is_set()
    client.close()


async def test_a_reader_that_never_runs_ends_its_stream_instead_of_hanging_it(
    pump_pair: Any, threads: StreamThreads
) -> None:
    pump, client, transport, reader = pump_pair()
    hold = threading.Event()
    busy = [threads.readers.submit(hold.wait, 10) for _ in range(2)]  # every reader
    sending = asyncio.ensure_future(pump.send(pages(10), 0))
    deadline = time.monotonic() + 5
    while not threads.readers._work_queue.qsize():  # the stream's reader, queued
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    threads.readers.shutdown(wait=False, cancel_futures=True)  # and is cancelled
    hold.set()
    with pytest.raises(StreamAborted, match="reader stopped"):
        await asyncio.wait_for(sending, 5)
    assert all(future.result() for future in busy)
    assert transport.aborted
    pump.close()
    assert reader.closed.wait(5)
    client.close()
