"""The job boundary: the one place a job's outcome is decided, recorded and reported.

Used by the daemon and by `transcribe` alike; they differ only in their Destination (where the
outputs go, what happens to the source). For one job it

  - binds `job_id` with structlog's contextvars, so every line below (gate, retry, engine)
    carries it;
  - counts the attempt before anything risky: a file that brings the daemon down again and again
    *without progress* (no new piece journaled between two crashes) becomes poison; a run that
    ends in this process, however it ends (done, failed, drained, cancelled), gives its attempt
    back under a bounded shield;
  - waits out faults of the service (ServiceFault: a folder that cannot be written) instead of
    failing the file, and starts over when the source changed after its claim;
  - turns every other outcome into one durable record (job.json `published` or `failed`) before
    anything moves, logs one `job.finished`, and hands the record to the destination.

Only Cancelled (and KeyboardInterrupt) escape it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog
import trio

from transcribed.errors import (
    JobInterrupted,
    RejectedFileError,
    ServiceFault,
    SourceChanged,
    TranscribedError,
)
from transcribed.explanations import explain, write_explanation
from transcribed.failpoints import failpoint
from transcribed.jobs import Job, JobOutcome, Services, folder_fault, run_job, source_key
from transcribed.journal import JobRecord, Journal
from transcribed.naming import StemRegistry, unique_path
from transcribed.notify import announce_job
from transcribed.progress import JobProgress, isoformat

logger = structlog.get_logger()

GIVE_BACK_TIMEOUT = 5.0  # the bounded shield for recording a cancelled job's state
SETTLE_POLL_INTERVAL = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class JobReport:
    """How a job ended, for the caller: done, failed, or interrupted (resumes later)."""

    outcome: str
    record: JobRecord
    progress: JobProgress
    seconds: float
    summary: dict[str, object]
    outputs: list[Path]
    error: dict[str, str] | None = None


class Destination(Protocol):
    """Where a job's outputs go and what happens to its source once it is decided."""

    @property
    def output_dir(self) -> Path: ...

    @property
    def stems(self) -> StemRegistry: ...

    @property
    def waits_for_service(self) -> bool:
        """Wait out faults of the service (a daemon), or report them as this run's failure
        (the one-shot command, at a terminal)."""
        ...

    async def conclude(
        self, services: Services, journal: Journal, record: JobRecord, progress: JobProgress
    ) -> None:
        """Finish a published or failed job; may be repeated after a crash."""
        ...

    async def announce(
        self, services: Services, record: JobRecord, progress: JobProgress, seconds: float
    ) -> None:
        """Tell the world a job was concluded (metrics, hooks): once, never on a resume."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonDestination:
    """The daemon's: outputs in the outbox; the source to done/ (or deleted) or to failed/
    with its explanation; then the job folder goes."""

    output_dir: Path
    done: Path
    failed: Path
    after_success: str
    stems: StemRegistry
    waits_for_service: bool = True
    # a profile's subfolders of done/ and failed/ are the daemon's own: made when missing
    makes_folders: bool = False

    async def conclude(
        self, services: Services, journal: Journal, record: JobRecord, progress: JobProgress
    ) -> None:
        board = services.board
        await trio.to_thread.run_sync(self._dispose, services, journal, record)
        failpoint("job.source_disposed")
        if record.state == "failed":
            board.update(progress, state="failed", last_error=(record.error or {}).get("reason"))
        else:
            board.update(progress, state="done", outputs=record.outputs)
        # The final progress is on disk before the job folder goes: after that, nothing would
        # ever correct a stale "transcribing".
        await board.wait_written(progress)
        await trio.to_thread.run_sync(journal.remove)
        self.stems.release(record.stem)

    async def announce(
        self, services: Services, record: JobRecord, progress: JobProgress, seconds: float
    ) -> None:
        await announce_job(services.config, record, progress, seconds)

    def _dispose(self, services: Services, journal: Journal, record: JobRecord) -> None:
        failed = record.state == "failed"
        source = journal.folder / record.source_file
        suffix = Path(record.source_file).suffix
        present = source.exists()
        folder = self.failed if failed else self.done
        try:
            if self.makes_folders:
                folder.mkdir(exist_ok=True)
            stem = unique_path(
                folder, record.stem, (suffix, ".error.json") if failed else (suffix,)
            )
            target = folder / f"{stem}{suffix}"
            # after a crash the explanation may already be there, naming where the source went
            if failed and (present or not (self.failed / f"{record.stem}.error.json").exists()):
                write_explanation(
                    self.failed,
                    stem if present else record.stem,
                    source=record.display_name,
                    job_id=record.job_id,
                    error=record.error or {},
                    moved_to=target if present else None,
                    at=isoformat(services.board.now()),
                )
            if not present:
                return
            if not failed and self.after_success == "delete":
                source.unlink()
            else:
                shutil.move(source, target)
        except OSError as exc:
            raise folder_fault(exc, f"move the finished source into {folder}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class OneShotDestination:
    """`transcribe`'s: outputs in the chosen folder, the source left where it is; a fault of
    the service is reported as this run's failure rather than waited out at a terminal."""

    output_dir: Path
    stems: StemRegistry
    waits_for_service: bool = False

    async def conclude(
        self, services: Services, journal: Journal, record: JobRecord, progress: JobProgress
    ) -> None:
        if record.state == "failed":
            error = record.error or {}
            services.board.update(progress, state="failed", last_error=error.get("reason"))
        else:
            services.board.update(progress, state="done", outputs=record.outputs)
        self.stems.release(record.stem)

    async def announce(
        self, services: Services, record: JobRecord, progress: JobProgress, seconds: float
    ) -> None:
        pass  # the one-shot reports on the terminal; hooks are the daemon's


async def run_at_boundary(
    services: Services,
    journal: Journal,
    destination: Destination,
    *,
    warnings: tuple[str, ...] = (),
) -> JobReport:
    """Run one job to its end and record the outcome; only Cancelled escapes. `warnings` go
    into the transcript's, ahead of the job's own."""
    record = await trio.to_thread.run_sync(journal.load)
    with structlog.contextvars.bound_contextvars(job_id=record.job_id):
        return await _JobRun(services, journal, destination, record, warnings).run()


class _JobRun:
    """One job at the boundary: the steps of run_at_boundary, over a little shared state."""

    def __init__(
        self,
        services: Services,
        journal: Journal,
        destination: Destination,
        record: JobRecord,
        warnings: tuple[str, ...] = (),
    ) -> None:
        self.services = services
        self.journal = journal
        self.destination = destination
        self.record = record
        self.warnings = warnings
        self.progress = services.board.add(
            JobProgress(
                source=record.display_name,
                job_id=record.job_id,
                engine=services.traits.name,
                model=services.traits.model,
                profile=record.profile,
            ),
            record.stem,
            folder=destination.output_dir,  # the progress file is beside the transcripts
        )
        self.started = trio.current_time()

    def _seconds(self) -> float:
        return round(trio.current_time() - self.started, 2)

    async def run(self) -> JobReport:
        if self.record.state in ("published", "failed"):
            await self._until_service_recovers(self._conclude)
            return self._report(None, None)
        await self._save(self._counted(self.record))
        failpoint("job.started")
        try:
            outcome, failure = await self._attempt()
        except BaseException:
            # Cancelled (the drain deadline, a second signal) or Ctrl-C: not the file's fault.
            # The attempt is given back and the state recorded, under a bounded shield.
            with trio.move_on_after(GIVE_BACK_TIMEOUT, shield=True):
                await self._interrupted()
            raise
        if isinstance(failure, JobInterrupted):
            await self._interrupted()
            return JobReport(
                outcome="interrupted", record=self.record, progress=self.progress,
                seconds=self._seconds(),
                summary={"source": self.record.display_name}, outputs=[],
            )  # fmt: skip
        if failure is not None:
            self.record = dataclasses.replace(self.record, state="failed", error=explain(failure))
        else:
            assert outcome is not None
            self.record = dataclasses.replace(
                self.record, state="published", outputs=[p.name for p in outcome.outputs]
            )
        self._log_finished(outcome, failure)
        await self._until_service_recovers(lambda: self._save(self.record))
        failpoint("job.concluded")
        await self._until_service_recovers(self._conclude)
        await self.destination.announce(self.services, self.record, self.progress, self._seconds())
        return self._report(outcome, failure)

    def _counted(self, record: JobRecord) -> JobRecord:
        """The record with this run counted: a run that makes progress (journals a piece the
        last counted run did not have) starts the poison count afresh."""
        pieces = self.journal.piece_count()
        attempts = 0 if pieces > record.pieces_at_attempt else record.attempts
        return dataclasses.replace(record, attempts=attempts + 1, pieces_at_attempt=pieces)

    async def _save(self, record: JobRecord) -> None:
        try:
            await trio.to_thread.run_sync(self.journal.save, record)
        except OSError as exc:
            raise folder_fault(exc, f"write the job's record in {self.journal.folder}") from exc
        self.record = record

    async def _attempt(self) -> tuple[JobOutcome | None, Exception | None]:
        """Run the pipeline until it ends in an outcome; wait out faults of the service and
        start over when the source changed."""
        config = self.services.config
        if self.record.attempts > config.max_attempts:
            return None, RejectedFileError(
                f"this file stopped the daemon {self.record.attempts - 1} times in a row before "
                "a single new piece was finished",
                hint="it is probably damaged or hostile; convert it to a common format and drop it again",
                code="poison",
            )
        while True:
            job = Job(
                services=self.services,
                journal=self.journal,
                record=self.record,
                progress=self.progress,
                source=self.journal.source_path(self.record),
                output_dir=self.destination.output_dir,
                warnings=list(self.warnings),
            )
            try:
                return await run_job(job), None
            except SourceChanged as change:
                await self._start_over(job, change)
            except ServiceFault as fault:
                if not self.destination.waits_for_service:
                    return None, fault
                await self._wait_out(fault)
            except Exception as error:
                return None, error
            finally:
                self.record = job.record

    async def _wait_out(self, fault: ServiceFault) -> None:
        """A fault of the service: the job waits (and intake claims nothing) until it clears."""
        health, key = self.services.health, self.record.job_id
        reason = f"{fault.kind}: {fault.reason}"
        health.report(key, reason)
        self.services.board.update(self.progress, state="waiting", waiting_reason=reason)
        logger.warning(
            "job.waiting", reason=fault.kind, error=fault.reason, hint=fault.hint,
            retry_in=self.services.config.service_retry_interval,
        )  # fmt: skip
        try:
            with trio.move_on_after(self.services.config.service_retry_interval):
                await self.services.draining.wait()
        finally:
            health.clear(key)
        if self.services.draining.is_set():
            raise JobInterrupted("the daemon is stopping while the job waits")
        self.services.board.update(self.progress, waiting_reason=None)

    async def _until_service_recovers(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run a concluding step, waiting out faults of the service between tries."""
        while True:
            try:
                await step()
                return
            except ServiceFault as fault:
                if not self.destination.waits_for_service:
                    raise
                await self._wait_out(fault)

    async def _start_over(self, job: Job, change: SourceChanged) -> None:
        """The producer was still writing: wait until the file settles, forget what was
        transcribed of it, and go again from the new content."""
        logger.warning("job.source_changed", reason=change.reason)
        self.services.board.update(
            self.progress,
            state="waiting",
            waiting_reason="settling: the file is still being written",
        )
        settle = self.services.config.settle_interval
        key = await trio.to_thread.run_sync(source_key, job.source)
        stable_since = trio.current_time()
        while trio.current_time() - stable_since < settle:
            await trio.sleep(min(SETTLE_POLL_INTERVAL, settle) or SETTLE_POLL_INTERVAL)
            now_key = await trio.to_thread.run_sync(source_key, job.source)
            if now_key != key:
                key, stable_since = now_key, trio.current_time()
        record = await trio.to_thread.run_sync(self.journal.start_over, job.record)
        job.record = dataclasses.replace(record, source_key=key)
        await self._save(job.record)
        self.services.board.update(
            self.progress, state="queued", waiting_reason=None, pieces_done=0, pieces_total=None,
            audio_seconds_done=0.0, spent_cost=0.0,
        )  # fmt: skip

    async def _interrupted(self) -> None:
        """Stopped, not failed: give the attempt back and say the job resumes at next start."""
        self.services.board.update(
            self.progress,
            state="waiting",
            waiting_reason="daemon stopped; resumes at its next start",
        )
        record = dataclasses.replace(self.record, attempts=max(0, self.record.attempts - 1))
        try:
            await self._save(record)
        except ServiceFault:
            pass  # the count stays as it was: at worst one attempt too many, never a lost job
        logger.info(
            "job.interrupted", seconds=self._seconds(), pieces_done=self.progress.pieces_done,
            source=self.record.display_name,
        )  # fmt: skip
        # Written now, not by the writer task: when the whole daemon is being cancelled (a
        # second signal) that task is gone, and waiting for it would hold the stop.
        self.services.board.flush()  # a few small files, atomically

    async def _conclude(self) -> None:
        await self.destination.conclude(self.services, self.journal, self.record, self.progress)

    def _log_finished(self, outcome: JobOutcome | None, failure: Exception | None) -> None:
        seconds, source = self._seconds(), self.record.display_name
        if outcome is not None:
            logger.info("job.finished", outcome="done", seconds=seconds, **summary(source, outcome))
        elif isinstance(failure, TranscribedError):
            logger.warning(
                "job.finished", outcome="failed", error=failure.code, reason=failure.reason,
                seconds=seconds, source=source,
            )  # fmt: skip
        else:
            logger.error(
                "job.finished", outcome="failed", error="internal", seconds=seconds,
                source=source, exc_info=failure,
            )  # fmt: skip

    def _report(self, outcome: JobOutcome | None, failure: Exception | None) -> JobReport:
        failed = self.record.state == "failed"
        return JobReport(
            outcome="failed" if failed else "done",
            record=self.record,
            progress=self.progress,
            seconds=self._seconds(),
            summary=summary(self.record.display_name, outcome)
            if outcome is not None
            else {"source": self.record.display_name},
            outputs=[self.destination.output_dir / name for name in self.record.outputs or []],
            error=self.record.error,
        )


def summary(source: str, outcome: JobOutcome) -> dict[str, object]:
    return {
        "source": source,
        "pieces": outcome.pieces,
        "pieces_reused": outcome.pieces_reused,
        "pieces_silent": outcome.pieces_silent,
        "segments": outcome.segments,
        "audio_seconds": round(outcome.audio_seconds, 2),
        "cost": round(outcome.cost, 4),
        "warnings": outcome.warnings,
    }


def quarantine(work_folder: Path, failed: Path, reason: str, at: str) -> None:
    """A job folder whose job.json is unreadable: its source (if any) goes to failed/ with an
    explanation, the folder goes, and the daemon goes on with the other jobs. Blocking."""
    sources = sorted(
        entry.name
        for entry in os.scandir(work_folder)
        if entry.is_file(follow_symlinks=False) and entry.name.startswith("source")
    )
    stem = unique_path(failed, f"job-{work_folder.name}", (".error.json",))
    moved: Path | None = None
    if sources:
        suffix = Path(sources[0]).suffix
        stem = unique_path(failed, stem, (suffix, ".error.json"))
        moved = failed / f"{stem}{suffix}"
        shutil.move(work_folder / sources[0], moved)
    write_explanation(
        failed,
        stem,
        source=sources[0] if sources else work_folder.name,
        job_id=work_folder.name,
        error={
            "error": "corrupt_job",
            "reason": f"the job's record could not be read ({reason}); its original name is lost",
            "what_to_do": "drop the recording again (it is here, as moved_to) under its own name",
        },
        moved_to=moved,
        at=at,
    )
    Journal(work_folder).remove()
