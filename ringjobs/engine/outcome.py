"""How a finished container maps to a run's final status (SPEC 4). Pure."""

from __future__ import annotations

from dataclasses import dataclass

from ringjobs.models import FailureReason, RunStatus, StopIntent


@dataclass(frozen=True)
class Outcome:
    status: RunStatus
    reason: FailureReason | None
    message: str


def classify_exit(exit_code: int, oom_killed: bool, stop_intent: StopIntent | None) -> Outcome:
    """Our own stop wins (it was written before the signal), then OOM, then the exit code.

    OOM is only ever taken from Docker's flag or event, never guessed from 137; an OOM
    kill of a child that the main process survived (exit 0) is a success.
    """
    if exit_code < 0:
        return Outcome(
            RunStatus.FAILED,
            FailureReason.ENGINE_ERROR,
            "the engine reported no exit code for the container",
        )
    if stop_intent is StopIntent.CANCEL:
        return Outcome(RunStatus.CANCELLED, None, f"cancelled; the container exited {exit_code}")
    if stop_intent is StopIntent.DEADLINE:
        return Outcome(
            RunStatus.FAILED,
            FailureReason.DEADLINE_EXCEEDED,
            f"stopped at its deadline; the container exited {exit_code}",
        )
    if oom_killed and exit_code != 0:
        return Outcome(
            RunStatus.FAILED,
            FailureReason.OOM_KILLED,
            f"killed by the kernel for using more memory than its limit (exit {exit_code}); "
            "raise resources.limits.memory",
        )
    if exit_code == 0:
        return Outcome(RunStatus.COMPLETED, None, "exited 0")
    if exit_code >= 128:
        signal_number = exit_code - 128
        how = f"killed by signal {signal_number}" if signal_number <= 64 else "no signal number"
        return Outcome(
            RunStatus.FAILED,
            FailureReason.SIGNAL,
            f"exited {exit_code} ({how}; not stopped by ringjobs)",
        )
    return Outcome(RunStatus.FAILED, FailureReason.EXIT_CODE, f"exited {exit_code}")
