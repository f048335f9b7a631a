"""failed/NAME.error.json: why a file was not transcribed and what to do, in a clerk's words.

One writer for every kind of explanation: rejected inbox entries, failed jobs, quarantined
journals. Fields: source, job_id, error (a stable code), reason, what_to_do, moved_to, failed_at.
"""

from __future__ import annotations

from pathlib import Path

from transcribed.atomic import atomic_write_json
from transcribed.errors import TranscribedError


def write_explanation(
    failed: Path,
    stem: str,
    *,
    source: str,
    job_id: str | None,
    error: dict[str, str],
    moved_to: Path | None,
    at: str,
) -> Path:
    """failed/STEM.error.json: what went wrong and what to do, in a clerk's words. The one
    writer of explanations (rejected entries, failed jobs, quarantined journals)."""
    path = failed / f"{stem}.error.json"
    atomic_write_json(
        path,
        {
            "source": source,
            "job_id": job_id,
            **error,
            "moved_to": str(moved_to) if moved_to is not None else None,
            "failed_at": at,
        },
    )
    return path


def explain(error: Exception) -> dict[str, str]:
    """An error in words for NAME.error.json: a stable code, the reason, what to do."""
    if isinstance(error, TranscribedError):
        return {"error": error.code, "reason": error.reason, "what_to_do": error.hint}
    return {
        "error": "internal",
        "reason": f"internal error: {type(error).__name__}: {error}",
        "what_to_do": "this is a bug in transcribed; please report it with the log",
    }
