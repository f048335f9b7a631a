"""The exception tree of transcribed; every failure the daemon reports is one of these.

    TranscribedError
     ├── ConfigError            bad configuration: start-up stops, exit code 78 (EX_CONFIG)
     ├── RejectedFileError      this file cannot be transcribed (not media, no audio, too long...);
     │                          the job goes to failed/ with NAME.error.json, the daemon goes on
     ├── JobError               a job failed for a reason that is not the file's fault
     ├── JobInterrupted         the daemon is stopping; the job stays in work/ and resumes later
     └── EngineError            raised by engines at their transport edge
          ├── RetryableError    try again later (rate limit, 5xx, timeouts, a crashed worker)
          ├── PermanentError    retrying cannot help (bad request, refused key); fails the job
          └── QuotaExhaustedError  the account's quota or budget is spent: all spending stops,
                                jobs wait (state "waiting", reason quota) and are tried again later

Every error carries a `reason` (what went wrong, in words a clerk understands) and a `hint`
(what to do about it). Decisions look at the type, never at the message.
"""

from __future__ import annotations


class TranscribedError(Exception):
    """Base of every error this package raises on purpose."""

    code = "error"

    def __init__(self, reason: str, *, hint: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.reason} ({self.hint})" if self.hint else self.reason


class ConfigError(TranscribedError):
    """The configuration (file, environment or flags) is invalid."""

    code = "config"


class RejectedFileError(TranscribedError):
    """The input file cannot be transcribed; nothing will change that but a different file."""

    def __init__(self, reason: str, *, hint: str = "", code: str = "rejected") -> None:
        super().__init__(reason, hint=hint)
        self.code = code


class JobError(TranscribedError):
    """A job failed for a reason outside the file itself (disk full, engine broken...)."""

    code = "job_failed"


class JobInterrupted(TranscribedError):
    """A job stopped early because the daemon is draining; not a failure."""

    code = "interrupted"


class EngineError(TranscribedError):
    """Base of errors raised by an engine."""

    code = "engine"


class RetryableError(EngineError):
    """A transient failure: the same request may succeed later."""

    code = "retryable"

    def __init__(
        self,
        reason: str,
        *,
        hint: str = "",
        retry_after: float | None = None,
        status: int | None = None,  # issue 10: the HTTP status, for the retries metric's label
    ) -> None:
        super().__init__(reason, hint=hint)
        self.retry_after = retry_after
        self.status = status


class PermanentError(EngineError):
    """A failure that retrying the same request cannot fix."""

    code = "permanent"


class QuotaExhaustedError(EngineError):
    """The account ran out of quota or credit: no request may be sent until it is topped up.

    Not a failure of the job: the gate suspends all spending, jobs wait, and try again later.
    """

    code = "quota"
