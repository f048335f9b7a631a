"""Names: what a producer's file is called in logs, in the outbox, and in work/.

File names are untrusted bytes. `display_name` makes one safe to print and log, `safe_stem`
makes an output stem of it (no path tricks, no leading dot or dash, never one that could be read
as another job's progress file), `unique_path` never overwrites, and `StemRegistry` makes sure
two jobs never share an output name in one output folder (`StemRegistries`: one for each).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import unicodedata
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

PROGRESS_SUFFIX = ".progress.json"
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

    With `owner` (the daemon's work/ folder), a stem is taken on disk by creating its progress
    file exclusively, holding a placeholder that names the job and its owner, so several daemons
    sharing one outbox never pick the same stem, and a daemon restarted after a crash can tell
    its own dead claims' placeholders from another daemon's live ones."""

    def __init__(self, folder: Path, *, owner: Path | None = None) -> None:
        self.folder = folder
        self.owner = owner
        self._reserved: set[str] = set()
        self._lock = threading.Lock()

    def reserve(self, stem: str) -> None:
        with self._lock:
            self._reserved.add(stem)

    def release(self, stem: str) -> None:
        with self._lock:
            self._reserved.discard(stem)

    def _placeholder(self, job_id: str, progress: dict[str, object] | None) -> bytes:
        document = {**(progress or {"state": "queued"}), "job_id": job_id}
        document["claimed_into"] = str(self.owner)
        return json.dumps(document, indent=2).encode() + b"\n"

    def _placeholder_of(self, path: Path) -> str | None:
        """The job id of one of this owner's placeholders at `path`, else None."""
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("claimed_into") != str(self.owner):
            return None
        job_id = data.get("job_id")
        return job_id if isinstance(job_id, str) and data.get("state") == "queued" else None

    def abandon(self, stem: str, job_id: str) -> None:
        """Release a stem job `job_id` never used, removing its placeholder. Blocking."""
        placeholder = self.folder / f"{stem}{PROGRESS_SUFFIX}"
        if self.owner is not None and self._placeholder_of(placeholder) == job_id:
            placeholder.unlink(missing_ok=True)
        self.release(stem)

    def sweep_placeholders(self, live_jobs: set[str]) -> int:
        """At start: remove this owner's placeholders whose job is not in `live_jobs` (a claim
        that died before its record was written). Other daemons' placeholders are never touched."""
        removed = 0
        if self.owner is None:
            return removed
        for path in self.folder.glob(f"*{PROGRESS_SUFFIX}"):
            job_id = self._placeholder_of(path)
            if job_id is not None and job_id not in live_jobs:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def claim_unique(
        self, base: str, job_id: str = "", progress: dict[str, object] | None = None
    ) -> str:
        """The first free stem of BASE, BASE-2, BASE-3... reserved for the caller; with an owner,
        its placeholder is `progress` (a queued job's progress document). Blocking."""
        with self._lock:
            stem, number = base, 1
            while not self._take(stem, job_id, progress):
                number += 1
                stem = f"{base}-{number}"
            self._reserved.add(stem)
            return stem

    def _take(self, stem: str, job_id: str, progress: dict[str, object] | None) -> bool:
        if stem in self._reserved:
            return False
        if unique_path(self.folder, stem, (*OUTPUT_SUFFIXES, ".docx", PROGRESS_SUFFIX)) != stem:
            return False
        if self.owner is None:
            return True
        # A complete placeholder appears atomically and only if the name is free: written under
        # a temp name, then hard-linked (link(2) fails if the target exists), never half-seen.
        target = self.folder / f"{stem}{PROGRESS_SUFFIX}"
        temp = self.folder / f".{stem}{PROGRESS_SUFFIX}.tmp-{secrets.token_hex(4)}"
        temp.write_bytes(self._placeholder(job_id, progress))
        try:
            os.link(temp, target)
        except FileExistsError:  # another daemon sharing this outbox took it just now
            return False
        finally:
            temp.unlink(missing_ok=True)
        return True


class StemRegistries:
    """The StemRegistry of each output folder: the outbox's for the inbox's own recordings, and
    outbox/NAME/'s for profile NAME's. One is made on first use, so a job whose profile has left
    the configuration since it was claimed still keeps its names."""

    def __init__(
        self, outbox: Path, *, owner: Path | None = None, profiles: Iterable[str] = ()
    ) -> None:
        self.outbox = outbox
        self.owner = owner
        self._registries: dict[str | None, StemRegistry] = {}
        self._lock = threading.Lock()
        for profile in (None, *profiles):
            self.of(profile)

    def of(self, profile: str | None) -> StemRegistry:
        with self._lock:
            registry = self._registries.get(profile)
            if registry is None:
                folder = self.outbox if profile is None else self.outbox / profile
                registry = self._registries[profile] = StemRegistry(folder, owner=self.owner)
            return registry

    def __iter__(self) -> Iterator[StemRegistry]:
        with self._lock:
            return iter(list(self._registries.values()))
