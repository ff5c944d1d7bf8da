"""How a finished container maps to a run's final status and reason (SPEC 4)."""

from __future__ import annotations

import pytest

from ringjobs.engine.outcome import Outcome, classify_exit
from ringjobs.models import FailureReason, RunStatus, StopIntent

COMPLETED = (RunStatus.COMPLETED, None)
EXIT_CODE = (RunStatus.FAILED, FailureReason.EXIT_CODE)
SIGNAL = (RunStatus.FAILED, FailureReason.SIGNAL)
OOM = (RunStatus.FAILED, FailureReason.OOM_KILLED)
DEADLINE = (RunStatus.FAILED, FailureReason.DEADLINE_EXCEEDED)
CANCELLED = (RunStatus.CANCELLED, None)
ENGINE_ERROR = (RunStatus.FAILED, FailureReason.ENGINE_ERROR)


@pytest.mark.parametrize(
    ("exit_code", "oom_killed", "intent", "expected"),
    [
        # The container's own exit, nothing else involved.
        (0, False, None, COMPLETED),
        (1, False, None, EXIT_CODE),
        (3, False, None, EXIT_CODE),
        (127, False, None, EXIT_CODE),
        (-1, False, None, ENGINE_ERROR),  # the engine gave no exit code: not the job's
        # >= 128 and not caused by us: a signal, never a guessed OOM.
        (128, False, None, SIGNAL),
        (130, False, None, SIGNAL),
        (137, False, None, SIGNAL),
        (143, False, None, SIGNAL),
        (255, False, None, SIGNAL),
        # Docker's OOM flag: a failure only if the main process failed too.
        (137, True, None, OOM),
        (1, True, None, OOM),
        (143, True, None, OOM),
        (0, True, None, COMPLETED),
        # Our deadline stop wins over whatever the container exited with.
        (143, False, StopIntent.DEADLINE, DEADLINE),
        (137, False, StopIntent.DEADLINE, DEADLINE),
        (0, False, StopIntent.DEADLINE, DEADLINE),
        (2, False, StopIntent.DEADLINE, DEADLINE),
        (137, True, StopIntent.DEADLINE, DEADLINE),
        # A cancel is a cancel, however the container ended.
        (143, False, StopIntent.CANCEL, CANCELLED),
        (137, False, StopIntent.CANCEL, CANCELLED),
        (0, False, StopIntent.CANCEL, CANCELLED),
        (1, False, StopIntent.CANCEL, CANCELLED),
        (137, True, StopIntent.CANCEL, CANCELLED),
    ],
)
def test_mapping(
    exit_code: int,
    oom_killed: bool,
    intent: StopIntent | None,
    expected: tuple[RunStatus, FailureReason | None],
) -> None:
    outcome = classify_exit(exit_code, oom_killed, intent)
    assert (outcome.status, outcome.reason) == expected
    assert outcome.message, "every outcome explains itself"


def test_terminal_status_only() -> None:
    for code in (0, 1, 137, 255):
        for oom in (False, True):
            for intent in (None, *StopIntent):
                assert classify_exit(code, oom, intent).status.is_terminal


def test_success_has_no_reason_and_failure_always_has_one() -> None:
    for code in range(256):
        outcome = classify_exit(code, False, None)
        if outcome.status is RunStatus.COMPLETED:
            assert code == 0
            assert outcome.reason is None
        else:
            assert outcome.reason is not None


@pytest.mark.parametrize(
    ("exit_code", "oom_killed", "intent", "words"),
    [
        (3, False, None, ["3"]),
        (137, False, None, ["137", "signal 9", "not stopped by ringjobs"]),
        (143, False, None, ["signal 15"]),
        (137, True, None, ["memory", "resources.limits.memory"]),
        (143, False, StopIntent.DEADLINE, ["deadline", "143"]),
        (137, False, StopIntent.CANCEL, ["cancelled", "137"]),
    ],
)
def test_messages_say_what_happened(
    exit_code: int, oom_killed: bool, intent: StopIntent | None, words: list[str]
) -> None:
    message = classify_exit(exit_code, oom_killed, intent).message
    for word in words:
        assert word in message


def test_outcome_is_immutable() -> None:
    outcome = classify_exit(0, False, None)
    assert isinstance(outcome, Outcome)
    with pytest.raises(AttributeError):
        outcome.status = RunStatus.FAILED  # type: ignore[misc]
