"""problem_middleware: a client that hung up is not the daemon's failure."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from structlog.testing import capture_logs

from ringjobs.api.problems import problem_middleware


def request(closing: bool) -> web.Request:
    transport = mock.Mock()
    transport.is_closing.return_value = closing
    return make_mocked_request("GET", "/v1/runs/1/logs", transport=transport)


async def hang_up(_: web.Request) -> web.StreamResponse:
    raise ConnectionResetError("Cannot write to closing transport")


@pytest.mark.parametrize(
    ("closing", "status", "event", "level"),
    [(True, 499, "client_left", "info"), (False, 500, "request_failed", "error")],
)
async def test_a_connection_error_is_the_clients_leaving_only_if_it_left(
    closing: bool, status: int, event: str, level: str
) -> None:
    with capture_logs() as logs:
        answer: Any = await problem_middleware(request(closing), hang_up)
    assert answer.status == status
    assert [(e["event"], e["log_level"]) for e in logs] == [(event, level)]
