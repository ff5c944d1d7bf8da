"""When a failed attempt is retried, and after how long. Pure."""

from __future__ import annotations

from ringjobs.models import FailureReason, JobSpec

# Failures of the job itself; never its configuration, image, deadline or a cancel.
RETRYABLE = frozenset({FailureReason.EXIT_CODE, FailureReason.OOM_KILLED, FailureReason.SIGNAL})


def should_retry(spec: JobSpec, reason: FailureReason | None, attempt: int) -> bool:
    """True if attempt number `attempt` (1-based) failed for a reason worth another try."""
    return (
        reason in RETRYABLE and spec.restart_policy == "OnFailure" and attempt <= spec.backoff_limit
    )


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential: base, 2*base, 4*base, ... never above cap."""
    return float(min(cap, base * 2 ** max(attempt - 1, 0)))
