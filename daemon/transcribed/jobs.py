"""One job's pipeline, from a claimed source to published transcripts.

validate (probe) → decode once, plan and cut as the audio streams by → transcribe pieces
concurrently through the shared gate (bounded look-ahead) → journal each piece → merge →
write outputs atomically. `run_job` raises on failure; the caller's job boundary (app.py, cli.py)
decides what happens to the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import structlog
import trio

from transcribed.config import Config
from transcribed.cutting import Piece, PieceCutter
from transcribed.engines.base import Engine, PieceResult
from transcribed.errors import PermanentError, RejectedFileError, RetryableError
from transcribed.gate import Gate
from transcribed.journal import JobRecord, Journal
from transcribed.media import DecodeError, open_pcm_stream, probe
from transcribed.merge import merge_pieces
from transcribed.outputs import write_outputs
from transcribed.planning import SAMPLE_RATE, PieceSpan
from transcribed.progress import JobProgress, ProgressBoard, isoformat

logger = structlog.get_logger()

PIECE_ATTEMPTS = 3
RETRY_DELAY = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    """What every job shares: built once by the app (or the one-shot command)."""

    config: Config
    engine: Engine
    gate: Gate
    board: ProgressBoard


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
    size = source.stat().st_size
    if size == 0:
        raise RejectedFileError(
            "the file is empty (0 bytes)",
            hint="the upload or copy probably failed; drop the recording again",
            code="empty",
        )
    info = await probe(source, timeout=config.probe_timeout)
    log.info("job.probed", format=info.format_name, codec=info.audio_codec, claimed_seconds=info.claimed_duration)
    if info.claimed_duration is not None and 0 < info.claimed_duration <= config.max_audio_seconds:
        # only an estimate for progress: the decoded sample count is what counts
        board.update(progress, audio_seconds_total=info.claimed_duration)

    record, limits = await trio.to_thread.run_sync(journal.fix_limits, record, services.engine.limits)
    done = await trio.to_thread.run_sync(journal.done_pieces)
    results: dict[int, tuple[PieceSpan, PieceResult]] = {}
    warnings: list[str] = []
    counts = {"reused": 0, "silent": 0}
    max_samples = round(config.max_audio_seconds * SAMPLE_RATE)
    lookahead = trio.Semaphore(services.engine.capacity + 1)

    async def finish_piece(span: PieceSpan, result: PieceResult) -> None:
        await trio.to_thread.run_sync(journal.record_piece, span, result)
        results[span.index] = (span, result)
        board.update(
            progress,
            pieces_done=progress.pieces_done + 1,
            audio_seconds_done=progress.audio_seconds_done + (span.keep_end - span.keep_start) / SAMPLE_RATE,
            spent_cost=progress.spent_cost + result.cost,
        )

    async def transcribe_piece(piece: Piece) -> None:
        try:
            board.update(progress, pieces_in_flight=progress.pieces_in_flight + 1)
            try:
                result = await _transcribe_with_retries(services, piece, progress, log)
            finally:
                board.update(progress, pieces_in_flight=progress.pieces_in_flight - 1)
            await finish_piece(piece.span, result)
        finally:
            lookahead.release()

    async def take(piece: Piece, nursery: trio.Nursery) -> None:
        previous = done.get(piece.index)
        if previous is not None and previous[0] == piece.span:
            counts["reused"] += 1
            results[piece.index] = previous
            board.update(
                progress,
                pieces_done=progress.pieces_done + 1,
                audio_seconds_done=progress.audio_seconds_done + (piece.span.keep_end - piece.span.keep_start) / SAMPLE_RATE,
                spent_cost=progress.spent_cost + previous[1].cost,
            )
            return
        if piece.silent:
            counts["silent"] += 1
            await finish_piece(piece.span, PieceResult())
            return
        await lookahead.acquire()
        nursery.start_soon(transcribe_piece, piece, name=f"piece-{piece.index}")

    board.update(progress, state="transcribing", transcribing_since=trio.current_time())
    cutter = PieceCutter(limits)
    async with trio.open_nursery() as nursery:
        try:
            async with open_pcm_stream(
                source, max_seconds=config.max_audio_seconds, stall_timeout=config.decode_stall_timeout
            ) as blocks:
                async for block in blocks:
                    for piece in cutter.feed(block):
                        await take(piece, nursery)
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
            warnings.append(f"the recording is damaged after {at:.1f} s; the rest could not be decoded")
            log.warning("job.decode_incomplete", decoded_seconds=round(at, 2), error=exc.reason)
        total_seconds = cutter.samples_seen / SAMPLE_RATE
        if total_seconds < config.min_audio_seconds:
            nursery.cancel_scope.cancel()
            raise RejectedFileError(
                f"the file holds only {total_seconds:.2f} s of audio",
                hint="check the recording; it is empty or cut off",
                code="too_short",
            )
        board.update(progress, audio_seconds_total=total_seconds)
        for piece in cutter.finish():
            await take(piece, nursery)
        board.update(progress, pieces_total=cutter.pieces_planned)

    board.update(progress, state="merging", pieces_total=len(results))
    segments = merge_pieces((span, result.segments) for span, result in results.values())
    metadata = {
        "source": record.display_name,
        "job_id": record.job_id,
        "engine": services.engine.name,
        "model": services.engine.model,
        "audio_seconds": round(total_seconds, 3),
        "created_at": isoformat(board.now()),
        "warnings": warnings,
    }
    outputs = await trio.to_thread.run_sync(write_outputs, output_dir, record.stem, segments, metadata)
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


def _too_long(limit: float) -> RejectedFileError:
    return RejectedFileError(
        f"the recording is longer than the limit of {limit / 3600:g} hours",
        hint="split it into shorter files, or raise max_audio_seconds",
        code="too_long",
    )


async def _transcribe_with_retries(
    services: Services, piece: Piece, progress: JobProgress, log: structlog.typing.FilteringBoundLogger
) -> PieceResult:
    for attempt in range(1, PIECE_ATTEMPTS + 1):
        try:
            async with services.gate.slot():
                return await services.engine.transcribe(piece.audio)
        except RetryableError as exc:
            if attempt == PIECE_ATTEMPTS:
                raise PermanentError(
                    f"piece {piece.index} failed {attempt} times: {exc.reason}"
                ) from exc
            services.board.update(progress, retries=progress.retries + 1, last_error=exc.reason)
            log.warning("piece.retrying", piece=piece.index, attempt=attempt, error=exc.reason)
            await trio.sleep(exc.retry_after if exc.retry_after is not None else RETRY_DELAY * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


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

