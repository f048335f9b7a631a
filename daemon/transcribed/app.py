"""The daemon: builds the shared services and owns the root nursery.

root nursery
  ├─ progress writer        the single writer of progress files
  ├─ systemd notifier       READY=1 once serving, WATCHDOG=1 while the loop is healthy
  ├─ signal watcher         first SIGTERM/SIGINT drains, a second one stops at once
  └─ workers nursery
       ├─ job workers × N   one job each at a time; the job boundary records the outcome
       └─ intake nursery    resumed jobs first, then scan + watch + rescan → claimed jobs
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from functools import partial
from pathlib import Path

import structlog
import trio

from transcribed.atomic import atomic_write_json, remove_stale_temps
from transcribed.config import Config
from transcribed.diarize import prepare_speakers  # issue 12
from transcribed.engines import Engine, gate_for, open_engine
from transcribed.errors import ConfigError, JobInterrupted, RejectedFileError, TranscribedError
from transcribed.failpoints import failpoint
from transcribed.intake import (
    Claimer,
    StemRegistry,
    Watcher,
    recover_work,
    serve_intake,
    watch_with_watchfiles,
)
from transcribed.jobs import Services, job_summary, new_progress, run_job
from transcribed.journal import JobRecord, Journal
from transcribed.progress import JobProgress, ProgressBoard, isoformat, utc_now
from transcribed.systemd import Notifier

logger = structlog.get_logger()

EngineFactory = Callable[[Config], AbstractAsyncContextManager[Engine]]


def prepare_folders(config: Config) -> None:
    """Create the folders, check claims can be atomic, sweep temp files a crash left behind."""
    folders = config.folders
    for name, path in folders.items():
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the {name} folder {path}: {exc.strerror}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"the {name} folder {path} is not writable by this user")
    if folders["inbox"].stat().st_dev != folders["work"].stat().st_dev:
        raise ConfigError(
            f"inbox {folders['inbox']} and work {folders['work']} are on different filesystems",
            hint="claims are atomic renames; put both folders on the same filesystem",
        )
    for name in ("outbox", "done", "failed"):
        remove_stale_temps(folders[name])


def _unique_path(folder: Path, stem: str, suffix: str) -> Path:
    """FOLDER/STEM.SUFFIX, or STEM-2.SUFFIX etc. if that is taken: never overwrite."""
    target = folder / f"{stem}{suffix}"
    number = 1
    while target.exists():
        number += 1
        target = folder / f"{stem}-{number}{suffix}"
    return target


def _primary_error(errors: list[Exception]) -> Exception:
    """The error that best explains a failed job: the file's fault first, then the engine's;
    an interruption only when nothing else went wrong."""
    errors = [e for e in errors if not isinstance(e, JobInterrupted)] or errors
    for kind in (RejectedFileError, TranscribedError):
        for error in errors:
            if isinstance(error, kind):
                return error
    return errors[0]


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    leaves: list[Exception] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            leaves.extend(_leaves(error))
        else:
            leaves.append(error)
    return leaves


class Daemon:
    """Everything one running daemon shares between its tasks."""

    def __init__(self, config: Config, services: Services, stems: StemRegistry) -> None:
        self.config = config
        self.services = services
        self.stems = stems
        self.folders = config.folders

    async def serve_job_worker(self, jobs: trio.MemoryReceiveChannel[Journal]) -> None:
        async with jobs:
            async for journal in jobs:
                await self.process_job(journal)

    async def process_job(self, journal: Journal) -> None:
        """The job boundary: run one job and record its outcome; only Cancelled escapes.

        The outcome is made durable in job.json (state `published` or `failed`) before anything
        is moved, so a crash at any point afterwards is finished by the next start.
        """
        record = await trio.to_thread.run_sync(journal.load)
        progress = new_progress(self.services, record)
        if record.state in ("published", "failed"):
            await self._conclude(journal, record, progress)
            return
        # Counted before any risky step, so a file that kills the daemon every time it is
        # tried cannot crash-loop the service (poison); a graceful stop gives the attempt back.
        record = dataclasses.replace(record, attempts=record.attempts + 1)
        await trio.to_thread.run_sync(journal.save, record)
        failpoint("job.started")
        log = logger.bind(job_id=record.job_id)
        started = trio.current_time()
        failure: Exception | None = None
        finished = False
        try:
            if record.attempts > self.config.max_attempts:
                raise RejectedFileError(
                    f"this file stopped the daemon {record.attempts - 1} times while it was being transcribed",
                    hint="it is probably damaged or hostile; convert it to a common format and drop it again",
                    code="poison",
                )
            outcome = await run_job(
                self.services,
                journal,
                record,
                progress,
                output_dir=self.folders["outbox"],
                source=journal.folder / record.source_file,
            )
            finished = True
        except* Exception as group:
            failure = _primary_error(_leaves(group))
            finished = True
        finally:
            if not finished or isinstance(failure, JobInterrupted):
                # stopped by a signal: the job stays in work/ and resumes at the next start
                self.services.board.update(
                    progress,
                    state="waiting",
                    waiting_reason="daemon stopped; resumes at its next start",
                )
        seconds = round(trio.current_time() - started, 2)
        if isinstance(failure, JobInterrupted):
            record = dataclasses.replace(record, attempts=record.attempts - 1)
            await trio.to_thread.run_sync(journal.save, record)
            log.info(
                "job.interrupted",
                seconds=seconds,
                pieces_done=progress.pieces_done,
                source=record.display_name,
            )
            return
        if failure is not None:
            record = dataclasses.replace(
                record, state="failed", error=self._explain(record, failure, seconds)
            )
        else:
            record = dataclasses.replace(
                record, state="published", outputs=[p.name for p in outcome.outputs]
            )
            log.info(
                "job.finished", outcome="done", seconds=seconds, **job_summary(record, outcome)
            )
        await trio.to_thread.run_sync(journal.save, record)
        failpoint("job.concluded")
        await self._conclude(journal, record, progress)

    def _explain(self, record: JobRecord, error: Exception, seconds: float) -> dict[str, str]:
        """The failure in words for NAME.error.json, logged once as job.finished."""
        log = logger.bind(job_id=record.job_id)
        if isinstance(error, TranscribedError):
            reason, hint, code = error.reason, error.hint, error.code
            log.warning(
                "job.finished",
                outcome="failed",
                error=code,
                reason=reason,
                seconds=seconds,
                source=record.display_name,
            )
        else:
            reason = f"internal error: {type(error).__name__}: {error}"
            hint, code = "this is a bug in transcribed; please report it with the log", "internal"
            log.error(
                "job.finished",
                outcome="failed",
                error=code,
                seconds=seconds,
                source=record.display_name,
                exc_info=error,
            )
        return {"error": code, "reason": reason, "what_to_do": hint}

    async def _conclude(self, journal: Journal, record: JobRecord, progress: JobProgress) -> None:
        """Finish a published or failed job: explain a failure, move the source, publish the
        final progress, remove the job folder. Every step may be repeated after a crash."""
        board = self.services.board
        failed = record.state == "failed"
        source = journal.folder / record.source_file
        suffix = Path(record.source_file).suffix

        def dispose() -> None:
            present = source.exists()
            target = _unique_path(self.folders["failed" if failed else "done"], record.stem, suffix)
            explanation_path = self.folders["failed"] / f"{record.stem}.error.json"
            # after a crash the explanation may already be there, naming where the source went
            if failed and (present or not explanation_path.exists()):
                explanation = {
                    "source": record.display_name,
                    "job_id": record.job_id,
                    **(record.error or {}),
                    "moved_to": str(target) if present else None,
                    "failed_at": isoformat(board.now()),
                }
                atomic_write_json(explanation_path, explanation)
            if not present:
                return
            if not failed and self.config.after_success == "delete":
                source.unlink()
            else:
                shutil.move(source, target)

        await trio.to_thread.run_sync(dispose)
        failpoint("job.source_disposed")
        if failed:
            board.update(progress, state="failed", last_error=(record.error or {}).get("reason"))
        else:
            board.update(progress, state="done", outputs=record.outputs)
        # The final progress is on disk before the job folder goes: after that, nothing would
        # ever correct a stale "transcribing".
        await board.wait_written(progress)
        await trio.to_thread.run_sync(journal.remove)
        self.stems.release(record.stem)


async def run_daemon(
    config: Config,
    *,
    watcher: Watcher = watch_with_watchfiles,
    now: Callable[[], datetime] = utc_now,
    notifier: Notifier | None = None,
    install_signal_handlers: bool = True,
    shutdown: trio.Event | None = None,
    engine_factory: EngineFactory = open_engine,
    free_space: Callable[[Path], int] = lambda path: shutil.disk_usage(path).free,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until SIGTERM/SIGINT (or `shutdown` is set): drain, journal, return.

    Signals are taken from the very start: one during start-up (loading models, resuming) stops
    at once; once serving, the first drains and a second stops at once.
    """
    notifier = notifier or Notifier()
    shutdown = trio.Event() if shutdown is None else shutdown
    ready = trio.Event()
    with trio.CancelScope() as everything:
        async with trio.open_nursery() as guard:
            if install_signal_handlers:
                await guard.start(_serve_signals, shutdown, ready, everything)
            await _serve(
                config,
                watcher,
                now,
                notifier,
                shutdown,
                ready,
                engine_factory,
                free_space,
                task_status,
            )
            guard.cancel_scope.cancel()
    logger.info("daemon.stopped")


async def _serve(
    config: Config,
    watcher: Watcher,
    now: Callable[[], datetime],
    notifier: Notifier,
    shutdown: trio.Event,
    ready: trio.Event,
    engine_factory: EngineFactory,
    free_space: Callable[[Path], int],
    task_status: trio.TaskStatus[None],
) -> None:
    prepare_folders(config)
    folders = config.folders
    stems = StemRegistry(folders["outbox"])
    resumable = await trio.to_thread.run_sync(recover_work, folders["work"], stems)
    board = ProgressBoard(folders["outbox"], now=now)

    async with engine_factory(config) as engine:
        services = Services(
            config=config,
            engine=engine,
            gate=gate_for(config, engine),
            board=board,
            free_space=free_space,
            watched_folders=(folders["work"], folders["outbox"]),
            known_speakers=await prepare_speakers(config, engine.name),  # issue 12
        )
        daemon = Daemon(config, services, stems)
        claimer = Claimer(config, stems, now=now)
        async with trio.open_nursery() as root:
            root.start_soon(board.serve_writer)
            if notifier.watchdog_interval:
                root.start_soon(_serve_watchdog, notifier, notifier.watchdog_interval)
            async with trio.open_nursery() as workers:
                send, receive = trio.open_memory_channel[Journal](0)
                async with receive:
                    for _ in range(config.job_workers):
                        workers.start_soon(daemon.serve_job_worker, receive.clone())
                async with send, trio.open_nursery() as intake:
                    intake.start_soon(_feed, send.clone(), resumable)
                    await intake.start(
                        partial(
                            serve_intake, watcher=watcher, short_of_space=services.short_of_space
                        ),
                        config,
                        send.clone(),
                        claimer,
                    )
                    logger.info(
                        "daemon.ready",
                        root=str(config.root),
                        engine=engine.name,
                        resumed=len(resumable),
                        inbox=str(folders["inbox"]),
                    )
                    notifier.ready(f"watching {folders['inbox']}")
                    ready.set()
                    task_status.started()
                    await shutdown.wait()
                    services.draining.set()
                    logger.info("daemon.stopping", drain_timeout=config.drain_timeout)
                    notifier.stopping(
                        "draining running jobs", extend_timeout=config.drain_timeout + 30
                    )
                    intake.cancel_scope.cancel()
                workers.cancel_scope.deadline = trio.current_time() + config.drain_timeout
            root.cancel_scope.cancel()


async def _feed(send: trio.MemorySendChannel[Journal], journals: list[Journal]) -> None:
    async with send:
        for journal in journals:
            logger.info("job.resumed", job_id=journal.folder.name)
            await send.send(journal)


async def _serve_signals(
    shutdown: trio.Event,
    ready: trio.Event,
    everything: trio.CancelScope,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if ready.is_set() and not shutdown.is_set():
                logger.info("daemon.signal", signal=name, action="drain")
                shutdown.set()
            else:
                logger.info("daemon.signal", signal=name, action="stop now")
                everything.cancel()


async def _serve_watchdog(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.watchdog()
        await trio.sleep(interval)


def read_progress_files(outbox: Path) -> list[dict[str, object]]:
    """Every progress file in the outbox (for `transcribed status`), newest first."""
    found = []
    for path in outbox.glob("*.progress.json"):
        try:
            found.append(json.loads(path.read_text("utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(found, key=lambda p: str(p.get("updated_at", "")), reverse=True)
