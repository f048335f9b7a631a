"""Engines turn one piece of audio into timed segments; `open_engine` picks one from the config."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from transcribed.config import Config
from transcribed.engines.base import Engine, PieceResult, Segment
from transcribed.gate import Gate
from transcribed.retry import RetryPolicy

__all__ = ["Engine", "PieceResult", "Segment", "gate_for", "open_engine", "retry_policy_for"]


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


def gate_for(config: Config, engine: Engine) -> Gate:
    """The shared gate for this engine: its capacity, plus the rate limit of an HTTP engine."""
    rate: float | None = getattr(engine, "requests_per_minute", None)
    return Gate(
        max_concurrent=engine.capacity,
        requests_per_minute=rate,
        quota_retry_interval=config.openai.quota_retry_interval,
    )


def retry_policy_for(config: Config, engine: Engine) -> RetryPolicy:
    """How hard each piece is tried: the [openai] keys for the HTTP engine, defaults otherwise."""
    if getattr(engine, "name", None) != "openai":
        return RetryPolicy(max_attempts=3)
    settings = config.openai
    return RetryPolicy(
        max_attempts=settings.max_attempts,
        initial_delay=settings.retry_delay,
        max_delay=settings.retry_max_delay,
        retry_timeout=settings.retry_timeout,
    )
