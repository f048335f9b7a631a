"""One job's pipeline, from a claimed source to published transcripts.

validate (probe) → decode once, plan and cut as the audio streams by → transcribe pieces
concurrently through the shared gate (bounded look-ahead) → journal each piece → merge →
write outputs atomically. `run_job` raises on failure; the caller's job boundary (app.py, cli.py)
decides what happens to the source.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import structlog
import trio

from transcribed.config import Config
from transcribed.cutting import Piece, PieceCutter
from transcribed.diarize import KnownSpeakers, label_speakers, speakers_wanted  # issue 12
from transcribed.engines import retry_policy_for
from transcribed.engines.base import Engine, PieceResult
from transcribed.errors import JobInterrupted, RejectedFileError, RetryableError
from transcribed.failpoints import failpoint
from transcribed.gate import Gate
from transcribed.journal import JobRecord, Journal
from transcribed.media import DecodeError, open_pcm_stream, probe
from transcribed.merge import merge_pieces
from transcribed.outputs import write_outputs
from transcribed.planning import SAMPLE_RATE, PieceSpan
from transcribed.progress import JobProgress, ProgressBoard
from transcribed.retry import RetryPolicy, call_with_retries

logger = structlog.get_logger()


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    """What every job shares: built once by the app (or the one-shot command)."""

    config: Config
    engine: Engine
    gate: Gate
    board: ProgressBoard
    # Set when the daemon stops: jobs cut no new pieces, let those in flight finish, and end
    # with JobInterrupted (they resume at the next start).
    draining: trio.Event = field(default_factory=trio.Event)
    # Free bytes on the filesystem holding a folder (injected so tests can fill the disk).
    free_space: Callable[[Path], int] = field(default=lambda path: shutil.disk_usage(path).free)
    # Where the job writes (journal and outputs); empty for the one-shot command's temp dirs.
    watched_folders: tuple[Path, ...] = ()
    # -- speakers (issue 12): voiceprints of the reference clips, made once at start --
    known_speakers: KnownSpeakers = field(default_factory=KnownSpeakers)

    def short_of_space(self) -> str | None:
        """The folder whose filesystem has less than min_free_space_mb free, if any."""
        needed = self.config.min_free_space_mb << 20
        for folder in self.watched_folders:
            if self.free_space(folder) < needed:
                return str(folder)
        return None


DISK_POLL_INTERVAL = 5.0


async def wait_for_disk(services: Services, progress: JobProgress) -> None:
    """Before a job writes: while the disk is short, wait (state `waiting`, reason disk) rather
    than fail or leave half a file; go on when space returns."""
    folder = services.short_of_space()
    if folder is None:
        return
    state = progress.state
    services.board.update(
        progress,
        state="waiting",
        waiting_reason=f"disk: less than {services.config.min_free_space_mb} MiB free under {folder}",
    )
    logger.warning("job.waiting_for_disk", job_id=progress.job_id, folder=folder)
    while services.short_of_space() is not None:  # noqa: ASYNC110 - polling the filesystem, no event to wait on
        await trio.sleep(DISK_POLL_INTERVAL)
    services.board.update(progress, state=state, waiting_reason=None)
    logger.info("job.disk_available", job_id=progress.job_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobOutcome:
    """The summary of a finished job, for the `job.finished` log line and the caller."""

    pieces: int
    pieces_reused: int
    pieces_silent: int
    segments: int
    audio_seconds: float
    cost: float
    outputs: list[Path]
    warnings: list[str] = field(default_factory=list)


def new_progress(services: Services, record: JobRecord) -> JobProgress:
    progress = JobProgress(
        source=record.display_name,
        job_id=record.job_id,
        engine=services.engine.name,
        model=services.engine.model,
    )
    return services.board.add(progress, record.stem)


async def run_job(
    services: Services,
    journal: Journal,
    record: JobRecord,
    progress: JobProgress,
    *,
    output_dir: Path,
    source: Path,
) -> JobOutcome:
    """Run one job to published outputs. Raises RejectedFileError, EngineError or JobError."""
    config, board = services.config, services.board
    log = logger.bind(job_id=record.job_id)

    board.update(progress, state="validating")
    size = source.stat().st_size  # noqa: ASYNC240 - one stat of a local file
    if size == 0:
        raise RejectedFileError(
            "the file is empty (0 bytes)",
            hint="the upload or copy probably failed; drop the recording again",
            code="empty",
        )
    info = await probe(source, timeout=config.probe_timeout, limits=config.media_limits)
    failpoint("job.probed")
    log.info(
        "job.probed",
        format=info.format_name,
        codec=info.audio_codec,
        claimed_seconds=info.claimed_duration,
    )
    if info.claimed_duration is not None and 0 < info.claimed_duration <= config.max_audio_seconds:
        # only an estimate for progress: the decoded sample count is what counts
        board.update(progress, audio_seconds_total=info.claimed_duration)

    price_per_minute = float(getattr(services.engine, "price_per_minute", 0.0))
    if price_per_minute > 0:  # an engine that costs nothing does not pay for this pass
        await _check_cost(services, source, progress, price_per_minute)

    record, limits = await trio.to_thread.run_sync(
        journal.fix_limits, record, services.engine.limits
    )
    done = await trio.to_thread.run_sync(journal.done_pieces)
    results: dict[int, tuple[PieceSpan, PieceResult]] = {}
    warnings: list[str] = []
    counts = {"reused": 0, "silent": 0}
    max_samples = round(config.max_audio_seconds * SAMPLE_RATE)
    lookahead = trio.Semaphore(services.engine.capacity + 1)
    retry_policy = retry_policy_for(config, services.engine)

    async def finish_piece(span: PieceSpan, result: PieceResult) -> None:
        await wait_for_disk(services, progress)
        await trio.to_thread.run_sync(journal.record_piece, span, result)
        results[span.index] = (span, result)
        board.update(
            progress,
            pieces_done=progress.pieces_done + 1,
            audio_seconds_done=progress.audio_seconds_done
            + (span.keep_end - span.keep_start) / SAMPLE_RATE,
            spent_cost=progress.spent_cost + result.cost,
        )

    async def transcribe_piece(piece: Piece) -> None:
        try:
            board.update(progress, pieces_in_flight=progress.pieces_in_flight + 1)
            try:
                result = await _transcribe_with_retries(
                    services, piece, progress, log, retry_policy
                )
            finally:
                board.update(progress, pieces_in_flight=progress.pieces_in_flight - 1)
            await finish_piece(piece.span, result)
        finally:
            lookahead.release()

    async def take(piece: Piece, nursery: trio.Nursery) -> bool:
        """Account for a piece: reuse its journaled result, skip it if silent, or start
        transcribing it. False once the daemon is draining (the piece is left for later)."""
        previous = done.get(piece.index)
        if previous is not None and previous[0] == piece.span:
            counts["reused"] += 1
            results[piece.index] = previous
            board.update(
                progress,
                pieces_done=progress.pieces_done + 1,
                audio_seconds_done=progress.audio_seconds_done
                + (piece.span.keep_end - piece.span.keep_start) / SAMPLE_RATE,
                spent_cost=progress.spent_cost + previous[1].cost,
            )
            return True
        if services.draining.is_set():
            return False
        if piece.silent:
            counts["silent"] += 1
            await finish_piece(piece.span, PieceResult())
            return True
        await lookahead.acquire()
        if services.draining.is_set():
            lookahead.release()
            return False
        nursery.start_soon(transcribe_piece, piece, name=f"piece-{piece.index}")
        return True

    board.update(progress, state="transcribing", transcribing_since=trio.current_time())
    failpoint("job.transcribing")
    cutter = PieceCutter(limits)
    interrupted = False
    async with trio.open_nursery() as nursery:
        try:
            async with _decode(config, source) as blocks:
                async for block in blocks:
                    for piece in cutter.feed(block):
                        interrupted = interrupted or not await take(piece, nursery)
                    if interrupted:
                        break  # the pieces in flight finish; the nursery waits for them
                    if cutter.samples_seen > max_samples:
                        raise _too_long(config.max_audio_seconds)
        except DecodeError as exc:
            if cutter.samples_seen < config.min_audio_seconds * SAMPLE_RATE:
                raise RejectedFileError(
                    f"no usable audio could be decoded: {exc.reason}",
                    hint="the file is damaged or truncated; export or copy it again",
                    code="undecodable",
                ) from exc
            at = cutter.samples_seen / SAMPLE_RATE
            warnings.append(
                f"the recording is damaged after {at:.1f} s; the rest could not be decoded"
            )
            log.warning("job.decode_incomplete", decoded_seconds=round(at, 2), error=exc.reason)
        total_seconds = cutter.samples_seen / SAMPLE_RATE
        if not interrupted and total_seconds < config.min_audio_seconds:
            nursery.cancel_scope.cancel()
            raise RejectedFileError(
                f"the file holds only {total_seconds:.2f} s of audio",
                hint="check the recording; it is empty or cut off",
                code="too_short",
            )
        if not interrupted:
            board.update(progress, audio_seconds_total=total_seconds)
            for piece in cutter.finish():
                interrupted = not await take(piece, nursery)
            board.update(progress, pieces_total=cutter.pieces_planned)
    if interrupted:
        raise JobInterrupted("the daemon is stopping; finished pieces are journaled")

    board.update(progress, state="merging", pieces_total=len(results))
    segments = merge_pieces((span, result.segments) for span, result in results.values())
    # Only what the audio and the engine determine: a resumed job's outputs are byte-identical
    # to an uninterrupted run's (the job id and times are in the progress file).
    metadata = {
        "source": record.display_name,
        "engine": services.engine.name,
        "model": services.engine.model,
        "audio_seconds": round(total_seconds, 3),
        "warnings": warnings,
    }
    # -- speakers (issue 12): a local diarization pass labels the merged segments --
    if speakers_wanted(config, services.engine.name):
        segments, metadata["speakers"] = await label_speakers(
            config, services.known_speakers, source, segments
        )
    recorded = datetime.fromtimestamp(source.stat().st_mtime, UTC).date().isoformat()  # noqa: ASYNC240 - one stat
    # -- end speakers --
    await wait_for_disk(services, progress)
    outputs = await trio.to_thread.run_sync(
        functools.partial(write_outputs, date=recorded, formats=config.outputs),
        output_dir,
        record.stem,
        segments,
        metadata,
    )
    cost = sum(result.cost for _, result in results.values())
    return JobOutcome(
        pieces=len(results),
        pieces_reused=counts["reused"],
        pieces_silent=counts["silent"],
        segments=len(segments),
        audio_seconds=total_seconds,
        cost=cost,
        outputs=outputs,
        warnings=warnings,
    )


def _decode(config: Config, source: Path) -> AbstractAsyncContextManager[AsyncIterator[np.ndarray]]:
    """The source's audio as 16 kHz mono blocks, under the configured limits."""
    return open_pcm_stream(
        source,
        max_seconds=config.max_audio_seconds,
        stall_timeout=config.decode_stall_timeout,
        limits=config.media_limits,
    )


def _too_long(limit: float) -> RejectedFileError:
    return RejectedFileError(
        f"the recording is longer than the limit of {limit / 3600:g} hours",
        hint="split it into shorter files, or raise max_audio_seconds",
        code="too_long",
    )


async def _check_cost(
    services: Services, source: Path, progress: JobProgress, price_per_minute: float
) -> None:
    """Before any spend: decode once to count the real samples (never the header's claim),
    publish the estimated cost, and refuse the file if it is over the cap."""
    config = services.config
    samples = 0
    try:
        async with _decode(config, source) as blocks:
            async for block in blocks:
                samples += len(block)
    except DecodeError as exc:
        samples = exc.samples  # what decodes is what will be sent; the main pass reports damage
    seconds = samples / SAMPLE_RATE
    if seconds > config.max_audio_seconds:
        raise _too_long(config.max_audio_seconds)
    estimate = price_per_minute * seconds / 60.0
    services.board.update(progress, estimated_cost=estimate, audio_seconds_total=seconds)
    cap = config.openai.max_cost_per_file
    if estimate > cap:
        raise RejectedFileError(
            f"transcribing these {seconds / 60:.1f} minutes would cost about ${estimate:.2f}, "
            f"over the limit of ${cap:.2f} per file",
            hint="raise openai.max_cost_per_file, or split the recording",
            code="too_expensive",
        )


async def _transcribe_with_retries(
    services: Services,
    piece: Piece,
    progress: JobProgress,
    log: structlog.typing.FilteringBoundLogger,
    policy: RetryPolicy,
) -> PieceResult:
    board = services.board

    def on_retry(error: RetryableError, failures: int) -> None:
        board.update(progress, retries=progress.retries + 1, last_error=error.reason)
        log.warning(
            "piece.retrying",
            piece=piece.index,
            failures=failures,
            error=error.reason,
            retry_after=error.retry_after,
        )

    def on_wait(reason: str | None) -> None:
        if reason is not None:
            board.update(progress, state="waiting", waiting_reason=reason)
            log.warning("job.waiting", reason=reason, piece=piece.index)
        elif progress.state == "waiting":
            board.update(progress, state="transcribing", waiting_reason=None)
            log.info("job.resuming", piece=piece.index)

    return await call_with_retries(
        lambda: services.engine.transcribe(piece.audio),
        gate=services.gate,
        policy=policy,
        on_retry=on_retry,
        on_wait=on_wait,
    )


def job_summary(record: JobRecord, outcome: JobOutcome) -> dict[str, object]:
    return {
        "source": record.display_name,
        "pieces": outcome.pieces,
        "pieces_reused": outcome.pieces_reused,
        "pieces_silent": outcome.pieces_silent,
        "segments": outcome.segments,
        "audio_seconds": round(outcome.audio_seconds, 2),
        "cost": round(outcome.cost, 4),
        "warnings": outcome.warnings,
    }
