"""Who is calling, what they may change, and bounds on what one caller can make us hold.

The socket is the trust boundary (writing to it is close to root on the host), so each
mutating request is checked against `mutating_uids` and recorded with the caller's uid
and pid from SO_PEERCRED. Read-only requests get a time limit; streams get a slot out
of a fixed number and a write timeout, so a slow or greedy client cannot pin the
daemon's memory or file descriptors.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from ringjobs.config import Config
from ringjobs.exceptions import Forbidden, RequestTimeout, TooManyRequests
from ringjobs.store import Store
from ringjobs.store.store import RequestAudit

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AUDIT_KEY = web.RequestKey("audit", RequestAudit)  # for handlers that create a run

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Handlers that bound their own duration (a wait is capped; streams end with the run).
_SELF_BOUNDED = frozenset({"wait_run", "run_logs", "run_events"})
_NOT_RUN_SCOPED = frozenset({"delete_job", "prune_namespace"})  # their runs stay or go
_AUDIT_BODY_LIMIT = 1024 * 1024  # larger answers are not parsed for the audit summary


@dataclass(frozen=True)
class Caller:
    """The peer of a unix socket connection, as the kernel reports it."""

    uid: int
    pid: int
    gid: int


def caller_of(request: web.Request) -> Caller | None:
    """SO_PEERCRED of the request's connection; None on anything but a unix socket."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return Caller(uid=uid, pid=pid, gid=gid)


def _handler_name(request: web.Request) -> str | None:
    """Our handler's name for a matched route; None for 404/405 answers."""
    route = request.match_info.route
    if route.resource is None:
        return None
    return getattr(route.handler, "__name__", None)


def access_middleware(config: Config, store: Store) -> Any:
    """Refuse changes from uids outside `mutating_uids`; record every change with its caller."""
    allowed = None
    if config.mutating_uids is not None:
        allowed = frozenset(config.mutating_uids) | {0, os.getuid()}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        action = _handler_name(request)
        if request.method in _READ_METHODS or action is None:
            return await handler(request)
        caller = caller_of(request)
        audit = request[AUDIT_KEY] = RequestAudit(
            caller.uid if caller else None,
            caller.pid if caller else None,
            action,
            request.path[:500],
        )
        try:
            if allowed is not None and (caller is None or caller.uid not in allowed):
                who = f"uid {caller.uid}" if caller else "a caller without peer credentials"
                raise Forbidden(
                    f"{who} may only read: changes are limited to mutating_uids in the "
                    "daemon config; ask its administrator to add your uid"
                )
            response = await handler(request)
        except Exception as exc:
            await _audit(store, request, audit, getattr(exc, "status", 500), None)
            raise
        await _audit(store, request, audit, response.status, response)
        return response

    return middleware


async def _audit(
    store: Store,
    request: web.Request,
    audit: RequestAudit,
    status: int,
    response: web.StreamResponse | None,
) -> None:
    if audit.written is not None:  # stored with the runs the request created
        event = {**audit.written, "status": status}
        log.info("audit", **{k: v for k, v in event.items() if k != "data"})
        if status != audit.written["status"] and audit.record_id is not None:
            try:  # it failed after its runs were stored: the record tells the real answer
                await store.set_audit_status(audit.record_id, status)
            except Exception:
                log.exception("audit_write_failed", action=audit.action)
        return
    data = _summary(response)
    run_id = data.pop("id", None)
    raw_id = request.match_info.get("id", "")
    if run_id is None and raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= 18:
        run_id = int(raw_id)
    event = audit.event(status, run_id, data)
    log.info("audit", **{k: v for k, v in event.items() if k != "data"})
    try:
        await store.add_audit_event(event, _runs_touched(audit.action, status, run_id, data))
    except Exception:  # the change happened: a failed record must not turn it into an error
        log.exception("audit_write_failed", action=audit.action)


def _runs_touched(action: str, status: int, run_id: int | None, data: dict[str, Any]) -> list[int]:
    """Runs that a successful request created or cancelled: their events name the caller."""
    if status >= 300 or action in _NOT_RUN_SCOPED:
        return []
    ids = data.get("run_ids") if action == "apply" else [run_id]
    return [i for i in ids or [] if isinstance(i, int)]


def _summary(response: web.StreamResponse | None) -> dict[str, Any]:
    """What the change did, from our own JSON answer: the run it made, the runs it hit."""
    if not isinstance(response, web.Response) or response.content_type != "application/json":
        return {}
    body = response.body
    if not isinstance(body, bytes) or len(body) > _AUDIT_BODY_LIMIT:
        return {}
    try:
        answer = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(answer, dict):
        return {}
    out: dict[str, Any] = {}
    if isinstance(answer.get("id"), int):
        out["id"] = answer["id"]
    if isinstance(answer.get("jobs"), list):
        out["run_ids"] = [j["run_id"] for j in answer["jobs"] if j.get("run_id") is not None]
    for key in ("run_ids", "deleted", "dry_run", "cancelled"):
        if key in answer and key not in out:
            out[key] = answer[key]
    return out


def timeout_middleware(config: Config) -> Any:
    """Body reads and read-only requests end at `limits.request_timeout`.

    A change, once its body is in, runs to completion: cancelling it halfway through
    a store transaction or a Docker call would leave less certain state than finishing.
    """
    seconds = config.limits.request_timeout_seconds

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            async with asyncio.timeout(seconds):
                if request.body_exists:
                    await request.read()  # cached: the handler's request.json() reuses it
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {config.limits.request_timeout} "
                "(limits.request_timeout)"
            ) from None
        if request.method not in _READ_METHODS or _handler_name(request) in _SELF_BOUNDED:
            return await handler(request)
        try:
            async with asyncio.timeout(seconds):
                return await handler(request)
        except TimeoutError:
            raise RequestTimeout(
                f"the request took longer than {config.limits.request_timeout} "
                "(limits.request_timeout); try again, or narrow it (--limit, --tail)"
            ) from None

    return middleware


# Events' writes (logs go out by ringjobs.api.logpump): 64 KiB pieces, measured when logs
# went this way too: 32-128 KiB alike, 1 MiB slower (logs RUN of 256 MiB).
_WRITE_PIECE = 65536


class StreamAborted(Exception):
    """A streaming client stopped reading or went away; its connection is closed."""


class StreamThreads:
    """The threads log streams' pages are read and sent on (ringjobs.api.logpump), each
    stream a sender and, while it sends, a reader; started as needed.

    Two pools, so that a sender never waits for a reader queued behind other senders.
    Each holds twice the streams: a stream whose slot was just freed may still be
    finishing a page, and the next one does not wait for it.
    """

    def __init__(self, streams: int) -> None:
        self.senders = ThreadPoolExecutor(2 * streams, thread_name_prefix="log-send")
        self.readers = ThreadPoolExecutor(2 * streams, thread_name_prefix="log-read")

    def close(self) -> None:
        """Senders not yet started are dropped; a reader queued for a sender that did
        start still runs (its sender waits for it), and stops with that sender."""
        self.senders.shutdown(wait=False, cancel_futures=True)
        self.readers.shutdown(wait=False)


class StreamSlots:
    """A fixed number of concurrent log/event streams and run waits over all clients."""

    def __init__(self, config: Config) -> None:
        self.limit = config.limits.max_log_streams
        self.write_timeout = config.limits.stream_write_timeout_seconds
        self.open = 0
        self.threads = StreamThreads(self.limit)

    def close(self) -> None:
        """No more streams: the threads end with the pages they are sending."""
        self.threads.close()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.open >= self.limit:
            raise TooManyRequests(
                f"{self.open} log/event streams and run waits are open, the limit "
                "(limits.max_log_streams) is reached; close some `--follow` streams or "
                "waits and try again in a few seconds, or raise limits.max_log_streams"
            )
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1

    async def write(self, request: web.Request, response: web.StreamResponse, data: bytes) -> None:
        """Write, or drop the connection of a client that has not read for write_timeout.

        A piece at a time: the socket takes a piece whole, copied once. What it did not
        take of a 1 MiB write was copied twice more, into Python 3.11's transport buffer.
        """
        view = memoryview(data)
        try:
            async with asyncio.timeout(self.write_timeout):
                for at in range(0, len(view), _WRITE_PIECE):
                    await response.write(view[at : at + _WRITE_PIECE])
        except (TimeoutError, ConnectionError) as exc:
            if request.transport is not None:
                request.transport.abort()
            raise StreamAborted(str(exc) or type(exc).__name__) from None
