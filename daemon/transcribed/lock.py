"""One owner per work/: an exclusive lock taken at start and held while the daemon runs.

Two daemons on one work/ would resume each other's jobs and publish over each other. The lock
is `flock` on `work/.lock`, which the kernel releases when the process dies however it dies (no
stale lock after a kill -9 or a power cut); the file holds the owner's pid and host so the
second daemon can say whom it met. Several daemons may share an inbox, each with its own work/
(claims are atomic renames).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transcribed.errors import ConfigError

LOCK_NAME = ".lock"
# `status` probes the lock with a brief shared lock: a starting daemon that meets a probe tries
# again for this long before it concludes that another daemon owns work/
PROBE_GRACE = 1.0


def _lock_within(fd: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def _describe(raw: bytes) -> str:
    pid, _, host = raw.decode("utf-8", "replace").strip().partition(" ")
    return f"pid {pid} on {host}" if pid.isdigit() else ""


@contextmanager
def hold_work_lock(work: Path) -> Iterator[None]:
    """Own `work` until the block ends; ConfigError (exit 78) if another daemon owns it."""
    path = work / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot open the lock file {path}: {exc.strerror}") from None
    try:
        if not _lock_within(fd, PROBE_GRACE):
            owner = _describe(os.pread(fd, 200, 0)) or "another process"
            raise ConfigError(
                f"another transcribed daemon ({owner}) already owns {work}",
                hint="stop it first (systemctl stop transcribed), or give this one its own "
                "work folder (--work DIR); several daemons may share an inbox, never a work folder",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
