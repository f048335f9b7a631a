"""Engines turn one piece of audio into timed segments; `open_engine` picks one from the config."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from transcribed.config import Config
from transcribed.engines.base import Engine, EngineTraits, PieceResult, Segment
from transcribed.gate import Gate

__all__ = ["Engine", "EngineTraits", "PieceResult", "Segment", "gate_for", "open_engine"]


@asynccontextmanager
async def open_engine(config: Config) -> AsyncIterator[Engine]:
    """The engine the configuration names, ready to take pieces until the block ends."""
    if config.engine == "openai":
        from transcribed.engines.openai import load_api_key, open_openai_engine

        async with open_openai_engine(config.openai, api_key=load_api_key(config.openai)) as remote:
            yield remote
        return
    from transcribed.engines.embedded import open_embedded_engine

    async with open_embedded_engine(config.embedded) as engine:
        yield engine


def gate_for(config: Config, traits: EngineTraits) -> Gate:
    """The shared gate for this engine: its capacity and its rate limit, if it has one."""
    return Gate(
        max_concurrent=traits.capacity,
        requests_per_minute=traits.requests_per_minute,
        quota_retry_interval=config.openai.quota_retry_interval,
        max_pause=config.openai.max_retry_after,
    )
