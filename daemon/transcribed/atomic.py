"""Crash-safe file writes: temp file in the same folder, fsync, rename, fsync of the folder.

A reader sees the old file or the new one, never half of one. Temp names start with a dot and
contain `.tmp-`, so they are ignored by the daemon's own scans and by the outbox contract; any
left by a crash are swept at start-up (`remove_stale_temps`).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transcribed.failpoints import failpoint

TEMP_MARKER = ".tmp-"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace `path` with `data` atomically; with `durable`, also survive a power cut."""
    atomic_write_chunks(path, (data,), durable=durable)


def atomic_write_chunks(path: Path, chunks: Iterable[bytes | str], *, durable: bool = True) -> None:
    """Replace `path` atomically with the chunks in order (str as UTF-8): a large file is
    written as it is made, never held whole in memory."""
    temp = path.with_name(f".{path.name}{TEMP_MARKER}{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        if durable:
            failpoint("atomic.rename")
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, *, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: Path, data: Any, *, durable: bool = True) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=True, sort_keys=False) + "\n"
    atomic_write_text(path, text, durable=durable)


def remove_stale_temps(folder: Path) -> int:
    """Delete temp files a crash left in `folder`; returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if (
            entry.name.startswith(".")
            and TEMP_MARKER in entry.name
            and entry.is_file(follow_symlinks=False)
        ):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    return removed
