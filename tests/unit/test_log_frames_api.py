"""`GET /v1/runs/{id}/logs` through the real app: NDJSON, or log frames when asked for."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from api_server import ApiServer
from structlog.testing import capture_logs
from test_client import stream_runs

from ringjobs.client import Client, ConnectionLost, printable
from ringjobs.mediatypes import LOG_FRAMES, NDJSON
from ringjobs.models import JobSpec, Trigger
from ringjobs.store import store as store_module
from ringjobs.store.store import LogPage, next_page_lines

LINES = ["out 1", 'say "hi" \\n é', "err \x00 \x1b[31m", "capped"]
STREAMS = ["stdout", "stdout", "stderr", "system"]


@pytest.fixture
def server(short_tmp: Path) -> ApiServer:
    with ApiServer(short_tmp) as server:
        spec = JobSpec(namespace="ns", name="job", image="busybox")
        run_id = server.call(server.store.create_run(spec, 1, Trigger.MANUAL, None))
        rows = [
            (run_id, seq, 1, stream, 1_700_000_000_000_000 + seq, line)
            for seq, (stream, line) in enumerate(zip(STREAMS, LINES, strict=True), start=1)
        ]
        server.call(server.store.append_logs(rows, {run_id: (1, False)}))
        server.run_id = run_id  # type: ignore[attr-defined]
        yield server


def get(server: ApiServer, target: str, accept: str) -> tuple[str, bytes]:
    """The Content-Type and the body (chunked: de-chunked by hand) of one GET; a
    stream's answer varies with Accept, and says so."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(server.socket_path))
        head = f"GET {target} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n"
        sock.sendall(head.encode() + b"\r\n")
        data = b""
        while piece := sock.recv(65536):
            data += piece
    headers, _, body = data.partition(b"\r\n\r\n")
    if b" 200 " in headers.split(b"\r\n")[0]:
        assert b"\r\nVary: Accept" in headers
    else:
        kind = headers.lower().split(b"content-type:")[1].split(b"\r\n")[0].split(b";")[0].strip()
        return kind.decode(), body
    kind = next(
        line.split(b":", 1)[1].strip().decode()
        for line in headers.split(b"\r\n")
        if line.lower().startswith(b"content-type:")
    )
    chunks = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return kind, chunks
        chunks, body = chunks + body[:size], body[size + 2 :]


@pytest.mark.parametrize("timestamps", [False, True])
def test_the_cli_gets_log_frames_that_print_as_the_records_do(
    server: ApiServer, timestamps: bool
) -> None:
    client = Client(str(server.socket_path))
    run_id = server.run_id  # type: ignore[attr-defined]
    records = list(client.stream_logs(run_id))
    assert [r["line"] for r in records] == LINES
    expected = [(r["stream"], printable(r, timestamps)) for r in records]
    assert stream_runs(client.print_logs(run_id, timestamps=timestamps)) == stream_runs(expected)
    # Filters as for NDJSON: the last line of stdout.
    tail = client.print_logs(run_id, tail=1, stream="stdout", timestamps=timestamps)
    assert list(tail) == [expected[1]]


@pytest.mark.parametrize(
    ("accept", "kind"),
    [
        (LOG_FRAMES, LOG_FRAMES),
        (f"text/html, {LOG_FRAMES.upper()} ; q=0.9", LOG_FRAMES),
        (f"{LOG_FRAMES};q=0, {NDJSON}", NDJSON),
        (f"{LOG_FRAMES} ; Q=0.", NDJSON),
        (f"{NDJSON}, {LOG_FRAMES};q=0.5", NDJSON),  # NDJSON preferred
        (f"{LOG_FRAMES}, {NDJSON};q=0.5", LOG_FRAMES),  # what the CLI sends
        (f"{LOG_FRAMES};q=nonsense", NDJSON),
        ("application/json", NDJSON),
        ("*/*", NDJSON),
    ],
)
def test_log_frames_only_when_the_accept_header_names_them(
    server: ApiServer, accept: str, kind: str
) -> None:
    run_id = server.run_id  # type: ignore[attr-defined]
    answered, body = get(server, f"/v1/runs/{run_id}/logs?timestamps=1", accept)
    assert answered == kind
    if kind == NDJSON:
        assert body.count(b"\n") == len(LINES) and body.startswith(b'{"seq": 1,')
    else:
        stdout = "2023-11-14T22:13:20.000001Z out 1\n2023-11-14T22:13:20.000002Z say"
        stdout += ' "hi" \\n é\n'  # the two stdout lines in one frame
        assert body.startswith(b"1%08x" % len(stdout.encode()) + stdout.encode())


def test_errors_stay_problems_when_frames_are_asked_for(server: ApiServer) -> None:
    kind, body = get(server, "/v1/runs/999/logs", LOG_FRAMES)
    assert kind == "application/problem+json" and b"999" in body
    kind, body = get(server, f"/v1/runs/{server.run_id}/logs?tail=-1", LOG_FRAMES)  # type: ignore[attr-defined]
    assert kind == "application/problem+json" and b"tail" in body


def test_log_pages_aim_at_a_mebibyte_within_bounds() -> None:
    def after(lines: int, size: int) -> int:
        return next_page_lines(LogPage(b"x" * size, 1, lines))

    assert after(16, 16 * 4096) == 256  # 4 KiB lines: 1 MiB
    assert after(16, 16 * 100) == 4096  # short lines: no more than 4096 a read
    assert after(16, 16 * 2**20) == 16  # 1 MiB lines: no fewer than 16


def test_a_long_log_of_short_and_long_lines_reads_whole_in_pages_of_any_size(
    server: ApiServer,
) -> None:
    run_id = server.run_id  # type: ignore[attr-defined]
    sizes = [10] * 9000 + [5000] * 400 + [10] * 9000  # pages of 4096 lines, then fewer
    rows = [
        (run_id, seq, 1, ("stdout", "stderr")[seq // 1000 % 2], seq, f"{seq} " + "y" * size)
        for seq, size in enumerate(sizes, start=len(LINES) + 1)
    ]
    server.call(server.store.append_logs(rows, {run_id: (1, False)}))
    client = Client(str(server.socket_path))
    expected = [(r["stream"], printable(r, False)) for r in client.stream_logs(run_id)]
    assert len(expected) == len(LINES) + len(sizes)
    assert stream_runs(client.print_logs(run_id)) == stream_runs(expected)


def open_files() -> list[str]:
    """What this process (the daemon's app runs in it) has open, by path."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own, gone already
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sorted(names)


def test_a_stream_lets_go_of_its_socket_and_database_connection(server: ApiServer) -> None:
    # Each stream reads with a connection of its own and writes to a duplicate of its
    # client's socket, on a thread of its own: both closed once it ends (a stream cut
    # short: tests/unit/test_logpump.py).
    run_id = server.run_id  # type: ignore[attr-defined]
    client = Client(str(server.socket_path))
    list(client.print_logs(run_id))  # the first stream starts the pool's thread
    before = settled_files()
    assert str(server.store.path) in before  # the store's own connections
    for _ in range(5):
        first = ("stdout", f"{LINES[0]}\n{LINES[1]}\n".encode())
        assert stream_runs(client.print_logs(run_id))[0] == first
        assert len(list(client.stream_logs(run_id))) == len(LINES)
    deadline = time.monotonic() + 10
    while open_files() != before and time.monotonic() < deadline:
        time.sleep(0.05)  # the connections' ends are asynchronous
    assert open_files() == before


def settled_files() -> list[str]:
    """open_files once they stay the same for a moment."""
    files, deadline = open_files(), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if (now := open_files()) == files:
            break
        files = now
    return files


def exchange(sock: socket.socket, request: bytes, end: bytes) -> bytes:
    """Send `request` and read until the answer ends with `end` (or the socket does)."""
    sock.sendall(request)
    data = b""
    while not data.endswith(end) and (piece := sock.recv(65536)):
        data += piece
    return data


def test_the_connection_serves_the_next_request_after_a_log(server: ApiServer) -> None:
    # The log's bytes go past aiohttp's writer: the connection must be left as HTTP/1.1
    # keep-alive expects it.
    run_id = server.run_id  # type: ignore[attr-defined]
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(server.socket_path))
        for accept in (LOG_FRAMES, NDJSON):
            ask = f"GET /v1/runs/{run_id}/logs HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n"
            answer = exchange(sock, ask.encode(), b"\r\n0\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n0\r\n\r\n")
            assert LINES[0].encode() in answer
        ask = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert exchange(sock, ask, b"\n\n").startswith(b"HTTP/1.1 200")


def test_a_log_has_no_head(server: ApiServer) -> None:
    run_id = server.run_id  # type: ignore[attr-defined]
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(server.socket_path))
        ask = f"HEAD /v1/runs/{run_id}/logs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert exchange(sock, ask.encode(), b"\n\n").startswith(b"HTTP/1.1 405")


def test_a_read_that_fails_mid_stream_cuts_the_answer_short(
    server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The headers are out: a problem can no longer be the answer (it would land inside
    # the body). The connection is dropped, the CLI says so, the daemon logs why.
    run_id = server.run_id  # type: ignore[attr-defined]
    rows = [(run_id, seq, 1, "stdout", seq, "z" * 1000) for seq in range(5, 3000)]
    server.call(server.store.append_logs(rows, {run_id: (1, False)}))
    real = store_module._fetch_rows

    def failing(sql: str, params: Any, *rest: Any) -> Any:
        if "FROM log_lines" in sql and params.get("after", 0) > 100:
            raise sqlite3.OperationalError("disk I/O error")
        return real(sql, params, *rest)

    monkeypatch.setattr(store_module, "_fetch_rows", failing)
    printed = b""
    with capture_logs() as logs, pytest.raises(ConnectionLost, match=r"cut short|closed"):
        for _, data in Client(str(server.socket_path)).print_logs(run_id):
            printed += data
    assert printed.startswith(f"{LINES[0]}\n".encode()) and b"problem" not in printed
    assert len(printed) > 100 * 1000  # the pages before the failure
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["stream_failed"]
