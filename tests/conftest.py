"""Shared fixtures: real audio files made by real ffmpeg, a fake engine, daemon configs."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from transcribed.app import run_daemon
from transcribed.config import Config, load_config
from transcribed.engines.base import EngineTraits, PieceResult, PreparedPiece, Segment
from transcribed.errors import PermanentError, RejectedFileError, RetryableError
from transcribed.media import ProbeResult
from transcribed.planning import SAMPLE_RATE, PieceLimits
from transcribed.retry import RetryPolicy

SUITE_CANARY_KEY = "sk-canary-" + secrets.token_hex(16)


@pytest.fixture(scope="session", autouse=True)
def canary_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The whole suite runs with a canary OPENAI_API_KEY in the environment (inherited by every
    daemon the tests start); afterwards no file any test left behind (outputs, progress and
    error files, journals, daemon logs) may contain it."""
    previous = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = SUITE_CANARY_KEY
    yield SUITE_CANARY_KEY
    if previous is None:
        del os.environ["OPENAI_API_KEY"]
    else:
        os.environ["OPENAI_API_KEY"] = previous
    needle = SUITE_CANARY_KEY.encode()
    leaked = [
        path
        for path in tmp_path_factory.getbasetemp().rglob("*")
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes()
    ]
    assert not leaked, f"the canary API key leaked into {leaked}"


def asset(name: str) -> Path:
    """A recording shipped in the moonshine-voice wheel (real speech), found without importing it."""
    spec = importlib.util.find_spec("moonshine_voice")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / name


BECKETT = asset("beckett.wav")  # "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better."
TWO_CITIES = asset("two_cities.wav")

# ffmpeg output options for each container/codec a user may drop
FORMATS: dict[str, list[str]] = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    "wav": ["-c:a", "pcm_s16le"],
    "flac": ["-c:a", "flac"],
    "m4a": ["-c:a", "aac", "-b:a", "64k"],
    "ogg": ["-c:a", "libvorbis"],
    "opus": ["-c:a", "libopus", "-b:a", "32k"],
}
VIDEO_FORMATS: dict[str, list[str]] = {
    "mp4": ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest"],
    "mkv": ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "libopus", "-shortest"],
    "webm": ["-c:v", "libvpx", "-deadline", "realtime", "-c:a", "libopus", "-shortest"],
}


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def make_media(target: Path, source: Path = BECKETT) -> Path:
    """Encode real speech into the container/codec named by the target's suffix."""
    kind = target.suffix.lstrip(".")
    if kind in VIDEO_FORMATS:
        ffmpeg("-f", "lavfi", "-i", "color=c=blue:s=64x48:r=5", "-i", str(source), "-map", "0:v", "-map", "1:a", *VIDEO_FORMATS[kind], str(target))
    else:
        ffmpeg("-i", str(source), *FORMATS[kind], str(target))
    return target


@pytest.fixture
def media(tmp_path: Path) -> Callable[..., Path]:
    folder = tmp_path / "media"
    folder.mkdir(exist_ok=True)

    def build(name: str, source: Path = BECKETT) -> Path:
        return make_media(folder / name, source)

    return build


class FakeEngine:
    """A deterministic stand-in for a real engine: one segment per piece, describing it.

    `fail` maps a call number (1-based) to an exception raised instead of answering.
    """

    def __init__(self, *, capacity: int = 2, limits: PieceLimits | None = None, retry: RetryPolicy | None = None, price_per_minute: float = 0.0) -> None:
        self.traits = EngineTraits(
            name="fake",
            model="fake-1",
            limits=limits or PieceLimits(target_seconds=6, max_seconds=10),
            capacity=capacity,
            retry=retry or RetryPolicy(max_attempts=3),
            price_per_minute=price_per_minute,
        )
        self.seconds_sent = 0.0  # audio seconds of every call (what a priced engine bills)
        self.calls = 0
        self.pieces_seen: list[int] = []
        self.fail: dict[int, Exception] = {}
        self.raising: Exception | None = None  # raised by every call while set
        self.delay = 0.0
        self.hang_after: int | None = None  # calls after this one never answer
        self.started_at: list[float] = []  # trio time of each call
        self.answered_at: list[float] = []

    async def prepare(self, audio: np.ndarray) -> PreparedPiece:
        return PreparedPiece(seconds=len(audio) / SAMPLE_RATE, audio=audio)

    async def transcribe(self, piece: PreparedPiece) -> PieceResult:
        assert piece.audio is not None
        audio = piece.audio
        self.calls += 1
        self.seconds_sent += len(audio) / SAMPLE_RATE
        call = self.calls
        self.started_at.append(trio.current_time())
        if self.raising is not None:
            raise self.raising
        if self.delay:
            await trio.sleep(self.delay)
        if self.hang_after is not None and call > self.hang_after:
            await trio.sleep_forever()
        if call in self.fail:
            raise self.fail[call]
        seconds = len(audio) / SAMPLE_RATE
        self.pieces_seen.append(len(audio))
        self.answered_at.append(trio.current_time())
        loud = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
        return PieceResult(segments=[Segment(start=0.0, end=seconds, text=f"piece of {len(audio)} samples rms {loud:.0f}")], cost=self.traits.cost(seconds))


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


class SyntheticDecoder:
    """The media edge without ffmpeg, for virtual-time tests: a file holding `seconds=N` is a
    recording of N seconds (speech-like noise bursts and pauses over a faint floor, the same
    every time); anything else is not media. `seconds=N claims=M` is one whose header claims M
    seconds (a header that lies). Blocks of one second come out with a checkpoint between them,
    so the decoder never holds the event loop."""

    def __init__(self) -> None:
        self.opened = 0

    @staticmethod
    def _seconds(path: Path) -> float:
        text = path.read_bytes()[:64].decode("ascii", "replace")
        if not text.startswith("seconds="):
            raise RejectedFileError("this is not a recording ffmpeg can read", code="not_media")
        return float(text.split("=", 1)[1].split()[0])

    async def probe(self, path: Path) -> ProbeResult:
        await trio.lowlevel.checkpoint()
        claims = path.read_bytes()[:64].decode("ascii", "replace").partition("claims=")[2].split()
        claimed = float(claims[0]) if claims else self._seconds(path)
        return ProbeResult(format_name="synthetic", claimed_duration=claimed, audio_streams=1, audio_codec="pcm")

    @asynccontextmanager
    async def open_pcm(self, path: Path, *, audio_track: int = 0) -> AsyncIterator[AsyncIterator[np.ndarray]]:
        seconds = self._seconds(path)
        self.opened += 1

        async def blocks() -> AsyncIterator[np.ndarray]:
            rng = np.random.default_rng(11)
            total = round(seconds * SAMPLE_RATE)
            for start in range(0, total, SAMPLE_RATE):
                size = min(SAMPLE_RATE, total - start)
                block = rng.normal(0, 20, size)
                if (start // SAMPLE_RATE) % 4 != 3:  # three seconds of speech, one of pause
                    block += rng.normal(0, 3000, size)
                await trio.lowlevel.checkpoint()
                yield np.clip(block, -32768, 32767).astype(np.int16)

        yield blocks()


def synthetic_recording(path: Path, seconds: float, *, claims: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"seconds={seconds}" + ("" if claims is None else f" claims={claims}") + "\n")
    return path


@pytest.fixture
def virtual_clock() -> trio.testing.MockClock:
    """Trio's mock clock, jumping ahead whenever the run is idle for 100 ms of real time: the
    daemon's file I/O runs in threads, which the clock must let finish before it jumps."""
    return trio.testing.MockClock(autojump_threshold=0.1)


async def no_events(folder: Path) -> AsyncIterator[object]:
    """A watcher that never reports anything: the rescan alone finds files (in virtual time)."""
    await trio.sleep_forever()
    yield None


def factory_for(engine: object) -> Callable[[Config], object]:
    @asynccontextmanager
    async def factory(_: Config) -> AsyncIterator[object]:
        yield engine

    return factory


def make_config(root: Path, **flags: object) -> Config:
    base: dict[str, object] = {
        "root": str(root),
        "settle_interval": "0.1",
        "rescan_interval": "0.5",
        "log_level": "warning",
        "min_free_space_mb": "0",  # tests must not depend on the machine's free disk
        "web.listen": "",  # in-process daemons serve no page unless a test asks for one
    }
    base.update({k: str(v) for k, v in flags.items()})
    return load_config(environ={}, flags=base)


WAIT = 30


def jobs_in(work: Path) -> list[str]:
    """What work/ holds besides the daemon's lock: job folders, and the .trash-* folder of a
    removal a crash interrupted (swept at the next start)."""
    return sorted(name for name in os.listdir(work) if name != ".lock")


@asynccontextmanager
async def running(config: Config, engine: object, **options: Any) -> AsyncIterator[trio.Event]:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_daemon(
                config,
                engine_factory=factory_for(engine),
                install_signal_handlers=False,
                shutdown=shutdown,
                task_status=task_status,
                **options,
            )
        )
        try:
            yield shutdown
        finally:
            shutdown.set()


async def wait_for(path: Path) -> Path:
    with trio.fail_after(WAIT):
        while not path.exists():
            await trio.sleep(0.05)
    return path


async def wait_until(check: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT):
        while not check():
            await trio.sleep(0.05)


def progress(root: Path, stem: str) -> dict:
    return json.loads((root / "outbox" / f"{stem}.progress.json").read_text())


async def finished(root: Path, stem: str) -> dict:
    path = root / "outbox" / f"{stem}.progress.json"
    await wait_until(lambda: path.exists() and json.loads(path.read_text())["state"] in ("done", "failed"))
    return progress(root, stem)


__all__ = ["BECKETT", "TWO_CITIES", "FakeEngine", "PermanentError", "RetryableError", "factory_for", "make_config", "make_media"]
