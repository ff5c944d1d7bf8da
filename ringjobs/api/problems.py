"""Errors as application/problem+json (RFC 9457), with `violations` for bad input."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from ringjobs.exceptions import RingjobsError, ValidationFailed

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_TITLES = {
    400: "bad request",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    408: "timeout",
    409: "conflict",
    413: "too large",
    422: "invalid input",
    429: "too many requests",
    500: "internal error",
    503: "unavailable",
}


def problem(
    status: int,
    detail: str,
    code: str,
    title: str | None = None,
    violations: list[dict[str, Any]] | None = None,
) -> web.Response:
    body: dict[str, Any] = {
        "type": f"urn:ringjobs:problem:{code}",
        "title": title or _TITLES.get(status, "error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if violations is not None or status in (400, 422):
        body["violations"] = violations or []
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/problem+json"
    )


def from_error(exc: RingjobsError) -> web.Response:
    if isinstance(exc, ValidationFailed):
        violations = [v.model_dump(mode="json") for v in exc.violations]
        count = len(violations)
        detail = f"{count} problem{'s' if count != 1 else ''} found; nothing was stored"
        return problem(exc.status, detail, exc.code, exc.title, violations)
    answer = problem(exc.status, str(exc), exc.code)
    if exc.status == 429:
        answer.force_close()  # a refused stream must not keep its connection (and fd) open
    return answer


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RingjobsError as exc:
        return from_error(exc)
    except web.HTTPRequestEntityTooLarge as exc:
        return problem(413, f"request body too large: {exc.text}", "too_large")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        answer = problem(exc.status, exc.text or exc.reason, _code(exc.status))
        if "Allow" in exc.headers:  # 405 says which methods exist
            answer.headers["Allow"] = exc.headers["Allow"]
        return answer
    except Exception as exc:
        if isinstance(exc, ConnectionError) and _client_left(request):
            # It asked, then hung up (Ctrl-C, `| head`) before its answer was out: no
            # fault here, and nobody to answer (aiohttp drops this one quietly).
            log.info("client_left", path=request.path, method=request.method)
            return web.Response(status=499, reason="Client Closed Request")
        log.exception("request_failed", path=request.path, method=request.method)
        return problem(500, "internal error; the daemon's log has the details", "internal")


def _client_left(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


def _code(status: int) -> str:
    return _TITLES.get(status, "error").replace(" ", "_")
