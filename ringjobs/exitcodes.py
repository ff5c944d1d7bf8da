"""CLI exit codes (SPEC 8). Kept free of heavy imports: the CLI loads it on every call."""

from __future__ import annotations

OK = 0
ERROR = 1
USAGE = 2
UNREACHABLE = 3
NOT_FOUND = 4
CONFLICT = 5

_BY_REASON = {"oom_killed": 137, "deadline_exceeded": 124}


def for_finished_run(status: str, reason: str | None, exit_code: int | None) -> int:
    """Exit code of `--wait` for a terminal run: the job's own code for exit_code failures."""
    if status == "completed":
        return OK
    if status == "cancelled":
        return 130
    if reason == "exit_code" and exit_code:
        return exit_code
    return _BY_REASON.get(reason or "", ERROR)


def for_http_status(status: int) -> int:
    """Map an API error status to the CLI's exit code."""
    if status == 404:
        return NOT_FOUND
    if status == 409:
        return CONFLICT
    if status in (401, 403):
        return USAGE
    return ERROR
