"""One job's state on disk, in work/JOB/: enough to resume after a crash without paying twice.

    work/JOB/job.json            who the job is: ids, the original name, the output stem,
                                 the source's identity at claim, attempts (crashes without
                                 progress), the piece limits fixed at first planning, the
                                 profile whose inbox subfolder it came from
    work/JOB/source.EXT          the claimed recording (renamed here from the inbox)
    work/JOB/pieces/NNNNNN.json  one finished piece: its span and the engine's segments

`recover_work` reads work/ at start: jobs to resume, leftovers of interrupted claims to remove,
unreadable records to quarantine. A piece is done if and only if its file exists; every file is written atomically and fsynced
before it counts. Planning is deterministic, so a resumed job re-plans the same pieces and
sends only those without a file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from transcribed.atomic import atomic_write_json
from transcribed.config import is_profile_name
from transcribed.engines.base import PieceResult, Segment
from transcribed.failpoints import failpoint
from transcribed.naming import StemRegistries
from transcribed.planning import PieceLimits, PieceSpan

logger = structlog.get_logger()

JOB_FILE = "job.json"
PIECES = "pieces"
TRASH_PREFIX = ".trash-"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """The contents of job.json."""

    job_id: str
    # the original name (PROFILE/NAME for a profile's), printable (undecodable bytes escaped)
    display_name: str
    name_b64: str  # the original name's exact bytes (PROFILE/NAME for a profile's)
    stem: str  # outputs are OUTBOX/STEM.txt etc. (OUTBOX/PROFILE/STEM.txt for a profile's)
    source_file: str  # name of the source inside work/JOB/
    claimed_at: str
    # consecutive runs that started and never ended (the process died), without a new piece
    # journaled in between: the poison count
    attempts: int = 0
    pieces_at_attempt: int = 0  # pieces journaled when the last counted run started
    state: str = "claimed"  # claiming | claimed | published | failed
    # (inode, size, mtime_ns) of the source when it was claimed: a source that changes after
    # its claim was still being written
    source_key: list[int] | None = None
    limits: dict[str, float] | None = None
    outputs: list[str] | None = None  # once published
    error: dict[str, str] | None = None  # once failed: error, reason, what_to_do
    # the [profiles.NAME] whose subfolder of the inbox it came from; None: the inbox itself
    profile: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class CorruptJob(Exception):
    """job.json cannot be read (truncated, not JSON, missing fields): this one job is quarantined,
    the daemon goes on with the others."""


class Journal:
    """Reads and writes one job's folder. Methods do blocking I/O: call them from a thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pieces = folder / PIECES

    def load(self) -> JobRecord:
        """The job's record; CorruptJob if job.json is unreadable."""
        try:
            data = json.loads((self.folder / JOB_FILE).read_text("utf-8"))
            fields = {f.name for f in dataclasses.fields(JobRecord)}
            record = JobRecord(**{k: v for k, v in data.items() if k in fields})
            if record.profile is not None and not is_profile_name(str(record.profile)):
                # it names subfolders: a damaged one must never make a path outside them
                raise ValueError(f"no profile is named {record.profile!r}")
            return record
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise CorruptJob(f"{self.folder / JOB_FILE} is unreadable: {exc}") from exc

    def save(self, record: JobRecord) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / JOB_FILE, record.as_dict())

    def source_path(self, record: JobRecord) -> Path:
        """The job's source: claimed into the job folder, or (a one-shot job, whose source stays
        where it is) the absolute path its record names."""
        return self.folder / record.source_file  # an absolute source_file wins the join

    def fix_limits(self, record: JobRecord, limits: PieceLimits) -> tuple[JobRecord, PieceLimits]:
        """The limits this job plans with: those of its first planning (the engine's limits,
        the claimed length and the parallelism its schedule aimed at), kept for resumes."""
        if record.limits is not None:
            return record, PieceLimits.from_dict(record.limits)
        record = dataclasses.replace(record, limits=limits.as_dict())
        self.save(record)
        return record, limits

    def record_piece(self, span: PieceSpan, result: PieceResult) -> None:
        self.pieces.mkdir(exist_ok=True)
        failpoint("journal.piece")
        atomic_write_json(
            self.pieces / f"{span.index:06d}.json",
            {
                "span": dataclasses.asdict(span),
                "segments": [s.as_dict() for s in result.segments],
                "cost": result.cost,
                # kept so a resumed job's spent_upper_bound still counts this piece's doubtful
                # attempts (a hang, a billed 5xx) and not only its answered one
                "possibly_billed_cost": result.possibly_billed_cost,
            },
        )

    def done_pieces(self) -> dict[int, tuple[PieceSpan, PieceResult]]:
        done: dict[int, tuple[PieceSpan, PieceResult]] = {}
        if not self.pieces.is_dir():
            return done
        for entry in os.scandir(self.pieces):
            if entry.name.startswith(".") or not entry.name.endswith(".json"):
                continue
            try:
                data = json.loads(Path(entry.path).read_text("utf-8"))
                span = PieceSpan(**data["span"])
                result = PieceResult(
                    segments=[Segment.from_dict(s) for s in data["segments"]],
                    cost=float(data.get("cost", 0.0)),
                    possibly_billed_cost=float(data.get("possibly_billed_cost", 0.0)),
                )
            except (ValueError, TypeError, KeyError, UnicodeDecodeError):
                continue  # not done after all (pieces are written atomically; a damaged disk)
            done[span.index] = (span, result)
        return done

    def piece_count(self) -> int:
        """How many pieces are journaled (a cheap count, for attempt accounting)."""
        if not self.pieces.is_dir():
            return 0
        return sum(
            1
            for entry in os.scandir(self.pieces)
            if entry.name.endswith(".json") and not entry.name.startswith(".")
        )

    def start_over(self, record: JobRecord) -> JobRecord:
        """Forget every journaled piece and the planned limits (the source changed)."""
        trash = self.folder / f"{TRASH_PREFIX}{PIECES}"
        if self.pieces.is_dir():
            os.rename(self.pieces, trash)
            shutil.rmtree(trash, ignore_errors=True)
        record = dataclasses.replace(record, limits=None, pieces_at_attempt=0)
        self.save(record)
        return record

    def remove(self) -> None:
        """Delete the job folder. It is first renamed to a dot-name (atomic), so a crash halfway
        through the deletion leaves a folder start-up sweeps, never half a job."""
        trash = self.folder.with_name(f"{TRASH_PREFIX}{self.folder.name}")
        try:
            os.rename(self.folder, trash)
        except FileNotFoundError:
            return
        failpoint("journal.remove")
        shutil.rmtree(trash, ignore_errors=True)


def sweep_trash(work: Path) -> None:
    """Finish deletions a crash interrupted."""
    for entry in os.scandir(work):
        if entry.name.startswith(TRASH_PREFIX) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)


def recover_work(
    work: Path,
    stems: StemRegistries,
    *,
    quarantine: Callable[[Path, str], None],
) -> list[Journal]:
    """Jobs a previous run left in work/: resumable ones are returned (oldest first), leftovers
    of interrupted claims are removed, and a job whose record is unreadable is handed to
    `quarantine` (one bad job must not stop every start). Blocking: call from a thread."""
    sweep_trash(work)
    resumable: list[tuple[str, Journal]] = []
    for entry in sorted(os.scandir(work), key=lambda e: e.name):
        if not entry.is_dir(follow_symlinks=False) or entry.name.startswith("."):
            continue
        journal = Journal(Path(entry.path))
        if not (journal.folder / JOB_FILE).is_file():
            # A claim that died before its record was written: the source was never moved
            # here (the record goes first), so nothing in it is worth keeping.
            logger.warning(
                "intake.stray_work_folder",
                folder=entry.path,
                contents=sorted(os.listdir(entry.path)),
            )
            journal.remove()
            continue
        try:
            record = journal.load()
        except CorruptJob as exc:
            logger.error("intake.corrupt_job", folder=entry.path, error=str(exc.__cause__))
            quarantine(journal.folder, str(exc.__cause__))
            continue
        if record.state == "claiming" and not (journal.folder / record.source_file).exists():
            journal.remove()
            continue
        stems.of(record.profile).reserve(record.stem)
        resumable.append((record.claimed_at, journal))
    # names reserved by claims that died before their record was written (or were removed just
    # now) are free again; the files are still in the inbox
    live = {journal.folder.name for _, journal in resumable}
    for registry in stems:
        registry.sweep_placeholders(live)
    return [journal for _, journal in sorted(resumable, key=lambda item: item[0])]
