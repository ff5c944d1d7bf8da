"""Client of the daemon's HTTP/JSON API over its unix socket (docs/api.md).

Used by the CLI on every call, so it imports the standard library only. It speaks
a deliberately small subset of HTTP/1.1 on a raw socket (one request per
connection, `Content-Length` or chunked bodies) instead of using `http.client`:
that module drags in `email` and `ssl` and costs ~25 ms of start-up per command.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping

from ringjobs.mediatypes import FRAME_HEAD, FRAME_STREAMS, LOG_FRAMES, NDJSON

# `typing` costs ~4 ms of start-up; mypy honours a plain TYPE_CHECKING constant.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    JSON: TypeAlias = dict[str, Any]
    Query: TypeAlias = Mapping[str, str | int | bool | None]

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
DEFAULT_TIMEOUT = 120.0
WAIT_SLICE = 30
RETRY_FOR = 60.0
BUSY_PAUSE = 2.0  # after a 429 (every stream/wait slot taken): ask again this much later
_HEX = frozenset(b"0123456789abcdef")
# The most of a body read at once. A daemon sends 1 MiB chunks; read whole, each was a
# fresh 1 MiB that glibc took from the kernel and gave back: 0.3 s of system time per
# 256 MiB of `logs RUN`, more than the CLI's own work.
_PIECE = 65536


def default_socket_path() -> str:
    """The daemon's default socket (SPEC 11); mirrors config.default_socket_path."""
    if os.geteuid() == 0:
        return "/run/ringjobs/ringjobs.sock"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/ringjobs-{os.geteuid()}"
    return os.path.join(runtime_dir, "ringjobs", "ringjobs.sock")


def resolve_socket_path(socket_path: str | os.PathLike[str] | None = None) -> str:
    """`socket_path` if given, else `$RINGJOBS_SOCKET`, else the default path."""
    if socket_path:
        return os.fspath(socket_path)
    return os.environ.get("RINGJOBS_SOCKET") or default_socket_path()


class ClientError(Exception):
    """Base of the client's errors; `str()` is a message meant for the user."""


class DaemonUnreachable(ClientError):
    """Nothing listens on the socket: the file is missing or the connection is refused."""

    def __init__(self, socket_path: str) -> None:
        super().__init__(f"cannot reach the ringjobs daemon at {socket_path} (is it running?)")
        self.socket_path = socket_path


class ConnectionLost(ClientError):
    """The daemon went away in the middle of a request (for example a restart)."""

    def __init__(self, socket_path: str, cause: str) -> None:
        super().__init__(f"lost the connection to the ringjobs daemon at {socket_path}: {cause}")
        self.socket_path = socket_path


class SocketPermissionDenied(ClientError):
    """The socket exists but this user may not connect to it."""

    def __init__(self, socket_path: str) -> None:
        super().__init__(
            f"permission denied on {socket_path}; join the socket's group "
            "(socket_group in the daemon config) or run as root"
        )
        self.socket_path = socket_path


class ApiError(ClientError):
    """The daemon answered a non-2xx status; `problem` is its problem+json body."""

    def __init__(self, status: int, problem: JSON) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"{self.title}: {self.detail}" if self.detail else self.title)

    @property
    def title(self) -> str:
        return str(self.problem.get("title") or f"HTTP {self.status}")

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or "")

    @property
    def violations(self) -> list[JSON]:
        return list(self.problem.get("violations") or [])


def is_transient(error: Exception) -> bool:
    """True for errors a daemon restart causes; worth retrying for a while."""
    if isinstance(error, ApiError):
        return error.status == 503
    return isinstance(error, DaemonUnreachable | ConnectionLost)


class Reconnector:
    """Backoff across a daemon restart: allows retries for `retry_for` seconds per outage.

    `pause(error)` sleeps and returns True while the outage is young enough, else
    returns False (the caller re-raises). `reset()` after any success.
    `on_reconnect(error)` is called once when an outage starts.
    """

    def __init__(
        self,
        retry_for: float = RETRY_FOR,
        on_reconnect: Callable[[ClientError], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retry_for = retry_for
        self.on_reconnect = on_reconnect
        self.sleep = sleep
        self.clock = clock
        self._since: float | None = None
        self._delay = 0.1

    def pause(self, error: ClientError) -> bool:
        if not is_transient(error):
            return False
        now = self.clock()
        if self._since is None:
            self._since, self._delay = now, 0.1
            if self.on_reconnect is not None:
                self.on_reconnect(error)
        remaining = self._since + self.retry_for - now
        if remaining <= 0:
            return False
        self.sleep(min(self._delay, remaining))
        self._delay = min(self._delay * 2, 2.0)
        return True

    def reset(self) -> None:
        self._since = None


class _Response:
    """One HTTP/1.1 response read from a socket; the connection ends with it."""

    def __init__(self, sock: socket.socket, socket_path: str) -> None:
        self._sock = sock
        self._path = socket_path
        self._file: io.BufferedReader = sock.makefile("rb")
        self.status = self._read_status()
        self.headers = self._read_headers()
        length = self.headers.get("content-length")
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self._remaining = None if self._chunked or length is None else int(length)
        self._chunk_left = 0  # bytes of the current chunk still to read
        self._chunk_read = False  # whether a chunk's bytes came (then its CRLF is due)
        self._buffer = bytearray()  # body bytes read but not yet returned, from _at on
        self._at = 0
        self._done = False

    def _line(self) -> bytes:
        line = self._file.readline(65537)
        if not line.endswith(b"\n"):
            raise ConnectionLost(self._path, "the daemon closed the connection")
        return line

    def _read_status(self) -> int:
        parts = self._line().split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ClientError(f"the daemon at {self._path} does not speak HTTP")
        return int(parts[1])

    def _read_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        while (line := self._line()) not in (b"\r\n", b"\n"):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return headers

    def _piece(self) -> bytes:
        """The next bytes of the body as they arrive; b"" at its end."""
        if self._done:
            return b""
        if self._chunked:
            return self._chunk()
        if self._remaining is None:
            data = self._file.read1(_PIECE)
            self._done = not data
            return data
        data = self._file.read1(min(self._remaining, _PIECE)) if self._remaining else b""
        if self._remaining and not data:
            raise ConnectionLost(self._path, "the answer was cut short")
        self._remaining -= len(data)
        self._done = self._remaining == 0
        return data

    def _chunk(self) -> bytes:
        """The next piece of the current chunk, or of the next one; b"" at the end."""
        if not self._chunk_left:
            if self._chunk_read:
                self._line()  # the CRLF after the bytes of the chunk before
            size = int(self._line().split(b";")[0], 16)
            if size == 0:
                while self._line() not in (b"\r\n", b"\n"):
                    pass  # trailers: none expected, skipped
                self._done = True
                return b""
            self._chunk_left = size
        want = min(self._chunk_left, _PIECE)
        data = self._file.read(want)
        if len(data) < want:
            raise ConnectionLost(self._path, "the answer was cut short")
        self._chunk_left -= want
        self._chunk_read = True
        return data

    def readline(self) -> bytes:
        """One line of the body including its newline; b"" at the end of the body."""
        try:
            return self._readline()
        except OSError as exc:
            raise ConnectionLost(self._path, exc.strerror or str(exc)) from None

    def frames(self) -> Iterator[tuple[str, bytes]]:
        """Log frames (ringjobs.mediatypes): (stream, bytes) as they arrive, in order. A
        frame's bytes may come in several pieces: each is handed out as it comes."""
        head, stream, left = bytearray(), "", 0  # left: bytes of the frame still to come
        while True:
            try:
                piece = self._piece()
            except OSError as exc:
                raise ConnectionLost(self._path, exc.strerror or str(exc)) from None
            if not piece:
                break
            at = 0
            while at < len(piece):
                if left:
                    take = min(left, len(piece) - at)
                    yield stream, piece[at : at + take]  # all of it: the piece, not a copy
                    at, left = at + take, left - take
                    continue
                need = FRAME_HEAD - len(head)
                head += piece[at : at + need]
                at += need
                if len(head) == FRAME_HEAD:
                    stream, left = self._frame_head(head)
                    head.clear()
        if head or left:
            raise ConnectionLost(self._path, "the answer was cut short")

    def _frame_head(self, head: bytearray) -> tuple[str, int]:
        """A frame's stream and length, from its stream digit and 8 hex digits."""
        stream, size = FRAME_STREAMS.get(head[0] - 48), head[1:]
        if stream is None or not _HEX.issuperset(size):
            raise ClientError(f"the daemon at {self._path} sent an invalid log frame")
        return stream, int(size, 16)

    def read(self) -> bytes:
        """The rest of the body."""
        try:
            return self._read()
        except OSError as exc:
            raise ConnectionLost(self._path, exc.strerror or str(exc)) from None

    def _readline(self) -> bytes:
        # An offset into one buffer: cutting each line off the front copied the rest of a
        # 64 KiB piece once per line (a third of `logs RUN`'s CPU).
        while (end := self._buffer.find(b"\n", self._at)) < 0:
            piece = self._piece()
            if not piece:
                return self._take(len(self._buffer))
            del self._buffer[: self._at]  # what is left of the last piece: under a line
            self._at = 0
            self._buffer += piece
        return self._take(end + 1)

    def _take(self, end: int) -> bytes:
        data = bytes(self._buffer[self._at : end])
        self._at = end
        return data

    def _read(self) -> bytes:
        pieces = [self._take(len(self._buffer))]
        while piece := self._piece():
            pieces.append(piece)
        return b"".join(pieces)

    def close(self) -> None:
        self._file.close()
        self._sock.close()


class Client:
    """Typed access to every `/v1` endpoint. One request per connection.

    Methods return the parsed JSON answer; `stream_logs` and `stream_events` yield
    one record per NDJSON line as it arrives. Raises `ApiError` for non-2xx answers
    and `DaemonUnreachable` when nothing listens on the socket.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry_for: float = RETRY_FOR,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket_path = resolve_socket_path(socket_path)
        self.timeout = timeout
        self.retry_for = retry_for
        self.sleep = sleep
        self.clock = clock

    def reconnector(self, on_reconnect: Callable[[ClientError], None] | None = None) -> Reconnector:
        """A `Reconnector` with this client's retry window, sleep and clock."""
        return Reconnector(self.retry_for, on_reconnect, self.sleep, self.clock)

    # -- endpoints ---------------------------------------------------------------------

    def health(self) -> JSON:
        return self._json("GET", "/v1/health")

    def apply(
        self, manifests: list[JSON], dry_run: bool = False, skip_workers: bool = False
    ) -> JSON:
        body = {"manifests": manifests, "dry_run": dry_run, "skip_workers": skip_workers}
        return self._json("POST", "/v1/apply", body=body)

    def list_jobs(self, namespace: str | None = None) -> JSON:
        return self._json("GET", "/v1/jobs", query={"namespace": namespace})

    def get_job(self, namespace: str, name: str) -> JSON:
        return self._json("GET", _job_path(namespace, name))

    def delete_job(self, namespace: str, name: str) -> JSON:
        return self._json("DELETE", _job_path(namespace, name))

    def start_job_run(self, namespace: str, name: str, overrides: JSON | None = None) -> JSON:
        body = {"overrides": overrides} if overrides else {}
        return self._json("POST", _job_path(namespace, name) + "/runs", body=body)

    def rerun(self, run_id: int, overrides: JSON | None = None) -> JSON:
        body = {"overrides": overrides} if overrides else {}
        return self._json("POST", f"/v1/runs/{int(run_id)}/rerun", body=body)

    def exec_run(self, request: JSON) -> JSON:
        return self._json("POST", "/v1/exec", body=request)

    def list_runs(
        self,
        namespace: str | None = None,
        job: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        before: int | None = None,
    ) -> JSON:
        query = {"namespace": namespace, "job": job, "status": status}
        return self._json("GET", "/v1/runs", query={**query, "limit": limit, "before": before})

    def get_run(self, run_id: int) -> JSON:
        return self._json("GET", f"/v1/runs/{int(run_id)}")

    def wait_run(self, run_id: int, timeout: int = WAIT_SLICE) -> JSON:
        """The run once terminal, or as it is after `timeout` seconds (then ask again)."""
        path = f"/v1/runs/{int(run_id)}/wait"
        return self._json("GET", path, query={"timeout": timeout}, timeout=timeout + 30)

    def stream_logs(
        self,
        run_id: int,
        follow: bool = False,
        tail: int | None = None,
        since: str | None = None,
        stream: str | None = None,
    ) -> Iterator[JSON]:
        query = {"follow": follow, "tail": tail, "since": since, "stream": stream}
        return self._ndjson(f"/v1/runs/{int(run_id)}/logs", query, follow)

    def print_logs(
        self,
        run_id: int,
        tail: int | None = None,
        since: str | None = None,
        stream: str | None = None,
        timestamps: bool = False,
    ) -> Iterator[tuple[str, bytes]]:
        """A run's stored lines as `ringjobs logs` prints them: (stream, bytes) pieces in
        order, of one line, several, or part of one.

        Asks for log frames: the daemon builds the lines and nothing is escaped or
        parsed (NDJSON came at a third of the speed, on a 2-core host). A daemon that
        answers NDJSON instead has its records printed the same way.
        """
        query = {"tail": tail, "since": since, "stream": stream, "timestamps": timestamps}
        path = f"/v1/runs/{int(run_id)}/logs"
        accept = f"{LOG_FRAMES}, {NDJSON};q=0.5"
        response = self._request("GET", path, query, None, self.timeout, accept)
        try:
            if response.headers.get("content-type", "").startswith(LOG_FRAMES):
                yield from response.frames()
                return
            for record in self._records(response):
                yield str(record.get("stream")), printable(record, timestamps)
        finally:
            response.close()

    def stream_events(self, run_id: int, follow: bool = False) -> Iterator[JSON]:
        return self._ndjson(f"/v1/runs/{int(run_id)}/events", {"follow": follow}, follow)

    def cancel_run(self, run_id: int) -> JSON:
        return self._json("POST", f"/v1/runs/{int(run_id)}/cancel", body={})

    def list_audit(
        self, run: int | None = None, limit: int | None = None, before: int | None = None
    ) -> JSON:
        return self._json("GET", "/v1/audit", query={"run": run, "limit": limit, "before": before})

    def list_namespaces(self) -> JSON:
        return self._json("GET", "/v1/namespaces")

    def prune_namespace(
        self,
        namespace: str,
        all: bool = False,
        dry_run: bool = False,
        older_than: str | None = None,
        keep_last: int | None = None,
        statuses: list[str] | None = None,
    ) -> JSON:
        path = f"/v1/namespaces/{_quote(namespace)}/prune"
        body: JSON = {"all": all, "dry_run": dry_run}
        if older_than:
            body["older_than"] = older_than
        if keep_last is not None:
            body["keep_last"] = keep_last
        if statuses:
            body["status"] = statuses
        return self._json("POST", path, body=body)

    def create_secret(self, namespace: str, name: str, value: str, overwrite: bool) -> JSON:
        body = {"name": name, "value": value, "overwrite": overwrite}
        return self._json("POST", f"/v1/namespaces/{_quote(namespace)}/secrets", body=body)

    def list_secrets(self, namespace: str | None = None) -> JSON:
        return self._json("GET", "/v1/secrets", query={"namespace": namespace})

    def delete_secret(self, namespace: str, name: str, force: bool = False) -> JSON:
        path = f"/v1/namespaces/{_quote(namespace)}/secrets/{_quote(name)}"
        return self._json("DELETE", path, query={"force": force})

    def list_schedules(self, namespace: str | None = None) -> JSON:
        return self._json("GET", "/v1/schedules", query={"namespace": namespace})

    def suspend_job(self, namespace: str, name: str) -> JSON:
        return self._json("POST", _job_path(namespace, name) + "/suspend", body={})

    def resume_job(self, namespace: str, name: str) -> JSON:
        return self._json("POST", _job_path(namespace, name) + "/resume", body={})

    def list_fires(self, namespace: str, name: str, limit: int | None = None) -> JSON:
        return self._json("GET", _job_path(namespace, name) + "/fires", query={"limit": limit})

    def wait_until_terminal(
        self, run_id: int, on_reconnect: Callable[[ClientError], None] | None = None
    ) -> JSON:
        """Block until the run is terminal; survives a daemon restart of up to `retry_for` s.

        A 429 (the daemon's stream and wait slots are all taken) is asked again after
        BUSY_PAUSE, for as long as it lasts: waiting is what the caller asked for.

        `on_reconnect(error)` is called when the daemon goes away and retries begin.
        """
        reconnector = self.reconnector(on_reconnect)
        while True:
            try:
                run = self.wait_run(run_id, timeout=WAIT_SLICE)
            except ApiError as exc:
                if exc.status == 429:  # busy, not broken: the run is still worth waiting for
                    self.sleep(BUSY_PAUSE)
                    continue
                if not reconnector.pause(exc):
                    raise
                continue
            except ClientError as exc:
                if not reconnector.pause(exc):
                    raise
                continue
            reconnector.reset()
            if run.get("status") in TERMINAL_STATUSES:
                return run

    # -- transport ---------------------------------------------------------------------

    def _json(
        self,
        method: str,
        path: str,
        query: Query | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> JSON:
        response = self._request(method, path, query, body, timeout or self.timeout)
        try:
            data = response.read()
        finally:
            response.close()
        return self._decode(data)

    def _ndjson(self, path: str, query: Query, follow: bool) -> Iterator[JSON]:
        # A follow may stay silent for hours while the job is quiet: no read timeout.
        response = self._request("GET", path, query, None, None if follow else self.timeout)
        try:
            yield from self._records(response)
        finally:
            response.close()

    def _records(self, response: _Response) -> Iterator[JSON]:
        """An NDJSON body's records."""
        while line := response.readline():
            if line.strip():
                yield self._decode(line)

    def _decode(self, data: bytes) -> JSON:
        try:
            value = json.loads(data)
        except ValueError:
            raise ClientError(f"the daemon at {self.socket_path} sent invalid JSON") from None
        if not isinstance(value, dict):
            raise ClientError(f"the daemon at {self.socket_path} sent unexpected JSON")
        return value

    def _request(
        self,
        method: str,
        path: str,
        query: Query | None,
        body: Any,
        timeout: float | None,
        accept: str = "application/json",
    ) -> _Response:
        sock = self._connect(timeout)
        try:
            sock.sendall(_encode_request(method, path + _query_string(query), body, accept))
            response = _Response(sock, self.socket_path)
        except TimeoutError:
            sock.close()
            raise ClientError(f"the daemon at {self.socket_path} did not answer in time") from None
        except OSError as exc:
            sock.close()
            raise ConnectionLost(self.socket_path, exc.strerror or str(exc)) from None
        except BaseException:
            sock.close()
            raise
        if not 200 <= response.status < 300:
            raise self._api_error(response)
        return response

    def _connect(self, timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.socket_path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            sock.close()
            raise DaemonUnreachable(self.socket_path) from None
        except PermissionError:
            sock.close()
            raise SocketPermissionDenied(self.socket_path) from None
        except OSError as exc:
            sock.close()
            raise ClientError(f"cannot connect to {self.socket_path}: {exc}") from None
        return sock

    def _api_error(self, response: _Response) -> ApiError:
        try:
            data = response.read()
        except ClientError:
            data = b""
        finally:
            response.close()
        try:
            problem = json.loads(data)
        except ValueError:
            problem = None
        if not isinstance(problem, dict):
            text = data.decode("utf-8", "replace").strip()
            problem = {"title": f"HTTP {response.status}", "status": response.status}
            problem["detail"] = text[:500]
        return ApiError(response.status, problem)


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _job_path(namespace: str, name: str) -> str:
    return f"/v1/jobs/{_quote(namespace)}/{_quote(name)}"


def _query_string(query: Query | None) -> str:
    pairs = []
    for key, value in (query or {}).items():
        if value is None or value is False:
            continue
        pairs.append((key, "1" if value is True else str(value)))
    return "?" + urllib.parse.urlencode(pairs) if pairs else ""


def _encode_request(method: str, target: str, body: Any, accept: str) -> bytes:
    payload = b"" if body is None else json.dumps(body).encode()
    head = [
        f"{method} {target} HTTP/1.1",
        "Host: localhost",
        "User-Agent: ringjobs-cli",
        f"Accept: {accept}",
        "Connection: close",
    ]
    if body is not None or method in ("POST", "PUT", "PATCH"):
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


def printable(record: JSON, timestamps: bool) -> bytes:
    """A log record as `ringjobs logs` prints it (the daemon's log frames hold the same):
    its time if asked, a fan-out completion's index, `[ringjobs] ` for ringjobs' own."""
    stream = record.get("stream")
    prefix = f"{record.get('time', '')} " if timestamps else ""
    if record.get("completion") is not None:  # a line of one completion of a fan-out run
        prefix += f"[{record['completion']}] "
    if stream not in ("stdout", "stderr"):
        prefix += "[ringjobs] "
    return _encode(f"{prefix}{record.get('line', '')}\n")


def _encode(text: str) -> bytes:
    # The daemon may carry undecodable container bytes as surrogate escapes.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")
