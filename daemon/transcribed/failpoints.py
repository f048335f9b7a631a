"""Named crash points for the kill -9 recovery tests (in the style of etcd's gofail).

`TRANSCRIBED_FAILPOINT=NAME` or `NAME:N` makes the process SIGKILL itself the first (or the N-th)
time execution reaches `failpoint("NAME")`. Unset, a failpoint is one dictionary lookup. Tests
use it to stop the daemon at exact moments (mid-claim, mid-journal, between two outputs...) and
prove that a restart finishes the job with nothing lost and nothing paid twice.
"""

from __future__ import annotations

import os
import signal

ENV = "TRANSCRIBED_FAILPOINT"


def _parse(value: str) -> tuple[str, int]:
    name, _, count = value.partition(":")
    return name, int(count) if count.isdigit() else 1


_target: tuple[str, int] | None = None
_hits: dict[str, int] = {}


def arm(value: str | None) -> None:
    """Arm the failpoint named by `value` (the TRANSCRIBED_FAILPOINT setting), read once at
    start-up by the command line; None disarms."""
    global _target
    _target = _parse(value) if value else None
    _hits.clear()


def failpoint(name: str) -> None:
    """Die here, as a power cut or OOM kill would, if this failpoint is armed."""
    if _target is None or _target[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == _target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
