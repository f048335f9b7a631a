"""Live progress: jobs update an in-memory board; one writer task publishes it to the outbox.

`outbox/NAME.progress.json` is one JSON object, rewritten atomically at most a few times a
second. Its fields are a contract for anything that shows progress (the `status` command, a
dashboard), documented in the README; add fields, never rename or remove them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
import trio

from transcribed.atomic import atomic_write_json
from transcribed.naming import PROGRESS_SUFFIX

logger = structlog.get_logger()

WRITE_INTERVAL = 0.25


def utc_now() -> datetime:
    return datetime.now(UTC)


def isoformat(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(slots=True, kw_only=True)
class JobProgress:
    """The live state of one job (mutable: the job updates it through the board)."""

    source: str
    job_id: str
    engine: str
    model: str
    state: str = "queued"
    waiting_reason: str | None = None
    pieces_total: int | None = None
    pieces_done: int = 0
    pieces_in_flight: int = 0
    pieces_failed: int = 0
    audio_seconds_total: float | None = None
    audio_seconds_done: float = 0.0
    estimated_cost: float = 0.0
    spent_cost: float = 0.0
    possibly_billed_cost: float = 0.0  # attempts sent in full without a usable answer
    retries: int = 0
    last_error: str | None = None
    started_at: str = ""
    updated_at: str = ""
    finished_at: str | None = None
    outputs: list[str] = field(default_factory=list)
    profile: str | None = None  # the [profiles.NAME] of its inbox subfolder, if any
    # not published: for the rate estimate
    transcribing_since: float | None = None
    audio_done_at_start: float = 0.0

    @property
    def percent(self) -> float:
        if self.state == "done":
            return 100.0
        if not self.audio_seconds_total:
            return 0.0
        return round(min(99.9, 100.0 * self.audio_seconds_done / self.audio_seconds_total), 1)

    def eta_seconds(self, now: float) -> float | None:
        if self.state != "transcribing" or self.transcribing_since is None:
            return None
        if not self.audio_seconds_total:
            return None
        progressed = self.audio_seconds_done - self.audio_done_at_start
        elapsed = now - self.transcribing_since
        if progressed <= 0 or elapsed <= 0:
            return None
        remaining = max(0.0, self.audio_seconds_total - self.audio_seconds_done)
        return math.ceil(remaining * elapsed / progressed)

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "source": self.source,
            "job_id": self.job_id,
            "state": self.state,
            "waiting_reason": self.waiting_reason,
            "percent": self.percent,
            "eta_seconds": self.eta_seconds(now),
            "pieces": {
                "total": self.pieces_total,
                "done": self.pieces_done,
                "in_flight": self.pieces_in_flight,
                "failed": self.pieces_failed,
            },
            "audio_seconds": {
                "total": None
                if self.audio_seconds_total is None
                else round(self.audio_seconds_total, 2),
                "done": round(self.audio_seconds_done, 2),
            },
            "engine": self.engine,
            "model": self.model,
            "cost": {
                "estimated": round(self.estimated_cost, 4),
                "spent": round(self.spent_cost, 4),
                "spent_upper_bound": round(self.spent_cost + self.possibly_billed_cost, 4),
            },
            "retries": self.retries,
            "last_error": self.last_error,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "outputs": self.outputs,
            "profile": self.profile,
        }


class ProgressBoard:
    """Every job's progress, and which have changed since they were last written."""

    def __init__(self, folder: Path | None, *, now: Callable[[], datetime] = utc_now) -> None:
        self.folder = folder
        self.now = now
        self.jobs: dict[str, JobProgress] = {}
        self._paths: dict[str, Path] = {}
        self._dirty: set[str] = set()
        self._changed = trio.Event()
        self._flushed = trio.Event()

    def add(self, progress: JobProgress, stem: str, *, folder: Path | None = None) -> JobProgress:
        """Track a job; its file is STEM.progress.json in `folder` (a profile's subfolder of the
        outbox), by default in the board's own folder; no file at all for a board without one."""
        progress.started_at = progress.started_at or isoformat(self.now())
        self.jobs[progress.job_id] = progress
        if self.folder is not None:
            where = self.folder if folder is None else folder
            self._paths[progress.job_id] = where / f"{stem}{PROGRESS_SUFFIX}"
        self.touch(progress)
        return progress

    def update(self, progress: JobProgress, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(progress, name, value)
        self.touch(progress)

    def touch(self, progress: JobProgress) -> None:
        progress.updated_at = isoformat(self.now())
        if progress.state in ("done", "failed") and progress.finished_at is None:
            progress.finished_at = progress.updated_at
        self._dirty.add(progress.job_id)
        self._changed.set()

    def forget(self, progress: JobProgress) -> None:
        """Stop tracking a finished job (after its final state has been written)."""
        self.jobs.pop(progress.job_id, None)

    def snapshot(self, progress: JobProgress) -> dict[str, Any]:
        return progress.as_dict(trio.current_time())

    async def wait_written(self, progress: JobProgress) -> None:
        """Wait until the writer has put this job's latest state on disk."""
        while progress.job_id in self._dirty and self.folder is not None:
            await self._flushed.wait()

    def flush(self) -> None:
        """Write every changed job's file now."""
        dirty, self._dirty = self._dirty, set()
        self._changed = trio.Event()
        flushed, self._flushed = self._flushed, trio.Event()
        for job_id in dirty:
            progress = self.jobs.get(job_id)
            path = self._paths.get(job_id)
            if progress is None or path is None:
                continue
            try:
                atomic_write_json(path, self.snapshot(progress), durable=False)
            except OSError as exc:
                logger.warning("progress.write_failed", path=str(path), error=str(exc))
            if progress.state in ("done", "failed"):
                self.forget(progress)
        flushed.set()

    async def serve_writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The single writer of progress files: at most one write per job per interval."""
        task_status.started()
        try:
            while True:
                await self._changed.wait()
                self.flush()
                await trio.sleep(WRITE_INTERVAL)
        finally:
            self.flush()
