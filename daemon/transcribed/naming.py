"""Names: what a producer's file is called in logs, in the outbox, and in work/.

File names are untrusted bytes. `display_name` makes one safe to print and log, `safe_stem`
makes an output stem of it (no path tricks, no leading dot or dash, never one that could be read
as another job's progress file), `unique_path` never overwrites, and `StemRegistry` makes sure
two jobs never share an output name.
"""

from __future__ import annotations

import base64
import os
import secrets
import threading
import time
import unicodedata
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

PROGRESS_SUFFIX = ".progress.json"
# what a reserved stem's progress file says until the job's first progress is written
PLACEHOLDER = b'{"state": "queued"}\n'
OUTPUT_SUFFIXES = (".txt", ".srt", ".vtt", ".json")
# "talk.progress" would write talk.progress.json, which is talk's progress file
_RESERVED_ENDINGS = (".progress", ".error")


def display_name(name: bytes) -> str:
    """A file name made safe to print, log and put in JSON: undecodable bytes and control
    characters (newlines, ANSI escapes) appear as backslash escapes, so a name cannot forge a
    log line or repaint a terminal."""
    text = name.decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def encode_name(name: bytes) -> tuple[str, str]:
    """(printable display name, base64 of the exact bytes) of a file name."""
    return display_name(name), base64.b64encode(name).decode("ascii")


def safe_stem(name: bytes) -> str:
    """A file-name stem for outputs, made from a producer's name: printable, no path tricks."""
    text = unicodedata.normalize("NFC", name.decode("utf-8", "replace"))
    stem, dot, suffix = text.rpartition(".")
    if not dot or not stem or len(suffix) > 8:
        stem = text
    cleaned = "".join(
        "_" if ch in "/\\" or not ch.isprintable() or ch == "\ufffd" else ch for ch in stem
    )
    cleaned = " ".join(cleaned.split()).lstrip(".-_ ")
    encoded = cleaned.encode("utf-8")[:150]
    stem = encoded.decode("utf-8", "ignore").strip() or "recording"
    for ending in _RESERVED_ENDINGS:
        if stem.lower().endswith(ending):
            stem = stem[: -len(ending)] + "-" + ending[1:]
    return stem


def source_suffix(name: bytes) -> str:
    """The original extension if it is plain (ffmpeg sniffs content; this only helps humans)."""
    _, dot, suffix = name.rpartition(b".")
    if dot and 1 <= len(suffix) <= 8 and suffix.isalnum():
        return "." + suffix.decode("ascii").lower()
    return ""


def new_job_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def unique_path(folder: Path, stem: str, suffixes: Iterable[str]) -> str:
    """The first of STEM, STEM-2, STEM-3... for which no FOLDER/STEM<suffix> exists (links
    included) for any of `suffixes`: never overwrite."""
    suffixes = tuple(suffixes)
    candidate, number = stem, 1
    while any(os.path.lexists(folder / f"{candidate}{suffix}") for suffix in suffixes):
        number += 1
        candidate = f"{stem}-{number}"
    return candidate


class StemRegistry:
    """Output stems in use in one output folder: never overwrite a transcript, never let two
    jobs share a name. Safe to call from the intake's threads and the event loop alike.

    With `reserve_on_disk` (the daemon's outbox), a stem is taken by creating its progress file
    exclusively (O_EXCL), so several daemons sharing one outbox never pick the same stem."""

    def __init__(self, folder: Path, *, reserve_on_disk: bool = False) -> None:
        self.folder = folder
        self.reserve_on_disk = reserve_on_disk
        self._reserved: set[str] = set()
        self._lock = threading.Lock()

    def reserve(self, stem: str) -> None:
        with self._lock:
            self._reserved.add(stem)

    def release(self, stem: str) -> None:
        with self._lock:
            self._reserved.discard(stem)

    def abandon(self, stem: str) -> None:
        """Release a stem that was never used, removing its on-disk placeholder. Blocking."""
        if self.reserve_on_disk:
            placeholder = self.folder / f"{stem}{PROGRESS_SUFFIX}"
            try:
                if placeholder.read_bytes() == PLACEHOLDER:
                    placeholder.unlink()
            except OSError:
                pass
        self.release(stem)

    def sweep_placeholders(self, older_than: float) -> int:
        """Remove placeholders a claim that died before writing its record left behind (no job
        names them); only old ones, so another daemon's claim in progress is never touched."""
        removed = 0
        cutoff = time.time() - older_than
        for path in self.folder.glob(f"*{PROGRESS_SUFFIX}"):
            try:
                if path.stat().st_mtime < cutoff and path.read_bytes() == PLACEHOLDER:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        return removed

    def claim_unique(self, base: str) -> str:
        """The first free stem of BASE, BASE-2, BASE-3... reserved for the caller. Blocking."""
        with self._lock:
            stem, number = base, 1
            while not self._take(stem):
                number += 1
                stem = f"{base}-{number}"
            self._reserved.add(stem)
            return stem

    def _take(self, stem: str) -> bool:
        if stem in self._reserved:
            return False
        if unique_path(self.folder, stem, (*OUTPUT_SUFFIXES, ".docx", PROGRESS_SUFFIX)) != stem:
            return False
        if not self.reserve_on_disk:
            return True
        # A complete placeholder appears atomically and only if the name is free: written under
        # a temp name, then hard-linked (link(2) fails if the target exists), never half-seen.
        target = self.folder / f"{stem}{PROGRESS_SUFFIX}"
        temp = self.folder / f".{stem}{PROGRESS_SUFFIX}.tmp-{secrets.token_hex(4)}"
        temp.write_bytes(PLACEHOLDER)
        try:
            os.link(temp, target)
        except FileExistsError:  # another daemon sharing this outbox took it just now
            return False
        finally:
            temp.unlink(missing_ok=True)
        return True
