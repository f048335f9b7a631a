"""The exception tree of transcribed; every failure the daemon reports is one of these.

    TranscribedError
     ├── ConfigError            bad configuration: start-up stops, exit code 78 (EX_CONFIG)
     ├── RejectedFileError      this file cannot be transcribed (not media, no audio, too long...);
     │                          the job goes to failed/ with NAME.error.json, the daemon goes on
     ├── JobError               a job failed for a reason that is not the file's fault
     ├── JobInterrupted         the daemon is stopping; the job stays in work/ and resumes later
     ├── ServiceFault           a fault of the service, not of the file (a folder that cannot be
     │                          written, ...): the job waits in work/ (state "waiting") and is
     │                          tried again; nothing fails, no new file is claimed meanwhile
     ├── SourceChanged          the claimed file was still being written: start the job over
     └── EngineError            raised by engines at their transport edge
          ├── RetryableError    try again later (rate limit, 5xx, timeouts, a crashed worker)
          │    ├── UnreachableError  no answer at all (connection refused, reset, timeout, 502-504,
          │    │                a request that hangs past the deadline learned from the answers
          │    │                so far): once the retry budget is spent, the service pauses; no
          │    │                file fails
          │    └── UnusableAnswerError  a 200 whose body cannot be used (over the size its piece
          │                     allows, not JSON, no text): billed, so a piece retries it once
          ├── PermanentError    retrying cannot help (a refused request); fails the job
          └── ServiceSuspended  the service cannot work at all until someone acts or time passes:
               │                all spending stops, jobs wait (state "waiting", `kind` as the
               │                reason) and try again after `retry_interval`
               ├── QuotaExhaustedError  the account's quota or budget is spent
               ├── KeyRefusedError      the API key was refused (401/403)
               ├── ModelUnavailableError  the model is unknown or retired (404 model_not_found)
               ├── ServerUnreachableError  the server stayed unreachable through a retry budget
               └── AnswersUnusableError  a piece's retry of an unusable 200 was unusable too:
                                        the server (or a proxy) is broken, not the file

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


class ServiceFault(TranscribedError):
    """The service cannot go on with this job for now, through no fault of the file: a folder
    that cannot be written (permissions, a read-only mount), a missing folder. The job stays in
    work/ and is tried again; `kind` is the short reason shown as `waiting_reason`."""

    code = "service"

    def __init__(self, reason: str, *, hint: str = "", kind: str = "service") -> None:
        super().__init__(reason, hint=hint)
        self.kind = kind


class SourceChanged(TranscribedError):
    """The claimed source changed after its claim (a copy that stalled past the settle time and
    went on): what was transcribed is not the file; the job starts over from the new content."""

    code = "source_changed"


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


class UnreachableError(RetryableError):
    """No usable answer came back at all: the server is down, unreachable, or a gateway in front
    of it failed. Retried like any transient failure; past the retry budget it pauses the
    service instead of failing the file."""

    code = "unreachable"


class UnusableAnswerError(RetryableError):
    """The server answered 200, but the body cannot be used: larger than its piece can need,
    not JSON, or without text. The server has billed it, so a piece retries it once only; the
    next one suspends the service (AnswersUnusableError)."""

    code = "unusable_answer"


class PermanentError(EngineError):
    """A failure that retrying the same request cannot fix."""

    code = "permanent"


class ServiceSuspended(EngineError):
    """No request may be sent until the condition clears: not a failure of any job. The gate
    suspends all spending, jobs wait with `kind` as their reason, and try again after
    `retry_interval` seconds (None: the gate's configured interval)."""

    code = "suspended"
    kind = "service"

    def __init__(self, reason: str, *, hint: str = "", retry_interval: float | None = None) -> None:
        super().__init__(reason, hint=hint)
        self.retry_interval = retry_interval


class QuotaExhaustedError(ServiceSuspended):
    """The account ran out of quota or credit: no request may be sent until it is topped up."""

    code = "quota"
    kind = "quota"


class KeyRefusedError(ServiceSuspended):
    """The API key was refused (revoked, mistyped, no access to the model)."""

    code = "key"
    kind = "key"


class ModelUnavailableError(ServiceSuspended):
    """The configured model does not exist (mistyped) or was retired."""

    code = "model"
    kind = "model"


class ServerUnreachableError(ServiceSuspended):
    """The server gave no usable answer through a whole retry budget (down, unreachable)."""

    code = "unreachable"
    kind = "unreachable"


class AnswersUnusableError(ServiceSuspended):
    """A piece's answer was unusable again after its one retry: the server or a proxy in front
    of it is broken. Each answer is billed, so spending stops rather than paying on; no file is
    failed for the server's fault."""

    code = "answers"
    kind = "answers"
