"""ringjobs.client against a canned-answer HTTP server on a real unix socket.

`FakeDaemon` is also used by test_cli.py.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import socket
import socketserver
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from ringjobs.client import (
    _PIECE,
    BUSY_PAUSE,
    ApiError,
    Client,
    ClientError,
    ConnectionLost,
    DaemonUnreachable,
    Reconnector,
    _Response,
    default_socket_path,
    resolve_socket_path,
)
from ringjobs.mediatypes import LOG_FRAMES


@dataclass
class Answer:
    """What the fake daemon sends: a JSON body, or NDJSON `lines` sent chunk by chunk."""

    body: Any = None
    status: int = 200
    lines: list[Any] | None = None
    content_type: str = "application/json"
    raw: bytes | None = None
    # Called between two NDJSON lines (index of the next line), e.g. to wait on an event.
    between: Callable[[int], None] | None = None


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


Route = Callable[[Request], Answer]


@dataclass
class FakeDaemon:
    """HTTP/1.1 on a unix socket in a short /tmp path, answering from `routes`."""

    directory: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="rj-", dir="/tmp"))
    routes: dict[tuple[str, str], Answer | Route] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    server: socketserver.UnixStreamServer | None = None

    @property
    def socket_path(self) -> str:
        return os.path.join(self.directory, "d.sock")

    def route(self, method: str, path: str, answer: Answer | Route) -> None:
        self.routes[(method, path)] = answer

    def answer(self, request: Request) -> Answer:
        self.requests.append(request)
        route = self.routes.get((request.method, request.path))
        if route is None:
            problem = {"title": "not found", "status": 404, "detail": f"no route {request.path}"}
            return Answer(problem, status=404, content_type="application/problem+json")
        return route if isinstance(route, Answer) else route(request)

    def start(self) -> None:
        self.server = _Server(self.socket_path, _Handler)
        self.server.fake = self  # type: ignore[attr-defined]
        threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            os.unlink(self.socket_path)
            self.server = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a route that raises simulates a daemon dying mid-request


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the default uses client_address[0], which a unix socket does not have

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_DELETE = do_GET

    def _serve(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        query = dict(urllib.parse.parse_qsl(url.query))
        request = Request(
            self.command, urllib.parse.unquote(url.path), query, json.loads(raw) if raw else None
        )
        answer = self.server.fake.answer(request)  # type: ignore[attr-defined]
        if answer.lines is None:
            self._send_whole(answer)
        else:
            self._send_chunked(answer, answer.lines)

    def _send_whole(self, answer: Answer) -> None:
        data = answer.raw if answer.raw is not None else json.dumps(answer.body).encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_chunked(self, answer: Answer, lines: list[Any]) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index, line in enumerate(lines):
            if answer.between is not None and index:
                answer.between(index)
            data = json.dumps(line).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture
def fake(daemon: FakeDaemon) -> FakeDaemon:
    """The shared fake daemon (conftest), under the name these client tests use."""
    return daemon


def run(run_id: int = 7, status: str = "completed", **fields: Any) -> dict[str, Any]:
    """A Run object as the API returns it (docs/api.md)."""
    base: dict[str, Any] = {
        "id": run_id,
        "namespace": "prod",
        "job": "migrate",
        "revision": 2,
        "trigger": "apply",
        "status": status,
        "reason": None,
        "message": None,
        "exit_code": 0 if status == "completed" else None,
        "oom_killed": False,
        "attempt": 1,
        "created_at": "2024-05-01T10:00:00Z",
        "started_at": "2024-05-01T10:00:01Z",
        "finished_at": "2024-05-01T10:00:03.5Z",
    }
    return {**base, **fields}


# -- socket resolution -----------------------------------------------------------------


def test_socket_path_from_argument_then_environment_then_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RINGJOBS_SOCKET", "/tmp/env.sock")
    assert resolve_socket_path("/tmp/arg.sock") == "/tmp/arg.sock"
    assert resolve_socket_path() == "/tmp/env.sock"
    monkeypatch.delenv("RINGJOBS_SOCKET")
    assert resolve_socket_path() == default_socket_path()


def test_default_socket_path_follows_the_daemon_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_socket_path() == "/run/user/1000/ringjobs/ringjobs.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket_path() == "/tmp/ringjobs-1000/ringjobs/ringjobs.sock"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_socket_path() == "/run/ringjobs/ringjobs.sock"


# -- requests and answers --------------------------------------------------------------


def test_health_returns_the_parsed_answer(fake: FakeDaemon) -> None:
    fake.route("GET", "/v1/health", Answer({"status": "ok", "version": "0.1.0"}))
    assert Client(fake.socket_path).health() == {"status": "ok", "version": "0.1.0"}


def test_apply_sends_manifests_and_flags(fake: FakeDaemon) -> None:
    fake.route("POST", "/v1/apply", Answer({"dry_run": True, "jobs": []}))
    manifests = [{"source": "a.yaml", "content": "deployments: {}"}]
    Client(fake.socket_path).apply(manifests, dry_run=True)
    body = fake.requests[0].body
    assert body == {"manifests": manifests, "dry_run": True, "skip_workers": False}


def test_list_runs_sends_only_given_filters(fake: FakeDaemon) -> None:
    fake.route("GET", "/v1/runs", Answer({"runs": []}))
    Client(fake.socket_path).list_runs(namespace="prod", status="failed", limit=5)
    assert fake.requests[0].query == {"namespace": "prod", "status": "failed", "limit": "5"}


def test_path_parts_are_quoted(fake: FakeDaemon) -> None:
    fake.route("DELETE", "/v1/jobs/prod/a b", Answer({"deleted": "prod/a b"}))
    assert Client(fake.socket_path).delete_job("prod", "a b") == {"deleted": "prod/a b"}


def test_start_job_run_posts_an_empty_object(fake: FakeDaemon) -> None:
    fake.route("POST", "/v1/jobs/prod/migrate/runs", Answer(run(status="pending"), status=201))
    assert Client(fake.socket_path).start_job_run("prod", "migrate")["status"] == "pending"
    assert fake.requests[0].body == {}


def test_prune_sends_all_and_dry_run(fake: FakeDaemon) -> None:
    fake.route("POST", "/v1/namespaces/ci/prune", Answer({"namespace": "ci", "run_ids": [1]}))
    Client(fake.socket_path).prune_namespace("ci", all=True)
    assert fake.requests[0].body == {"all": True, "dry_run": False}


def test_wait_run_asks_with_a_timeout(fake: FakeDaemon) -> None:
    fake.route("GET", "/v1/runs/7/wait", Answer(run()))
    Client(fake.socket_path).wait_run(7, timeout=5)
    assert fake.requests[0].query == {"timeout": "5"}


# -- errors ----------------------------------------------------------------------------


def test_missing_socket_is_unreachable() -> None:
    client = Client("/tmp/ringjobs-test-no-such-dir/d.sock")
    with pytest.raises(DaemonUnreachable) as caught:
        client.health()
    assert caught.value.socket_path == "/tmp/ringjobs-test-no-such-dir/d.sock"


def test_refused_connection_is_unreachable(fake: FakeDaemon) -> None:
    fake.stop()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(fake.socket_path)  # a socket file nobody listens on, as after a crash
    try:
        with pytest.raises(DaemonUnreachable):
            Client(fake.socket_path).health()
    finally:
        stale.close()


def test_problem_details_become_api_error(fake: FakeDaemon) -> None:
    problem = {
        "title": "invalid manifest",
        "status": 422,
        "detail": "1 problem",
        "violations": [{"path": "deployments.x.image", "message": "required", "source": "a"}],
    }
    fake.route("POST", "/v1/apply", Answer(problem, status=422))
    with pytest.raises(ApiError) as caught:
        Client(fake.socket_path).apply([])
    assert caught.value.status == 422
    assert caught.value.violations[0]["path"] == "deployments.x.image"
    assert str(caught.value) == "invalid manifest: 1 problem"


def test_non_json_error_body_is_kept_as_detail(fake: FakeDaemon) -> None:
    fake.route("GET", "/v1/health", Answer(status=500, raw=b"boom", content_type="text/plain"))
    with pytest.raises(ApiError) as caught:
        Client(fake.socket_path).health()
    assert caught.value.problem == {"title": "HTTP 500", "status": 500, "detail": "boom"}


def test_invalid_json_is_a_client_error(fake: FakeDaemon) -> None:
    fake.route("GET", "/v1/health", Answer(raw=b"{nope"))
    with pytest.raises(ClientError, match="invalid JSON"):
        Client(fake.socket_path).health()


def test_truncated_answer_is_connection_lost(fake: FakeDaemon) -> None:
    fake.route("GET", "/v1/runs/7", lambda _: _cut_short())
    with pytest.raises(ConnectionLost):
        Client(fake.socket_path).get_run(7)


def _cut_short() -> Answer:
    raise ConnectionAbortedError  # the handler dies: the server closes without answering


# -- streams ---------------------------------------------------------------------------


def test_stream_logs_yields_records_as_they_arrive(fake: FakeDaemon) -> None:
    release = threading.Event()
    records = [{"seq": 1, "stream": "stdout", "line": "a"}, {"seq": 2, "stream": "stderr"}]

    def hold(_: int) -> None:
        assert release.wait(10), "the client never read the first line"

    fake.route("GET", "/v1/runs/7/logs", Answer(lines=records, between=hold))
    stream = Client(fake.socket_path).stream_logs(7, follow=True, stream="stdout")
    assert next(stream) == records[0]  # arrived while the server still holds line 2
    release.set()
    assert list(stream) == records[1:]
    assert fake.requests[0].query == {"follow": "1", "stream": "stdout"}


def test_stream_events_reads_chunked_ndjson(fake: FakeDaemon) -> None:
    events = [{"id": n, "type": "created"} for n in range(1, 200)]
    fake.route("GET", "/v1/runs/7/events", Answer(lines=events))
    assert list(Client(fake.socket_path).stream_events(7)) == events


def test_stream_lines_across_read_boundaries_come_back_whole(fake: FakeDaemon) -> None:
    # One body of ~2.5 MB: 64 KiB reads cut lines anywhere, some lines span several.
    records = [
        {"seq": n, "stream": "stdout", "line": f"{n} " + "x" * (n * 37 % 100_000)}
        for n in range(1, 400)
    ]
    body = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    answer = Answer(raw=body, content_type="application/x-ndjson")
    fake.route("GET", "/v1/runs/7/logs", answer)
    assert list(Client(fake.socket_path).stream_logs(7)) == records


def framed(stream: int, data: bytes) -> bytes:
    return b"%d%08x" % (stream, len(data)) + data


def stream_runs(pieces: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Consecutive pieces of one stream joined: print_logs may hand out a run of lines
    in several pieces, never out of order."""
    runs: list[tuple[str, bytes]] = []
    for stream, data in pieces:
        if runs and runs[-1][0] == stream:
            runs[-1] = (stream, runs[-1][1] + data)
        else:
            runs.append((stream, data))
    return runs


def test_print_logs_reads_log_frames_across_read_boundaries(fake: FakeDaemon) -> None:
    # ~2 MB: 64 KiB reads cut frames (and their heads) anywhere; a frame may hold any
    # byte, a newline or a NUL included: its length says where it ends.
    lines = [
        (
            "stdout stderr system".split()[n // 7 % 3],
            b"%d \x00\n\xc3\xa9 " % n + b"x" * (n * 37 % 10_000) + b"\n",
        )
        for n in range(1, 400)
    ]
    codes = {"system": 0, "stdout": 1, "stderr": 2}
    runs = stream_runs(lines)  # a frame for each, as the daemon sends them
    body = b"".join(framed(codes[stream], data) for stream, data in runs)
    fake.route("GET", "/v1/runs/7/logs", Answer(raw=body, content_type=LOG_FRAMES))
    pieces = list(Client(fake.socket_path).print_logs(7, tail=5, timestamps=True))
    assert stream_runs(pieces) == runs
    assert len(pieces) > len(runs)  # frames came in several pieces, each handed out
    assert fake.requests[0].query == {"tail": "5", "timestamps": "1"}


def test_print_logs_prints_ndjson_records_the_same_way(fake: FakeDaemon) -> None:
    records = [
        {"seq": 1, "stream": "stdout", "time": "2024-05-01T10:00:01Z", "line": "out"},
        {"seq": 2, "stream": "system", "time": "2024-05-01T10:00:02Z", "line": "capped"},
        {
            "seq": 3,
            "stream": "stderr",
            "time": "2024-05-01T10:00:03Z",
            "line": "é",
            "completion": 2,
        },
    ]
    fake.route("GET", "/v1/runs/7/logs", Answer(lines=records))  # a daemon without frames
    assert list(Client(fake.socket_path).print_logs(7, timestamps=True)) == [
        ("stdout", b"2024-05-01T10:00:01Z out\n"),
        ("system", b"2024-05-01T10:00:02Z [ringjobs] capped\n"),
        ("stderr", "2024-05-01T10:00:03Z [2] é\n".encode()),
    ]


@pytest.mark.parametrize(
    ("body", "error", "message", "printed"),
    [
        (framed(1, b"one\n") + b"7000000", ConnectionLost, "cut short", b"one\n"),
        (framed(1, b"one\n")[:-1], ConnectionLost, "cut short", b"one"),
        (b"900000004two\n", ClientError, "invalid log frame", b""),
        (b"10000000Xtwo\n", ClientError, "invalid log frame", b""),
    ],
)
def test_print_logs_refuses_broken_frames(
    fake: FakeDaemon, body: bytes, error: type[Exception], message: str, printed: bytes
) -> None:
    fake.route("GET", "/v1/runs/7/logs", Answer(raw=body, content_type=LOG_FRAMES))
    read = b""
    with pytest.raises(error, match=message):
        for _, data in Client(fake.socket_path).print_logs(7):
            read += data
    assert read == printed  # handed out as it came: a line cut short is printed cut short


@pytest.mark.parametrize("size", [1, 5, 9, 10])
def test_log_frames_are_read_whatever_pieces_they_come_in(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    frames = [(1, b"one\n"), (2, b""), (0, b"[ringjobs] x\n"), (1, b"two\n\xc3"), (1, b"\xa9\n")]
    body = b"".join(framed(stream, data) for stream, data in frames)
    expected = [("stdout", b"one\n"), ("system", b"[ringjobs] x\n"), ("stdout", b"two\n\xc3\xa9\n")]
    for tail, cut in ((b"", False), (b"1000", True), (framed(2, b"e\n")[:-1], True)):
        data = body + tail
        pieces = iter([data[at : at + size] for at in range(0, len(data), size)])
        response = object.__new__(_Response)  # its parser alone, fed `size` bytes at a time
        response._path = "/run/ringjobs.sock"
        feed = functools.partial(next, pieces, b"")
        monkeypatch.setattr(response, "_piece", feed, raising=False)
        read: list[tuple[str, bytes]] = []
        with pytest.raises(ConnectionLost, match="cut short") if cut else contextlib.nullcontext():
            read.extend(response.frames())
        assert stream_runs(read) == expected + ([("stderr", b"e")] if tail[:1] == b"2" else [])


def test_stream_error_raises_api_error(fake: FakeDaemon) -> None:
    with pytest.raises(ApiError) as caught:
        list(Client(fake.socket_path).stream_logs(99))
    assert caught.value.status == 404


# -- waiting ---------------------------------------------------------------------------


def test_wait_until_terminal_asks_again_until_terminal(fake: FakeDaemon) -> None:
    answers = iter([run(status="running"), run(status="pending"), run(status="failed")])
    fake.route("GET", "/v1/runs/7/wait", lambda _: Answer(next(answers)))
    assert Client(fake.socket_path).wait_until_terminal(7)["status"] == "failed"
    assert len(fake.requests) == 3


def test_wait_survives_a_daemon_restart(fake: FakeDaemon) -> None:
    answer = Answer(run(status="completed"))
    fake.stop()
    notices: list[ClientError] = []

    def restart(_: float) -> None:
        fake.start()
        fake.route("GET", "/v1/runs/7/wait", answer)

    client = Client(fake.socket_path, sleep=restart)
    assert client.wait_until_terminal(7, on_reconnect=notices.append)["status"] == "completed"
    assert len(notices) == 1
    assert isinstance(notices[0], DaemonUnreachable)


def test_wait_pauses_and_asks_again_while_the_daemon_is_busy(fake: FakeDaemon) -> None:
    busy = {"title": "too many requests", "status": 429, "detail": "limits.max_log_streams"}
    answers = iter(
        [
            Answer(busy, status=429, content_type="application/problem+json"),
            Answer(busy, status=429, content_type="application/problem+json"),
            Answer(run(status="completed")),
        ]
    )
    fake.route("GET", "/v1/runs/7/wait", lambda _: next(answers))
    pauses: list[float] = []
    notices: list[ClientError] = []
    client = Client(fake.socket_path, sleep=pauses.append)
    assert client.wait_until_terminal(7, on_reconnect=notices.append)["status"] == "completed"
    assert pauses == [BUSY_PAUSE, BUSY_PAUSE] and BUSY_PAUSE >= 1
    assert notices == []  # busy is not an outage: no "reconnecting" notice


def test_wait_gives_up_after_the_retry_window() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    path = "/tmp/ringjobs-test-no-such-dir/d.sock"
    client = Client(path, retry_for=60, sleep=sleep, clock=lambda: now[0])
    with pytest.raises(DaemonUnreachable):
        client.wait_until_terminal(7)
    assert now[0] == pytest.approx(60)


def test_reconnector_does_not_retry_real_errors() -> None:
    reconnector = Reconnector(sleep=lambda _: None)
    assert not reconnector.pause(ApiError(404, {"title": "not found"}))
    assert reconnector.pause(ApiError(503, {"title": "database unavailable"}))


def chunked_response(body: bytes) -> _Response:
    """A chunked answer with `body` after its headers, read from a real socket."""
    ours, theirs = socket.socketpair()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n"

    def write() -> None:
        with theirs:
            theirs.sendall(head + body)

    threading.Thread(target=write, daemon=True).start()
    return _Response(ours, "/run/ringjobs.sock")


def test_large_chunks_are_read_a_piece_at_a_time() -> None:
    # A daemon sends 1 MiB chunks: read whole, each was a fresh 1 MiB allocation.
    chunks = [bytes([65 + n]) * size for n, size in enumerate([300_000, 1, 65_536, 70_000])]
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    response = chunked_response(body)
    pieces = []
    while piece := response._piece():
        pieces.append(piece)
    response.close()
    assert b"".join(pieces) == b"".join(chunks)
    assert max(map(len, pieces)) == 65_536 and len(pieces) == 5 + 1 + 1 + 2


@pytest.mark.parametrize("cut", [10, 200_000, 300_000 + 1])
def test_a_chunk_cut_short_is_connection_lost(cut: int) -> None:
    body = (b"%x\r\n" % 300_000 + b"x" * 300_000 + b"\r\n0\r\n\r\n")[: len(b"493e0\r\n") + cut]
    response = chunked_response(body)
    read = b""
    with pytest.raises(ConnectionLost, match=r"cut short|closed the connection"):
        while piece := response._piece():
            read += piece
    response.close()
    assert read == b"x" * (cut // _PIECE * _PIECE if cut < 300_000 else 300_000)
