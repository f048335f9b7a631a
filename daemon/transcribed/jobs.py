"""One job's pipeline, from a claimed source to published transcripts, as named steps.

    validate        the source is still what was claimed, not empty, readable, media with audio
    check_claims    a header that claims too long or too costly a recording: count the real
                    samples first and refuse it before anything is spent (no pass otherwise)
    PieceScheduler  decode once, plan and cut as the audio streams by, reuse journaled pieces,
                    skip silent ones, transcribe the rest concurrently through the shared gate
                    with a bounded look-ahead, journal each; stop cutting when the daemon drains
    SpeakerPass     (when speakers are wanted) diarize the source beside the scheduler, in a
                    worker process; cancelled if the transcription fails or the daemon drains
    merge           piece results → one timed transcript, warnings; then the speakers onto it
    publish         the source is still unchanged, the disk has room, outputs written atomically

`run_job` runs them in order over a `Job` and raises the job's own error (never an exception
group): RejectedFileError (the file's fault), ServiceFault (a folder's), SourceChanged (start
over), JobInterrupted (draining), EngineError. The job boundary (boundary.py) decides what each
means for the source.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog
import trio

from transcribed import metrics
from transcribed.config import Config
from transcribed.cutting import Piece, PieceCutter
from transcribed.diarize import (
    Diarization,
    KnownSpeakers,
    diarize_recording,
    label_segments,
    speakers_wanted,
)
from transcribed.engines.base import Engine, EngineTraits, PieceResult, PreparedPiece, Segment
from transcribed.errors import (
    JobInterrupted,
    RejectedFileError,
    RetryableError,
    ServiceFault,
    SourceChanged,
    TranscribedError,
)
from transcribed.failpoints import failpoint
from transcribed.gate import Gate
from transcribed.journal import JobRecord, Journal
from transcribed.media import DecodeError, Decoder, ProbeResult
from transcribed.merge import merge_pieces
from transcribed.outputs import write_outputs
from transcribed.planning import SAMPLE_RATE, PieceLimits, PieceSpan
from transcribed.progress import JobProgress, ProgressBoard
from transcribed.retry import call_with_retries
from transcribed.stitching import split_result, stitched
from transcribed.subtitles import SubtitleRules

logger = structlog.get_logger()

DISK_POLL_INTERVAL = 5.0
# Pieces prepared (encoded for upload) at once, by all jobs together: encoding is CPU work, so
# more than the machine's cores only holds more PCM; a job's decode waits while they are all
# busy, so the samples in memory are a planning window a job plus this many pieces, however
# long the recordings.
PREPARERS = max(1, min(4, len(os.sched_getaffinity(0))))
# a decoded length this much below the header's claim is worth a warning (and 1 s besides,
# for containers whose claim is only approximate)
SHORTFALL_WARNING = 0.05
STALL_GRACE = 3.0


class ServiceHealth:
    """Faults of the service that jobs are waiting out now (a folder that cannot be written):
    while there is one, intake claims nothing, so no new file walks into the same wall."""

    def __init__(self) -> None:
        self._faults: dict[str, str] = {}

    def report(self, key: str, reason: str) -> None:
        self._faults[key] = reason

    def clear(self, key: str) -> None:
        self._faults.pop(key, None)

    def reason(self) -> str | None:
        return next(iter(self._faults.values()), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    """What every job shares: built once by the app (or the one-shot command)."""

    config: Config
    engine: Engine
    gate: Gate
    board: ProgressBoard
    decoder: Decoder
    # Set when the daemon stops: jobs cut no new pieces, let those in flight finish, and end
    # with JobInterrupted (they resume at the next start).
    draining: trio.Event = field(default_factory=trio.Event)
    health: ServiceHealth = field(default_factory=ServiceHealth)
    preparers: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(PREPARERS))
    # voiceprints of the reference clips that name known speakers, made once at start
    known_speakers: KnownSpeakers = field(default_factory=KnownSpeakers)
    # Free bytes on the filesystem holding a folder (injected so tests can fill the disk).
    free_space: Callable[[Path], int] = field(default=lambda path: shutil.disk_usage(path).free)
    # Where the job writes (journal and outputs); empty for the one-shot command's temp dirs.
    watched_folders: tuple[Path, ...] = ()

    @property
    def traits(self) -> EngineTraits:
        return self.engine.traits

    def short_of_space(self) -> str | None:
        """The folder whose filesystem has less than min_free_space_mb free, if any."""
        needed = self.config.min_free_space_mb << 20
        for folder in self.watched_folders:
            try:
                if self.free_space(folder) < needed:
                    return str(folder)
            except OSError:
                return str(folder)  # a folder that vanished: no room to write there either
        return None

    def pause_reason(self) -> str | None:
        """Why nothing new should be claimed now, if anything: the disk, a folder, the engine."""
        short = self.short_of_space()
        if short is not None:
            return f"disk: less than {self.config.min_free_space_mb} MiB free under {short}"
        suspension = self.gate.suspension
        if suspension is not None:
            return f"{suspension.kind}: {suspension.reason}"
        return self.health.reason()


@dataclass(slots=True, kw_only=True)
class Job:
    """One job's context: what every step reads and the little they write."""

    services: Services
    journal: Journal
    record: JobRecord
    progress: JobProgress
    source: Path
    output_dir: Path
    warnings: list[str] = field(default_factory=list)
    info: ProbeResult | None = None  # what ffprobe said, once validated
    looks_cut_off: bool = False  # decoded well short of the header's claim

    @property
    def config(self) -> Config:
        return self.services.config

    @property
    def board(self) -> ProgressBoard:
        return self.services.board

    def update(self, **changes: object) -> None:
        self.board.update(self.progress, **changes)

    @property
    def track(self) -> int:
        """The audio track transcribed: the default one (ffprobe's choice), else the first."""
        return self.info.chosen_track if self.info is not None else 0


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


def source_key(path: Path) -> list[int]:
    """(inode, size, mtime_ns) of a file: what "unchanged" means for a source."""
    info = path.stat()
    return [info.st_ino, info.st_size, info.st_mtime_ns]


def folder_fault(exc: OSError, what: str) -> ServiceFault:
    """An OSError while writing, as the service fault it is (never the file's)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ServiceFault(
            f"no space left to {what}",
            hint="free some disk space; the job goes on by itself",
            kind="disk",
        )
    return ServiceFault(
        f"cannot {what}: {exc.strerror or type(exc).__name__}",
        hint="check the folder exists and the daemon's user may write to it (permissions, a "
        "read-only mount); the job goes on by itself once it can",
        kind="folder",
    )


async def wait_for_disk(job: Job) -> None:
    """Before a job writes: while the disk is short, wait (state `waiting`, reason disk) rather
    than fail or leave half a file; go on when space returns."""
    services = job.services
    folder = services.short_of_space()
    if folder is None:
        return
    state = job.progress.state
    job.update(
        state="waiting",
        waiting_reason=f"disk: less than {services.config.min_free_space_mb} MiB free under {folder}",
    )
    logger.warning("job.waiting_for_disk", folder=folder)
    while services.short_of_space() is not None:  # noqa: ASYNC110 - polling the filesystem, no event to wait on
        await trio.sleep(DISK_POLL_INTERVAL)
    job.update(state=state, waiting_reason=None)
    logger.info("job.disk_available")


# ---------------------------------------------------------------- the steps


async def check_source_unchanged(job: Job) -> None:
    """SourceChanged if the source is not the file that was claimed (the producer went on
    writing after the claim); recorded keys from before this check existed are trusted."""
    if job.record.source_key is None:
        return
    key = await trio.to_thread.run_sync(source_key, job.source)
    if key[1:] != job.record.source_key[1:]:
        raise SourceChanged(
            "the file changed after it was claimed (the copy was not finished)",
            hint="producers should copy under a temporary name (NAME.part) and rename when done",
        )


async def validate(job: Job) -> ProbeResult:
    """Fail fast, before any spend: the source must be the claimed file, not empty, readable by
    the daemon's user, and a recording with audio."""
    job.update(state="validating")
    await check_source_unchanged(job)
    size = job.source.stat().st_size
    if size == 0:
        raise RejectedFileError(
            "the file is empty (0 bytes)",
            hint="the upload or copy probably failed; drop the recording again",
            code="empty",
        )
    if not os.access(job.source, os.R_OK):
        raise RejectedFileError(
            "the daemon's user cannot read this file (its permissions do not allow it)",
            hint="make it readable (e.g. chmod a+r before dropping it) and drop it again",
            code="unreadable",
        )
    info = await job.services.decoder.probe(job.source)
    failpoint("job.probed")
    logger.info(
        "job.probed",
        format=info.format_name,
        codec=info.audio_codec,
        claimed_seconds=info.claimed_duration,
    )
    job.info = info
    job.warnings.extend(w for w in [info.track_warning()] if w)
    claimed = info.claimed_duration
    if claimed is not None and 0 < claimed <= job.config.max_audio_seconds:
        # only an estimate for progress: the decoded sample count is what counts
        job.update(audio_seconds_total=claimed)
    return info


def too_long(limit: float) -> RejectedFileError:
    return RejectedFileError(
        f"the recording is longer than the limit of {limit / 3600:g} hours",
        hint="split it into shorter files, or raise max_audio_seconds",
        code="too_long",
    )


def cost_cap(job: Job) -> float:
    """The most this job may spend, in US dollars: infinite for an engine that costs nothing or
    with the cap switched off (openai.max_cost_per_file = 0)."""
    cap = job.config.openai.max_cost_per_file
    return cap if job.services.traits.price_per_minute > 0 and cap > 0 else float("inf")


def too_expensive(job: Job, seconds: float, *, spent: float | None = None) -> RejectedFileError:
    cap = job.config.openai.max_cost_per_file
    estimate = job.services.traits.cost(seconds)
    paid = (
        "nothing was sent" if not spent else f"it stopped there, having spent at most ${spent:.4f}"
    )
    return RejectedFileError(
        f"transcribing {'these' if spent is None else 'more than'} {seconds / 60:.1f} minutes "
        f"would cost {'about' if spent is None else 'over'} ${estimate:.2f}, over the limit of "
        f"${cap:.2f} per file; {paid}",
        hint="raise openai.max_cost_per_file, or split the recording",
        code="too_expensive",
    )


async def check_claims(job: Job) -> None:
    """No pre-pass: spending starts with the first piece, and the cost cap and the length limit
    are kept on the decoded audio as it streams (PieceScheduler). Only when the header itself
    claims too much is the audio counted first (nothing is spent on that), so that a file whose
    header overstates its length is not refused for it, and one that is too long or too
    expensive is refused before a cent goes out."""
    config, traits = job.config, job.services.traits
    claimed = job.info.claimed_duration if job.info is not None else None
    if claimed is None or claimed <= 0:
        return
    job.update(estimated_cost=traits.cost(claimed))
    if traits.price_per_minute <= 0:
        return  # a free engine loses nothing by finding out as it streams
    if claimed <= config.max_audio_seconds and traits.cost(claimed) <= cost_cap(job):
        return
    samples = 0
    try:
        async with job.services.decoder.open_pcm(job.source, audio_track=job.track) as blocks:
            async for block in blocks:
                samples += len(block)
    except DecodeError as exc:
        samples = exc.samples  # what decodes is what would be sent; the main pass reports damage
    seconds = samples / SAMPLE_RATE
    if seconds > config.max_audio_seconds:
        raise too_long(config.max_audio_seconds)
    job.update(estimated_cost=traits.cost(seconds), audio_seconds_total=seconds)
    if traits.cost(seconds) > cost_cap(job):
        raise too_expensive(job, seconds)


class PieceScheduler:
    """Decode once; cut, reuse, skip or transcribe each piece as the audio streams by.

    At most `capacity + 1` pieces are cut ahead of the engine (the look-ahead), of which at most
    PREPARERS hold samples (being encoded); the rest hold what the engine prepared (an upload's
    bytes), so memory holds a few pieces however long the recording. A piece's failure is kept and cancels the rest; `run`
    raises that one error. Once the daemon drains, no new piece is started, those in flight
    finish, and `run` raises JobInterrupted.

    The cost cap holds on the decoded audio, not on the header's claim: the moment the audio
    decoded so far would cost more than the cap, or the next piece would take what is committed
    (sent and reused pieces) past it, nothing more is sent and the file ends too_expensive,
    having spent at most the cap (retries a server billed aside).
    """

    def __init__(
        self, job: Job, limits: PieceLimits, done: dict[int, tuple[PieceSpan, PieceResult]]
    ) -> None:
        self.job = job
        self.limits = limits
        self.done = done
        self.results: dict[int, tuple[PieceSpan, PieceResult]] = {}
        self.reused = 0
        self.silent = 0
        self.samples = 0
        self.cap = cost_cap(job)
        self.committed = 0.0  # the cost of every piece sent or reused so far
        self._lookahead = trio.Semaphore(job.services.traits.capacity + 1)
        self._group: list[Piece] = []  # pieces with sound gathered for the next request
        self._group_cost = 0.0
        self._failure: Exception | None = None
        self._interrupted = False

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            try:
                await self._stream(nursery)
            except Exception as exc:
                self._fail(exc, nursery.cancel_scope)
        if self._failure is not None:
            raise self._failure
        if self._interrupted:
            raise JobInterrupted("the daemon is stopping; finished pieces are journaled")

    def _check_cap(self, samples: int) -> None:
        """too_expensive once the audio decoded so far would cost more than the cap."""
        seconds = samples / SAMPLE_RATE
        if self.job.services.traits.cost(seconds) > self.cap:
            raise too_expensive(self.job, seconds, spent=self.committed)

    def _fail(self, exc: Exception, scope: trio.CancelScope) -> None:
        if self._failure is None:
            self._failure = exc
        scope.cancel()

    async def _stream(self, nursery: trio.Nursery) -> None:
        job, config = self.job, self.job.config
        max_samples = round(config.max_audio_seconds * SAMPLE_RATE)
        cutter = PieceCutter(self.limits)
        job.update(state="transcribing", transcribing_since=trio.current_time())
        failpoint("job.transcribing")
        try:
            async with job.services.decoder.open_pcm(job.source, audio_track=job.track) as blocks:
                async for block in blocks:
                    for piece in cutter.feed(block):
                        await self._take(piece, nursery)
                    if self._interrupted:
                        return  # the pieces in flight finish; the nursery waits for them
                    if cutter.samples_seen > max_samples:
                        raise too_long(config.max_audio_seconds)
                    self._check_cap(cutter.samples_seen)
        except DecodeError as exc:
            if cutter.samples_seen < config.min_audio_seconds * SAMPLE_RATE:
                raise RejectedFileError(
                    f"no usable audio could be decoded: {exc.reason}",
                    hint="the file is damaged or truncated; export or copy it again",
                    code="undecodable",
                ) from exc
            at = cutter.samples_seen / SAMPLE_RATE
            job.warnings.append(
                f"the recording is damaged after {at:.1f} s; the rest could not be decoded"
            )
            logger.warning("job.decode_incomplete", decoded_seconds=round(at, 2), error=exc.reason)
        self.samples = cutter.samples_seen
        seconds = self.samples / SAMPLE_RATE
        if seconds < config.min_audio_seconds:
            raise RejectedFileError(
                f"the file holds only {seconds:.2f} s of audio",
                hint="check the recording; it is empty or cut off",
                code="too_short",
            )
        job.update(audio_seconds_total=seconds, estimated_cost=job.services.traits.cost(seconds))
        for piece in cutter.finish():
            await self._take(piece, nursery)
        await self._send_group(nursery)
        job.update(pieces_total=cutter.pieces_planned)

    async def _take(self, piece: Piece, nursery: trio.Nursery) -> None:
        """Account for a piece: reuse its journaled result, skip it if silent, or add it to the
        group of pieces sent in one request (planning.py, "Stitching"), sending the group before
        it once it is complete. Once the daemon is draining, the piece is left for the next
        start."""
        previous = self.done.get(piece.index)
        if previous is not None and previous[0] == piece.span:
            if not piece.silent:  # a silence journaled inside a group leaves it open, as it did
                await self._send_group(nursery)
            self.committed += previous[1].cost
            self.reused += 1
            metrics.count_piece("reused")
            self._count(piece.span, previous[1], doubtful=previous[1].possibly_billed_cost)
            return
        if self._interrupted or self.job.services.draining.is_set():
            self._interrupted = True
            return
        if piece.silent:  # (a silence inside a group leaves it open)
            self.silent += 1
            metrics.count_piece("silent")
            await self._finish(piece.span, PieceResult())
            return
        if not piece.joins:
            await self._send_group(nursery)
        cost = self.job.services.traits.cost(piece.span.seconds)
        if self.committed + self._group_cost + cost > self.cap:
            raise too_expensive(self.job, piece.span.end / SAMPLE_RATE, spent=self.committed)
        self._group.append(piece)
        self._group_cost += cost

    async def _send_group(self, nursery: trio.Nursery) -> None:
        """Start transcribing the pieces gathered for one request, if any."""
        group, self._group = self._group, []
        if not group:
            return
        self.committed += self._group_cost
        self._group_cost = 0.0
        await self._lookahead.acquire()
        await self.job.services.preparers.acquire()  # the decode waits here: PCM never piles up
        if self.job.services.draining.is_set():
            self.job.services.preparers.release()
            self._lookahead.release()
            self._interrupted = True
            return
        nursery.start_soon(
            self._transcribe, group, nursery.cancel_scope, name=f"piece-{group[0].index}"
        )

    async def _transcribe(self, group: list[Piece], scope: trio.CancelScope) -> None:
        job = self.job
        spans = [piece.span for piece in group]
        try:
            # prepared once, before the gate: a retry never encodes again, and a request slot
            # is never spent encoding; the samples go (unless the engine keeps them)
            try:
                prepared = await job.services.engine.prepare(stitched([p.audio for p in group]))
            finally:
                self.job.services.preparers.release()
            del group
            job.update(pieces_in_flight=job.progress.pieces_in_flight + len(spans))
            try:
                result = await transcribe_with_retries(
                    job, spans[0].index, prepared, pieces=len(spans)
                )
            finally:
                job.update(pieces_in_flight=job.progress.pieces_in_flight - len(spans))
            for span, part in zip(
                spans, split_result(result, [span.seconds for span in spans]), strict=True
            ):
                await self._finish(span, part)
        except _Abandoned:
            self._interrupted = True
        except Exception as exc:
            self._fail(exc, scope)
        finally:
            self._lookahead.release()

    async def _finish(self, span: PieceSpan, result: PieceResult) -> None:
        await wait_for_disk(self.job)
        try:
            await trio.to_thread.run_sync(self.job.journal.record_piece, span, result)
        except OSError as exc:
            raise folder_fault(
                exc, f"journal a finished piece in {self.job.journal.folder}"
            ) from exc
        self._count(span, result)

    def _count(self, span: PieceSpan, result: PieceResult, *, doubtful: float = 0.0) -> None:
        """A finished piece in the job's progress. Its doubtful attempts were counted as they
        happened (transcribe_with_retries); only a resumed piece brings them from the journal."""
        self.results[span.index] = (span, result)
        progress = self.job.progress
        self.job.update(
            pieces_done=progress.pieces_done + 1,
            audio_seconds_done=progress.audio_seconds_done
            + (span.keep_end - span.keep_start) / SAMPLE_RATE,
            spent_cost=progress.spent_cost + result.cost,
            possibly_billed_cost=progress.possibly_billed_cost + doubtful,
        )


class _Abandoned(Exception):
    """The daemon began draining before this piece's request went out: it is left for the next
    start, not sent (only pieces already in flight finish)."""


async def transcribe_with_retries(
    job: Job, index: int, piece: PreparedPiece, *, pieces: int = 1
) -> PieceResult:
    """One prepared upload (`pieces` stitched pieces, the first numbered `index`) through the
    shared gate, retried as the engine's policy says, with every retry and service wait shown
    in the job's progress. Raises _Abandoned when the daemon drains before an attempt starts."""
    services = job.services
    counted = 0.0  # of the piece's doubtful cost, what the job's progress shows already

    def count_doubtful() -> None:
        # an attempt sent in full without a usable answer may have been billed: the spent
        # cost's upper bound shows it at once, not only when (if ever) the piece is answered
        nonlocal counted
        grown = piece.ledger.possibly_billed_cost - counted
        if grown > 0:
            counted += grown
            job.update(possibly_billed_cost=job.progress.possibly_billed_cost + grown)

    async def attempt() -> PieceResult:
        if services.draining.is_set():
            raise _Abandoned
        try:
            return await services.engine.transcribe(piece)
        finally:
            count_doubtful()

    def on_retry(error: RetryableError, failures: int) -> None:
        job.update(retries=job.progress.retries + 1, last_error=error.reason)
        metrics.count_retry(error)
        logger.warning(
            "piece.retrying",
            piece=index,
            failures=failures,
            error=error.reason,
            retry_after=error.retry_after,
        )

    def on_wait(reason: str | None) -> None:
        if reason is not None:
            job.update(state="waiting", waiting_reason=reason)
            logger.warning("job.waiting", reason=reason, piece=index)
        elif job.progress.state == "waiting":
            job.update(state="transcribing", waiting_reason=None)
            logger.info("job.resuming", piece=index)

    return await metrics.timed_piece(  # counts the pieces, the request's latency and cost
        call_with_retries(
            attempt,
            gate=services.gate,
            policy=services.traits.retry,
            on_retry=on_retry,
            on_wait=on_wait,
        ),
        pieces=pieces,
    )


def merge(job: Job, scheduler: PieceScheduler) -> list[Segment]:
    """The pieces' results as one transcript, and the warnings a reader should see."""
    job.update(state="merging", pieces_total=len(scheduler.results))
    segments = merge_pieces((span, result.segments) for span, result in scheduler.results.values())
    seconds = scheduler.samples / SAMPLE_RATE
    claimed = job.info.claimed_duration if job.info is not None else None
    if claimed is not None and seconds < claimed * (1 - SHORTFALL_WARNING) - 1.0:
        job.looks_cut_off = True
        job.warnings.append(
            f"only {seconds:.1f} s of audio decoded, but the file's header claims {claimed:.1f} s: "
            "the recording may be cut off (an upload or copy that did not finish?)"
        )
    elif job.info is not None:
        job.warnings.extend(w for w in [job.info.length_warning(seconds)] if w)
    return segments  # (a transcript without speech is said so by write_outputs)


SPEAKERS_PENDING = "speakers: every piece is transcribed; finding who spoke when"


class SpeakerPass:
    """Who spoke when, found beside the transcription: the diarization of the source starts
    when the job starts transcribing and is waited for after the merge.

    Its failure is the diarizer's, never the file's (a worker that crashed, models altered
    since start): it is kept, not raised, and the transcript is published without speakers
    with a warning saying why. Only Cancelled passes through `run`.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.result: Diarization | None = None
        self.failure: str | None = None
        self.finished = trio.Event()

    async def run(self) -> None:
        job = self.job
        try:
            self.result = await diarize_recording(
                job.config, job.services.known_speakers, job.source, audio_track=job.track
            )
        except TranscribedError as exc:
            self.failure = exc.reason
            logger.warning("job.diarization_failed", error=self.failure)
        except Exception as exc:  # a bug in the pass: the transcript is still worth having
            self.failure = f"internal error: {type(exc).__name__}: {exc}"
            logger.exception("job.diarization_failed", error=self.failure)
        finally:
            self.finished.set()

    async def wait(self) -> None:
        """Until the diarization ends; JobInterrupted if the daemon drains first (every piece
        is journaled: the next start reuses them and diarizes again)."""
        draining = self.job.services.draining
        async with trio.open_nursery() as nursery:

            async def stop_when(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_when, self.finished)
            nursery.start_soon(stop_when, draining)
        if not self.finished.is_set():
            raise JobInterrupted("the daemon is stopping; finished pieces are journaled")

    def label(
        self, segments: list[Segment]
    ) -> tuple[list[Segment], list[dict[str, object]] | None]:
        """The merged segments with speakers and the speakers' list; unlabelled, with a warning,
        if the diarization failed."""
        if self.result is None:
            self.job.warnings.append(
                f"speakers could not be labelled: {self.failure or 'the diarization did not run'}"
            )
            return segments, None
        return label_segments(segments, self.result)


async def transcribe_and_label(
    job: Job, scheduler: PieceScheduler
) -> tuple[list[Segment], list[dict[str, object]] | None]:
    """Transcribe (the scheduler) and, when the configuration wants speakers for this engine,
    diarize the source at the same time; then merge and label the merged segments.

    A failure of the transcription (or a drain) cancels the diarization, whose worker process
    is killed and reaped before this returns; the one error is raised as the scheduler raised
    it, never inside an exception group."""
    if not speakers_wanted(job.config, job.services.traits.name):
        await scheduler.run()
        return merge(job, scheduler), None
    speaker_pass = SpeakerPass(job)
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(speaker_pass.run, name="diarization")
        try:
            await scheduler.run()
            segments = merge(job, scheduler)
            if not speaker_pass.finished.is_set():
                # the transcript is ready and the pass is not: say what the job is waiting for
                job.update(waiting_reason=SPEAKERS_PENDING)
                await speaker_pass.wait()
                job.update(waiting_reason=None)
        except Exception as exc:
            failure = exc
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return speaker_pass.label(segments)


async def publish(
    job: Job,
    segments: list[Segment],
    seconds: float,
    speakers: list[dict[str, object]] | None = None,
) -> list[Path]:
    """Write the outputs, only if the source is still the file that was transcribed. A source
    that decoded well short of its header's claim may be a copy that stalled past the settle
    time: it must stay unchanged a while longer (STALL_GRACE settle intervals) first."""
    if job.looks_cut_off:
        job.update(waiting_reason="settling: the file looks cut off; making sure the copy is done")
        await trio.sleep(STALL_GRACE * job.config.settle_interval)
        job.update(waiting_reason=None)
    await check_source_unchanged(job)
    # Only what the audio and the engine determine: a resumed job's outputs are byte-identical
    # to an uninterrupted run's (the job id and times are in the progress file).
    metadata = {
        "source": job.record.display_name,
        "engine": job.services.traits.name,
        "model": job.services.traits.model,
        "audio_seconds": round(seconds, 3),
        "warnings": job.warnings,
    }
    if speakers is not None:
        metadata["speakers"] = speakers
    # the .docx title block's date: the recording file's (not the job's: resumes stay identical)
    recorded = datetime.fromtimestamp(job.source.stat().st_mtime, UTC).date().isoformat()
    await wait_for_disk(job)
    try:
        rules = SubtitleRules(**dataclasses.asdict(job.config.subtitles))
        write = functools.partial(write_outputs, date=recorded, formats=job.config.outputs)
        return await trio.to_thread.run_sync(
            write, job.output_dir, job.record.stem, segments, metadata, rules
        )
    except OSError as exc:
        raise folder_fault(exc, f"write the transcript into {job.output_dir}") from exc


async def run_job(job: Job) -> JobOutcome:
    """Run one job to published outputs; raises the job's own error."""
    await validate(job)
    await check_claims(job)
    journal = job.journal
    # --- issue 11: the schedule aims at the header's claimed length (a resume keeps the
    # recorded one, and the parallelism recorded with it)
    traits = job.services.traits
    claimed = job.info.claimed_duration if job.info is not None else None
    planned = traits.limits.scheduled(total_seconds=claimed, parallelism=traits.capacity)
    # --- end issue 11
    try:
        job.record, limits = await trio.to_thread.run_sync(journal.fix_limits, job.record, planned)
        done = await trio.to_thread.run_sync(journal.done_pieces)
    except OSError as exc:
        raise folder_fault(exc, f"write the job's journal in {journal.folder}") from exc
    scheduler = PieceScheduler(job, limits, done)
    segments, speakers = await transcribe_and_label(job, scheduler)
    seconds = scheduler.samples / SAMPLE_RATE
    outputs = await publish(job, segments, seconds, speakers)
    return JobOutcome(
        pieces=len(scheduler.results),
        pieces_reused=scheduler.reused,
        pieces_silent=scheduler.silent,
        segments=len(segments),
        audio_seconds=seconds,
        cost=sum(result.cost for _, result in scheduler.results.values()),
        outputs=outputs,
        warnings=job.warnings,
    )
