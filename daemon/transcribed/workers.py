"""The pipe protocol shared by the daemon's worker processes (the Moonshine engine's and the
diarization pass's): JSON lines one way, raw samples the other.

The worker side (`reply`, `read_exact`) runs in the child and imports nothing heavy; the daemon
side (`LineReader`) reads the child's answers on Trio.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:  # workers import this module: keep it free of Trio at run time
    import trio


def reply(out: BinaryIO, message: dict[str, Any]) -> None:
    """Worker side: one JSON line to the daemon."""
    out.write(json.dumps(message).encode() + b"\n")
    out.flush()


def read_exact(stream: BinaryIO, size: int) -> bytes | None:
    """Worker side: exactly `size` bytes from the daemon, or None at EOF."""
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(min(size - len(data), 1 << 20))
        if not chunk:
            return None
        data.extend(chunk)
    return bytes(data)


class LineReader:
    """Daemon side: the worker's answers, a line at a time (EOFError when its pipe closes)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def read_line(self) -> bytes:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(1 << 16)
            if not chunk:
                raise EOFError
            self._buffer.extend(chunk)
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line
