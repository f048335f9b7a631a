"""Intake: notice arrived recordings in the inbox and claim each exactly once.

A startup scan, watchfiles events and a periodic rescan all only mean "look at the inbox
again": events are hints, the directory is the truth (inotify drops events on overflow, never
reports files that were there before, and cannot see writes over NFS). A file counts as arrived
when it is a regular file, not hidden, not a `*.part`-style temp name, and its (inode, size,
mtime) stayed unchanged for `settle_interval`. Claiming is an atomic rename into work/JOB/
(Maildir's rule: whoever renames first owns it), so two daemons sharing an inbox never take the
same file. This is the only module that imports watchfiles.

A subfolder of the inbox named by a profile ([profiles.NAME]) is watched and scanned too, one
level deep: its files are that profile's candidates (`NAME/FILE` in the listing), claimed into
the same work/ with the profile in their record; any other folder is rejected as before.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
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
    StemRegistries,
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
        "folders are not transcribed, except a profile's subfolder of the inbox (one level deep)",
        "drop the recordings themselves, not a folder, or name the folder in the configuration "
        "as [profiles.NAME] (producers may stage copies in a folder whose name starts with '.')",
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


def split_profile(name: bytes) -> tuple[str | None, bytes]:
    """(profile, file name) of an inbox entry's name: b"spanish/talk.mp3" is ("spanish",
    b"talk.mp3"); an entry of the inbox itself has no profile."""
    folder, slash, base = name.partition(b"/")
    return (folder.decode("ascii"), base) if slash else (None, name)


def candidate_entries(
    inbox: Path, profiles: Iterable[str] = ()
) -> Iterator[tuple[bytes, os.stat_result]]:
    """The inbox's candidate entries and their lstat, without following links; a profile's
    subfolder stands for its own entries (named b"NAME/FILE"), never for itself, and is read
    only if it is a real folder (not a link). Nothing from a folder that is gone (the next pass
    makes it again), nor an entry that vanished meanwhile."""
    subfolders = {os.fsencode(name) for name in profiles}
    for name, info in _entries(os.fsencode(inbox)):
        if name in subfolders and stat.S_ISDIR(info.st_mode):
            inner = os.path.join(os.fsencode(inbox), name)
            for entry_name, entry_info in _entries(inner, follow=False):
                yield name + b"/" + entry_name, entry_info
        else:
            yield name, info


def _entries(folder: bytes, *, follow: bool = True) -> Iterator[tuple[bytes, os.stat_result]]:
    # the inbox itself is where the configuration says (a link, maybe); a subfolder is read
    # never through a link swapped in since it was seen
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(folder, flags)
    except OSError:
        return
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                name = os.fsencode(entry.name)
                if not is_candidate_name(name):
                    continue
                try:
                    yield name, entry.stat(follow_symlinks=False)
                except OSError:
                    continue
    finally:
        os.close(fd)


def list_inbox(inbox: Path, profiles: Iterable[str] = ()) -> Listing:
    """Scan the inbox (and the profiles' subfolders) without following links."""
    files: dict[bytes, tuple[int, int, int]] = {}
    oddities: dict[bytes, tuple[tuple[int, int, int], str]] = {}
    for name, info in candidate_entries(inbox, profiles):
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
        self, config: Config, stems: StemRegistries, *, now: Callable[[], datetime] = utc_now
    ) -> None:
        self.inbox = config.folder("inbox")
        self.work = config.folder("work")
        self.failed = config.folder("failed")
        self.profiles = config.profile_names
        self.stems = stems
        self.now = now

    def claim(self, name: bytes, expected: tuple[int, int, int]) -> Journal | None:
        """Claim one file (b"NAME/FILE" for profile NAME's); None if it vanished or changed
        (someone else claimed it, or the writer is not done after all). Blocking: call from a
        thread."""
        profile, base = split_profile(name)
        stems = self.stems.of(profile)
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
            if profile is not None:  # outbox/NAME/: the daemon's own, made when missing
                stems.folder.mkdir(exist_ok=True)
            queued = JobProgress(
                source=display, job_id=job_id, engine="", model="", profile=profile
            )
            queued.started_at = queued.updated_at = isoformat(moment)
            stem = stems.claim_unique(safe_stem(base), job_id, queued.as_dict(0.0))
        except OSError as exc:  # the outbox cannot be written: claim nothing for now
            logger.warning("intake.claim_failed", source=display, error=exc.strerror)
            return None
        journal = Journal(self.work / job_id)
        record = JobRecord(
            job_id=job_id,
            display_name=display,
            name_b64=name_b64,
            stem=stem,
            source_file="source" + source_suffix(base),
            claimed_at=isoformat(moment),
            state="claiming",
            source_key=list(expected),
            profile=profile,
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
            stems.abandon(stem, job_id)
            return None
        failpoint("claim.renamed")
        journal.save(dataclasses.replace(record, state="claimed"))
        return journal

    def reject(self, name: bytes, kind: str) -> Path | None:
        """Move an entry that is not a recording (a link, a folder, a pipe) into failed/ with
        NAME.error.json (failed/PROFILE/ for an entry of a profile's subfolder), without ever
        opening or following it. Returns the explanation's path, None if the entry vanished.
        Blocking: call from a thread."""
        entry = os.path.join(os.fsencode(self.inbox), name)
        profile, base = split_profile(name)
        failed = self.failed if profile is None else self.failed / profile
        display, _ = encode_name(name)
        suffix = source_suffix(base)
        reason, hint = ODDITIES[kind]
        if kind == "directory" and profile is None and self.profiles:
            reason += f" (the profiles configured: {', '.join(self.profiles)})"
        try:
            if profile is not None:  # failed/NAME/: the daemon's own, made when missing
                failed.mkdir(exist_ok=True)
            stem = unique_path(failed, safe_stem(base), (suffix, ".error.json"))
        except OSError as exc:  # failed/ cannot be written: try again at the next pass
            logger.warning("intake.reject_failed", source=display, error=exc.strerror)
            return None
        target = failed / f"{stem}{suffix}"
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
                failed,
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


def ensure_inbox(inbox: Path) -> int | None:
    """The inbox's inode, recreating the folder if someone removed it. Blocking."""
    try:
        return inbox.stat().st_ino
    except FileNotFoundError:
        inbox.mkdir(parents=True, exist_ok=True)
        logger.warning("intake.inbox_recreated", inbox=str(inbox))
        return inbox.stat().st_ino


def ensure_subfolder(folder: Path) -> int | None:
    """A profile's subfolder of the inbox: its inode, made again if removed; None while it
    cannot be watched (the inbox is gone, or a link or a file has its name: never followed,
    the scan rejects it like any entry, and the folder is made again after). Blocking."""
    try:
        info = folder.lstat()
    except FileNotFoundError:
        try:
            folder.mkdir()
            info = folder.lstat()
        except OSError:
            return None
        logger.warning("intake.inbox_recreated", inbox=str(folder))
    return info.st_ino if stat.S_ISDIR(info.st_mode) else None


class WatchedFolder:
    """One folder the intake watches (the inbox, or a profile's subfolder): its watcher only
    pokes the scan, and is re-armed whenever the folder is replaced."""

    def __init__(self, folder: Path, ensure: Callable[[Path], int | None]) -> None:
        self.folder = folder
        self.ensure = ensure
        self.inode: int | None = None
        self.rearm = trio.Event()

    async def serve(
        self,
        watcher: Watcher,
        wake: Callable[[], None],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        while True:
            self.rearm = trio.Event()
            if self.inode is None:  # nothing to watch until the scan has made the folder
                await self.rearm.wait()
                continue
            with trio.CancelScope() as scope:

                async def cancel_on_rearm(event: trio.Event = self.rearm) -> None:
                    await event.wait()
                    scope.cancel()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel_on_rearm)
                    failed = True
                    try:
                        async for _ in watcher(self.folder):
                            wake()
                    except Exception as exc:
                        logger.warning(
                            "intake.watcher_failed", folder=str(self.folder), error=repr(exc),
                            retry_in=WATCHER_RESTART_DELAY,
                        )  # fmt: skip
                    else:
                        failed = False
                    nursery.cancel_scope.cancel()
            wake()  # whatever was missed meanwhile, the rescan finds
            failed = failed and not scope.cancelled_caught
            await trio.sleep(WATCHER_RESTART_DELAY if failed else WATCHER_REARM_DELAY)
            await trio.to_thread.run_sync(self.ensure, self.folder)


def _ensure_all(folders: list[WatchedFolder]) -> list[int | None]:
    return [watched.ensure(watched.folder) for watched in folders]


async def serve_intake(
    config: Config,
    claimed: trio.MemorySendChannel[Journal],
    claimer: Claimer,
    *,
    watcher: Watcher = watch_with_watchfiles,
    pause_reason: Callable[[], str | None] = lambda: None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Scan, watch and rescan the inbox and the profiles' subfolders forever, sending each
    claimed job down `claimed`.

    Sending blocks until a job worker is free, so files wait in the inbox (not in work/) while
    the daemon is busy: backpressure, and other daemons sharing the inbox can take them. While
    `pause_reason()` says why (a full disk, a folder that cannot be written, a suspended
    engine), nothing is claimed: files stay in the inbox, untouched. A removed inbox (or
    subfolder) is made again and its watcher re-armed on the new folder.
    """
    inbox = config.folder("inbox")
    profiles = config.profile_names
    tracker = SettleTracker(config.settle_interval)
    poke = trio.Event()
    paused_for: str | None = None
    folders = [WatchedFolder(inbox, ensure_inbox)]
    folders += [WatchedFolder(inbox / name, ensure_subfolder) for name in profiles]
    for watched, inode in zip(
        folders, await trio.to_thread.run_sync(_ensure_all, folders), strict=True
    ):
        watched.inode = inode

    def wake() -> None:
        poke.set()

    async with claimed, trio.open_nursery() as nursery:
        # the watchers first, then the scan: nothing that lands in between is missed
        for watched in folders:
            await nursery.start(watched.serve, watcher, wake)
        task_status.started()
        while True:
            poke = trio.Event()
            inodes = await trio.to_thread.run_sync(_ensure_all, folders)
            for watched, inode in zip(folders, inodes, strict=True):
                if inode != watched.inode:
                    watched.inode = inode
                    logger.info("intake.watcher_rearmed", inbox=str(watched.folder))
                    watched.rearm.set()
            listing = await trio.to_thread.run_sync(list_inbox, inbox, profiles)
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
