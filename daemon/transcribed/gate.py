"""The one gate every engine request of every job passes: a shared concurrency cap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class Gate:
    """Shared by all jobs, so ten files dropped at once share the engine instead of racing."""

    def __init__(self, *, max_concurrent: int) -> None:
        self._limiter = trio.CapacityLimiter(max_concurrent)

    @property
    def in_flight(self) -> int:
        return self._limiter.borrowed_tokens

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._limiter:
            yield
