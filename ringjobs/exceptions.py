"""One exception hierarchy; every message says what to do next."""

from __future__ import annotations

from collections.abc import Sequence

from ringjobs.models import Violation


class RingjobsError(Exception):
    """Base of every error ringjobs raises on purpose. `status` is the HTTP status."""

    status = 500
    code = "internal"


class ValidationFailed(RingjobsError):
    """User input is invalid; carries every violation at once."""

    status = 422
    code = "validation_failed"

    def __init__(self, violations: Sequence[Violation], title: str = "invalid manifest") -> None:
        self.violations = list(violations)
        lines = "\n".join(f"  {v.render()}" for v in self.violations)
        super().__init__(f"{title}:\n{lines}")
        self.title = title


class PayloadTooLarge(RingjobsError):
    status = 413
    code = "too_large"


class NotFound(RingjobsError):
    status = 404
    code = "not_found"


class Conflict(RingjobsError):
    status = 409
    code = "conflict"


class BadRequest(RingjobsError):
    status = 400
    code = "bad_request"


class Forbidden(RingjobsError):
    """The caller may read but not change (mutating_uids)."""

    status = 403
    code = "forbidden"


class RequestTimeout(RingjobsError):
    """A request exceeded limits.request_timeout (slow body, or a slow read)."""

    status = 408
    code = "timeout"


class TooManyRequests(RingjobsError):
    """A bounded resource (stream slots) is used up; retry later."""

    status = 429
    code = "too_many_requests"


class EngineUnavailable(RingjobsError):
    """The container engine (Docker) cannot be reached."""

    status = 503
    code = "engine_unavailable"


class StoreUnavailable(RingjobsError):
    """The database cannot be written (disk full, read-only)."""

    status = 503
    code = "store_unavailable"


class DaemonAlreadyRunning(RingjobsError):
    code = "already_running"


class ConfigError(RingjobsError):
    """The daemon's own configuration is invalid."""

    code = "config_error"
