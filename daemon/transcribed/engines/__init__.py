"""Engines turn one piece of audio into timed segments; `open_engine` picks one from the config."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from transcribed.config import Config
from transcribed.engines.base import Engine, PieceResult, Segment

__all__ = ["Engine", "PieceResult", "Segment", "open_engine"]


@asynccontextmanager
async def open_engine(config: Config) -> AsyncIterator[Engine]:
    """The engine the configuration names, ready to take pieces until the block ends."""
    from transcribed.engines.embedded import open_embedded_engine

    async with open_embedded_engine(config.embedded) as engine:
        yield engine
