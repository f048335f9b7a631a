"""Engines turn one piece of audio into timed segments; `open_engine` picks one from the config."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from transcribed.config import Config
from transcribed.engines.base import Engine, EngineTraits, PieceResult, Segment
from transcribed.gate import Gate

__all__ = [
    "Engine",
    "EngineFactory",
    "EngineTraits",
    "PieceResult",
    "Segment",
    "engine_settings",
    "gate_for",
    "open_engine",
]

# how the daemon opens an engine for a configuration (open_engine, or a test's)
EngineFactory = Callable[[Config], AbstractAsyncContextManager[Engine]]


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


def engine_settings(config: Config) -> object:
    """What of the configuration the engine `open_engine` opens is built from: configurations
    with equal settings (a profile that changes only outputs, say) can share one engine."""
    if config.engine == "openai":
        return ("openai", config.openai)
    return ("embedded", config.embedded)


def gate_for(config: Config, traits: EngineTraits) -> Gate:
    """The shared gate for this engine: its capacity and its rate limit, if it has one."""
    return Gate(
        max_concurrent=traits.capacity,
        requests_per_minute=traits.requests_per_minute,
        quota_retry_interval=config.openai.quota_retry_interval,
        max_pause=config.openai.max_retry_after,
    )
