"""Intake: notice arrived recordings in the inbox and claim each exactly once.

A startup scan, watchfiles events and a periodic rescan all only mean "look at the inbox
again": events are hints, the directory is the truth (inotify drops events on overflow, never
reports files that were there before, and cannot see writes over NFS). A file counts as arrived
when it is a regular file, not hidden, not a `*.part`-style temp name, and its (inode, size,
mtime) stayed unchanged for `settle_interval`. Claiming is an atomic rename into work/JOB/
(Maildir's rule: whoever renames first owns it), so two daemons sharing an inbox never take the
same file. This is the only module that imports watchfiles.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog
import trio

from transcribed.config import Config
from transcribed.explanations import write_explanation
from transcribed.failpoints import failpoint
from transcribed.journal import JobRecord, Journal
from transcribed.naming import (
    StemRegistry,
    encode_name,
    new_job_id,
    safe_stem,
    source_suffix,
    unique_path,
)
from transcribed.progress import JobProgress, isoformat, utc_now

logger = structlog.get_logger()

TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".filepart", ".crdownload", ".download", ".swp")
WATCHER_RESTART_DELAY = 5.0  # after the watcher failed
WATCHER_REARM_DELAY = 0.2  # after it ended (its folder was removed or replaced)

# A watcher is an async iterator of "something changed" hints for a folder.
Watcher = Callable[[Path], AsyncIterator[object]]


async def watch_with_watchfiles(folder: Path) -> AsyncIterator[object]:
    """The real watcher: inotify through watchfiles, top level of the folder only. It ends
    when the folder itself is deleted (inotify would go silent), so the caller re-arms it."""
    import watchfiles

    # A short rust_timeout bounds how long cancelling the watcher's thread can take.
    async for changes in watchfiles.awatch(
        folder, watch_filter=None, recursive=False, rust_timeout=1000
    ):
        yield changes
        if any(
            change == watchfiles.Change.deleted and Path(path) == folder for change, path in changes
        ):
            return


def is_candidate_name(name: bytes) -> bool:
    """Names the daemon may claim: not hidden, not a producer's temp name."""
    if name.startswith(b"."):
        return False
    lowered = name.lower()
    return not any(lowered.endswith(suffix.encode()) for suffix in TEMP_SUFFIXES)


@dataclass(frozen=True, slots=True, kw_only=True)
class Seen:
    key: tuple[int, int, int]  # inode, size, mtime_ns
    since: float  # trio time when first seen with this key


class SettleTracker:
    """Decides when a file has stopped changing."""

    def __init__(self, settle_interval: float) -> None:
        self.settle_interval = settle_interval
        self._seen: dict[bytes, Seen] = {}

    def observe(self, present: dict[bytes, tuple[int, int, int]], now: float) -> list[bytes]:
        """Record the current listing; return the names that have settled, oldest first."""
        for name in list(self._seen):
            if name not in present:
                del self._seen[name]
        settled: list[tuple[float, bytes]] = []
        for name, key in present.items():
            seen = self._seen.get(name)
            if seen is None or seen.key != key:
                self._seen[name] = Seen(key=key, since=now)
            elif now - seen.since >= self.settle_interval:
                settled.append((seen.since, name))
        return [name for _, name in sorted(settled)]

    def next_deadline(self) -> float | None:
        if not self._seen:
            return None
        return min(seen.since for seen in self._seen.values()) + self.settle_interval

    def forget(self, name: bytes) -> None:
        self._seen.pop(name, None)


# Inbox entries that are never transcribed, with what the clerk is told.
ODDITIES: dict[str, tuple[str, str]] = {
    "symlink": (
        "symbolic links are not accepted: the daemon never reads outside its inbox",
        "copy the recording itself into the inbox",
    ),
    "hardlink": (
        "the file has other hard links, so it could change after it was accepted",
        "copy the recording into the inbox instead of linking it",
    ),
    "directory": (
        "folders are not transcribed",
        "drop the recordings themselves, not a folder (producers may stage copies in a folder whose name starts with '.')",
    ),
    "special": (
        "this is not a regular file (a named pipe, socket or device)",
        "drop a recording file",
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Listing:
    """What a scan of the inbox found: files to claim and entries to reject, with their
    (inode, size, mtime_ns) so both must settle before anything happens to them."""

    files: dict[bytes, tuple[int, int, int]]
    oddities: dict[bytes, tuple[tuple[int, int, int], str]]

    def keys(self) -> dict[bytes, tuple[int, int, int]]:
        return self.files | {name: key for name, (key, _) in self.oddities.items()}


def candidate_entries(inbox: Path) -> Iterator[tuple[bytes, os.stat_result]]:
    """The inbox's candidate entries and their lstat, without following links; nothing if the
    folder is gone (the next pass makes it again) or an entry vanished meanwhile."""
    try:
        scan = os.scandir(os.fsencode(inbox))
    except OSError:
        return
    with scan as entries:
        for entry in entries:
            if not is_candidate_name(entry.name):
                continue
            try:
                yield entry.name, entry.stat(follow_symlinks=False)
            except OSError:
                continue


def list_inbox(inbox: Path) -> Listing:
    """Scan the inbox without following links."""
    files: dict[bytes, tuple[int, int, int]] = {}
    oddities: dict[bytes, tuple[tuple[int, int, int], str]] = {}
    for name, info in candidate_entries(inbox):
        key = (info.st_ino, info.st_size, info.st_mtime_ns)
        if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
            files[name] = key
        elif stat.S_ISREG(info.st_mode):
            oddities[name] = (key, "hardlink")
        elif stat.S_ISLNK(info.st_mode):
            oddities[name] = (key, "symlink")
        elif stat.S_ISDIR(info.st_mode):
            oddities[name] = (key, "directory")
        else:
            oddities[name] = (key, "special")
    return Listing(files=files, oddities=oddities)


class Claimer:
    """Moves settled files from the inbox into work/JOB/ and writes their job records."""

    def __init__(
        self, config: Config, stems: StemRegistry, *, now: Callable[[], datetime] = utc_now
    ) -> None:
        self.inbox = config.folder("inbox")
        self.work = config.folder("work")
        self.failed = config.folder("failed")
        self.stems = stems
        self.now = now

    def claim(self, name: bytes, expected: tuple[int, int, int]) -> Journal | None:
        """Claim one file; None if it vanished or changed (someone else claimed it, or the
        writer is not done after all). Blocking: call from a thread."""
        source = Path(os.fsdecode(os.path.join(os.fsencode(self.inbox), name)))
        try:
            info = source.lstat()
        except FileNotFoundError:
            return None
        if (info.st_ino, info.st_size, info.st_mtime_ns) != expected or not stat.S_ISREG(
            info.st_mode
        ):
            return None
        moment = self.now()
        job_id = new_job_id(moment)
        display, name_b64 = encode_name(name)
        try:
            queued = JobProgress(source=display, job_id=job_id, engine="", model="")
            queued.started_at = queued.updated_at = isoformat(moment)
            stem = self.stems.claim_unique(safe_stem(name), job_id, queued.as_dict(0.0))
        except OSError as exc:  # the outbox cannot be written: claim nothing for now
            logger.warning("intake.claim_failed", source=display, error=exc.strerror)
            return None
        journal = Journal(self.work / job_id)
        record = JobRecord(
            job_id=job_id,
            display_name=display,
            name_b64=name_b64,
            stem=stem,
            source_file="source" + source_suffix(name),
            claimed_at=isoformat(moment),
            state="claiming",
            source_key=list(expected),
        )
        # The record goes first: a crash before the rename leaves a claiming record without a
        # source, which start-up removes; the file is still in the inbox.
        try:
            journal.save(record)
            failpoint("claim.recorded")
            os.rename(source, journal.folder / record.source_file)
        except OSError as exc:
            # vanished (another daemon took it), or work/ or the inbox cannot be written: the
            # file stays where it is, and the next pass tries again
            if not isinstance(exc, FileNotFoundError):
                logger.warning("intake.claim_failed", source=display, error=exc.strerror)
            journal.remove()
            self.stems.abandon(stem, job_id)
            return None
        failpoint("claim.renamed")
        journal.save(dataclasses.replace(record, state="claimed"))
        return journal

    def reject(self, name: bytes, kind: str) -> Path | None:
        """Move an entry that is not a recording (a link, a folder, a pipe) into failed/ with
        NAME.error.json, without ever opening or following it. Returns the explanation's path,
        None if the entry vanished. Blocking: call from a thread."""
        entry = os.path.join(os.fsencode(self.inbox), name)
        display, _ = encode_name(name)
        suffix = source_suffix(name)
        stem = unique_path(self.failed, safe_stem(name), (suffix, ".error.json"))
        reason, hint = ODDITIES[kind]
        target = self.failed / f"{stem}{suffix}"
        try:
            os.rename(entry, target)
            moved_to: Path | None = target
        except FileNotFoundError:
            return None
        except OSError as exc:  # another filesystem: leave it, but say why
            logger.warning("intake.reject_move_failed", source=display, error=exc.strerror)
            moved_to = None
        try:
            return write_explanation(
                self.failed,
                stem,
                source=display,
                job_id=None,
                error={"error": kind, "reason": reason, "what_to_do": hint},
                moved_to=moved_to,
                at=isoformat(self.now()),
            )
        except OSError as exc:  # failed/ cannot be written: try again at the next pass
            logger.warning("intake.reject_failed", source=display, error=exc.strerror)
            return None


def ensure_inbox(inbox: Path) -> int:
    """The inbox's inode, recreating the folder if someone removed it. Blocking."""
    try:
        return inbox.stat().st_ino
    except FileNotFoundError:
        inbox.mkdir(parents=True, exist_ok=True)
        logger.warning("intake.inbox_recreated", inbox=str(inbox))
        return inbox.stat().st_ino


async def serve_intake(
    config: Config,
    claimed: trio.MemorySendChannel[Journal],
    claimer: Claimer,
    *,
    watcher: Watcher = watch_with_watchfiles,
    pause_reason: Callable[[], str | None] = lambda: None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Scan, watch and rescan the inbox forever, sending each claimed job down `claimed`.

    Sending blocks until a job worker is free, so files wait in the inbox (not in work/) while
    the daemon is busy: backpressure, and other daemons sharing the inbox can take them. While
    `pause_reason()` says why (a full disk, a folder that cannot be written, a suspended
    engine), nothing is claimed: files stay in the inbox, untouched. A removed inbox is made
    again and the watcher re-armed on the new folder.
    """
    inbox = config.folder("inbox")
    tracker = SettleTracker(config.settle_interval)
    poke = trio.Event()
    paused_for: str | None = None
    watched_inode = await trio.to_thread.run_sync(ensure_inbox, inbox)
    rearm = trio.Event()

    async def serve_watcher(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal poke, rearm
        task_status.started()
        while True:
            rearm = trio.Event()
            with trio.CancelScope() as scope:

                async def cancel_on_rearm(event: trio.Event = rearm) -> None:
                    await event.wait()
                    scope.cancel()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel_on_rearm)
                    failed = True
                    try:
                        async for _ in watcher(inbox):
                            poke.set()
                    except Exception as exc:
                        logger.warning(
                            "intake.watcher_failed", error=repr(exc), retry_in=WATCHER_RESTART_DELAY
                        )
                    else:
                        failed = False
                    nursery.cancel_scope.cancel()
            poke.set()  # whatever was missed meanwhile, the rescan finds
            failed = failed and not scope.cancelled_caught
            await trio.sleep(WATCHER_RESTART_DELAY if failed else WATCHER_REARM_DELAY)
            await trio.to_thread.run_sync(ensure_inbox, inbox)

    async with claimed, trio.open_nursery() as nursery:
        # the watcher first, then the scan: nothing that lands in between is missed
        await nursery.start(serve_watcher)
        task_status.started()
        while True:
            poke = trio.Event()
            inode = await trio.to_thread.run_sync(ensure_inbox, inbox)
            if inode != watched_inode:
                watched_inode = inode
                logger.info("intake.watcher_rearmed", inbox=str(inbox))
                rearm.set()
            listing = await trio.to_thread.run_sync(list_inbox, inbox)
            reason = pause_reason()
            if reason != paused_for:
                if reason:
                    logger.warning("intake.paused", reason=reason)
                else:
                    logger.info("intake.resumed")
                paused_for = reason
            settled = [] if reason else tracker.observe(listing.keys(), trio.current_time())
            for name in settled:
                tracker.forget(name)
                if name in listing.oddities:
                    kind = listing.oddities[name][1]
                    if await trio.to_thread.run_sync(claimer.reject, name, kind):
                        logger.warning("job.rejected", source=encode_name(name)[0], error=kind)
                    continue
                journal = await trio.to_thread.run_sync(claimer.claim, name, listing.files[name])
                if journal is None:
                    continue
                logger.info("job.claimed", job_id=journal.folder.name, source=encode_name(name)[0])
                await claimed.send(journal)
            deadline = trio.current_time() + config.rescan_interval
            settle = tracker.next_deadline()
            if settle is not None and not reason:
                deadline = min(deadline, settle)
            with trio.move_on_at(deadline):
                await poke.wait()
