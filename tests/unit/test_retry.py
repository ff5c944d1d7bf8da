"""Retry decisions and backoff delays."""

from __future__ import annotations

import pytest

from ringjobs.models import FailureReason, JobSpec
from ringjobs.retry import backoff_delay, should_retry


def job(**fields: object) -> JobSpec:
    return JobSpec(namespace="ns", name="j", image="i", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reason", "attempt", "expected"),
    [
        (FailureReason.EXIT_CODE, 1, True),
        (FailureReason.OOM_KILLED, 2, True),
        (FailureReason.SIGNAL, 2, True),
        (FailureReason.EXIT_CODE, 3, False),  # 1 + backoff_limit attempts in all
        (FailureReason.DEADLINE_EXCEEDED, 1, False),
        (FailureReason.IMAGE_NOT_FOUND, 1, False),
        (FailureReason.CONFIG_ERROR, 1, False),
        (FailureReason.LOST, 1, False),
        (None, 1, False),  # cancelled or completed
    ],
)
def test_only_job_failures_within_the_limit_are_retried(
    reason: FailureReason | None, attempt: int, expected: bool
) -> None:
    spec = job(backoff_limit=2, restart_policy="OnFailure")
    assert should_retry(spec, reason, attempt) is expected


def test_restart_policy_never_means_no_retry() -> None:
    assert not should_retry(job(backoff_limit=2), FailureReason.EXIT_CODE, 1)


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_delay(n, 10, 60) for n in range(1, 6)] == [10, 20, 40, 60, 60]
