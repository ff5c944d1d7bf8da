"""CLI exit codes for finished runs and API errors (SPEC 8)."""

from __future__ import annotations

import pytest

from ringjobs import exitcodes
from ringjobs.models import FailureReason


@pytest.mark.parametrize(
    ("status", "reason", "exit_code", "expected"),
    [
        ("completed", None, 0, 0),
        ("completed", None, None, 0),
        ("failed", "exit_code", 3, 3),
        ("failed", "exit_code", 1, 1),
        ("failed", "exit_code", 2, 2),
        ("failed", "exit_code", 42, 42),
        ("failed", "exit_code", 127, 127),
        ("failed", "oom_killed", 137, 137),
        ("failed", "oom_killed", 1, 137),  # the reason decides, not the container's code
        ("failed", "deadline_exceeded", 143, 124),
        ("failed", "deadline_exceeded", 137, 124),
        ("failed", "deadline_exceeded", None, 124),
        ("cancelled", None, 143, 130),
        ("cancelled", None, None, 130),
        ("failed", "signal", 137, 1),
        ("failed", "signal", 143, 1),
        ("failed", "image_not_found", None, 1),
        ("failed", "source_not_found", None, 1),
        ("failed", "config_error", None, 1),
        ("failed", "start_error", None, 1),
        ("failed", "lost", None, 1),
        ("failed", "engine_error", None, 1),
        ("failed", None, None, 1),
    ],
)
def test_for_finished_run(
    status: str, reason: str | None, exit_code: int | None, expected: int
) -> None:
    assert exitcodes.for_finished_run(status, reason, exit_code) == expected


@pytest.mark.parametrize("exit_code", [0, None])
def test_exit_code_reason_without_a_code_is_still_a_failure(exit_code: int | None) -> None:
    # Must never turn a failed run into a successful exit.
    assert exitcodes.for_finished_run("failed", "exit_code", exit_code) == exitcodes.ERROR


def test_every_failed_reason_is_a_non_zero_exit() -> None:
    for reason in FailureReason:
        for exit_code in (None, 0, 1, 137, 143):
            assert exitcodes.for_finished_run("failed", str(reason), exit_code) != 0


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (404, exitcodes.NOT_FOUND),
        (409, exitcodes.CONFLICT),
        (401, exitcodes.USAGE),
        (403, exitcodes.USAGE),
        (400, exitcodes.ERROR),
        (413, exitcodes.ERROR),
        (422, exitcodes.ERROR),
        (500, exitcodes.ERROR),
        (503, exitcodes.ERROR),
    ],
)
def test_for_http_status(status: int, expected: int) -> None:
    assert exitcodes.for_http_status(status) == expected


def test_constants_match_spec() -> None:
    assert (
        exitcodes.OK,
        exitcodes.ERROR,
        exitcodes.USAGE,
        exitcodes.UNREACHABLE,
        exitcodes.NOT_FOUND,
        exitcodes.CONFLICT,
    ) == (0, 1, 2, 3, 4, 5)
