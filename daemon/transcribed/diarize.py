"""Who spoke when: the local diarization pass of a job, run in a worker process.

While a job transcribes, `diarize_recording` decodes the same audio track of the source once
more (one ffmpeg pipe, 16 kHz mono, streamed; measured 0.3 CPU s per 10 minutes of MP3, against
16 s for the diarization itself: re-decoding is cheaper than teeing the job's own stream, and
it lets the pass run beside the transcription), streams the blocks to a fresh diarization
worker (diarize_worker.py, which holds ONNX Runtime and the speaker models) and gets back
speaker turns with one identity per person across the whole recording; after the merge
`label_segments` gives each segment its speaker (speakers.py). Known speakers' voiceprints,
made once at start from the reference clips by `load_known_speakers`, travel to each worker so
matching voices take their names.

Nothing here touches the network: the model files come from set-up (diarization_models.py) and
are checksummed before a worker loads them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import trio

from transcribed.config import Config
from transcribed.diarization_models import check_model_dir, default_model_dir
from transcribed.engines.base import Segment
from transcribed.errors import ConfigError, JobError
from transcribed.media import (
    OWN_GROUP,
    DecodeError,
    MediaLimits,
    child_environment,
    open_pcm_stream,
)
from transcribed.speakers import SpeakerTurn, assign_speakers, talk_times
from transcribed.workers import LineReader

logger = structlog.get_logger()

_START_TIMEOUT = 60.0
_FINISH_TIMEOUT = 600.0
CLIP_MIN_SECONDS = 2.0
CLIP_MAX_SECONDS = 30.0
CLIP_MIN_SPEECH = 1.0
CLIP_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".webm")


@dataclass(frozen=True, slots=True, kw_only=True)
class KnownSpeakers:
    """Names and voiceprints (unit vectors of 256 numbers) of the reference clips."""

    names: tuple[str, ...] = ()
    voiceprints: tuple[tuple[float, ...], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Diarization:
    turns: list[SpeakerTurn]
    speakers: list[str]  # in order of first appearance
    wall_seconds: float
    cpu_seconds: float  # of the worker
    peak_rss_mib: float  # of the worker


class DiarizeWorker:
    """One diarization worker process and its pipes (see diarize_worker.py for the protocol)."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self._lines = LineReader(process.stdout)

    async def _message(self) -> dict[str, Any]:
        try:
            line = await self._lines.read_line()
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            await self.process.wait()
            raise JobError(
                f"the diarization worker stopped unexpectedly (exit status {self.process.returncode})"
            ) from None
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            raise JobError(f"diarization failed: {message['error']}")
        return message

    async def _send(self, header: dict[str, Any], samples: np.ndarray | None = None) -> None:
        data = json.dumps(header).encode() + b"\n"
        if samples is not None:
            data += np.ascontiguousarray(samples, dtype="<i2").tobytes()
        try:
            await self._stdin.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.process.wait()
            raise JobError(
                f"the diarization worker stopped unexpectedly (exit status {self.process.returncode})"
            ) from None

    async def feed(self, block: np.ndarray) -> None:
        """Send 16 kHz mono int16 samples of the recording, in order."""
        await self._send({"op": "audio", "samples": len(block)}, block)

    async def know(self, known: KnownSpeakers) -> None:
        if known.names:
            await self._send(
                {"op": "known", "names": list(known.names), "voiceprints": list(known.voiceprints)}
            )

    async def voiceprint(self, samples: np.ndarray) -> tuple[list[float] | None, float]:
        await self._send({"op": "voiceprint", "samples": len(samples)}, samples)
        message = await self._message()
        return message["voiceprint"], float(message["speech"])

    async def finish(self) -> dict[str, Any]:
        await self._send({"op": "finish"})
        with trio.fail_after(_FINISH_TIMEOUT):
            return await self._message()


@asynccontextmanager
async def open_diarize_worker(model_dir: Path) -> AsyncIterator[DiarizeWorker]:
    problem = await trio.to_thread.run_sync(check_model_dir, model_dir)
    if problem:
        raise ConfigError(problem, hint="run: python -m transcribed.diarization_models install")
    env = child_environment() | {"OMP_NUM_THREADS": "1"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "transcribed.diarize_worker", str(model_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        **OWN_GROUP,
    )
    worker = DiarizeWorker(process)
    try:
        with trio.fail_after(_START_TIMEOUT):
            await worker._message()
        yield worker
    except BaseException:
        # cancelled (the job failed or the daemon drains) or failed: nothing more is wanted
        # of this worker, so it is not given time to finish what it was doing
        process.kill()
        raise
    finally:
        with trio.move_on_after(5, shield=True):
            await worker._stdin.aclose()
            await process.wait()
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(1, shield=True):
                await process.wait()


async def diarize_source(
    source: Path,
    *,
    model_dir: Path,
    known: KnownSpeakers = KnownSpeakers(),
    max_seconds: float = 12 * 3600.0,
    stall_timeout: float = 120.0,
    limits: MediaLimits | None = None,
    audio_track: int = 0,
) -> Diarization:
    """Decode one audio track of `source` (streamed) into a fresh worker and return its speaker
    turns. A recording damaged part way is diarized as far as it decodes (the transcription
    warns about the damage)."""
    started = trio.current_time()
    limits = limits or MediaLimits()
    async with open_diarize_worker(model_dir) as worker:
        await worker.know(known)
        try:
            async with open_pcm_stream(
                source,
                max_seconds=max_seconds,
                stall_timeout=stall_timeout,
                limits=limits,
                audio_track=audio_track,
            ) as blocks:
                async for block in blocks:
                    await worker.feed(block)
        except DecodeError as exc:
            if not exc.samples:
                raise
        answer = await worker.finish()
    return Diarization(
        turns=[
            SpeakerTurn(start=float(start), end=float(end), speaker=str(label))
            for start, end, label in answer["turns"]
        ],
        speakers=[str(label) for label in answer["speakers"]],
        wall_seconds=trio.current_time() - started,
        cpu_seconds=float(answer["cpu_seconds"]),
        peak_rss_mib=float(answer["peak_rss_mib"]),
    )


def _reference_clips(speakers_dir: Path) -> list[Path]:
    if not speakers_dir.is_dir():
        raise ConfigError(f"speakers_dir {speakers_dir} is not a folder")
    return sorted(
        path
        for path in speakers_dir.absolute().iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in CLIP_SUFFIXES
    )


async def _decode_clip(path: Path, limits: MediaLimits) -> np.ndarray:
    blocks = []
    async with open_pcm_stream(
        path, max_seconds=CLIP_MAX_SECONDS + 1, stall_timeout=30.0, limits=limits
    ) as stream:
        async for block in stream:
            blocks.append(block)
    return np.concatenate(blocks) if blocks else np.zeros(0, np.int16)


async def load_known_speakers(
    speakers_dir: Path, *, model_dir: Path, limits: MediaLimits | None = None
) -> KnownSpeakers:
    """Voiceprints of every reference clip in `speakers_dir`, named by the file's stem.

    Raises ConfigError naming the first clip that does not decode, is shorter than 2 s or
    longer than 30 s, or in which the models hear less than 1 s of speech."""
    clips = await trio.to_thread.run_sync(_reference_clips, speakers_dir)
    limits = limits or MediaLimits()
    names: list[str] = []
    prints: list[tuple[float, ...]] = []
    hint = "reference clips must be 2-30 s of one person speaking"
    async with open_diarize_worker(model_dir) as worker:
        for path in clips:
            try:
                samples = await _decode_clip(path, limits)
            except JobError as exc:
                raise ConfigError(
                    f"the speaker clip {path} does not decode: {exc}", hint=hint
                ) from None
            seconds = len(samples) / 16_000
            if seconds < CLIP_MIN_SECONDS:
                raise ConfigError(
                    f"the speaker clip {path} is too short ({seconds:.1f} s)", hint=hint
                )
            if seconds > CLIP_MAX_SECONDS:
                raise ConfigError(
                    f"the speaker clip {path} is too long (over {CLIP_MAX_SECONDS:g} s)", hint=hint
                )
            vector, speech = await worker.voiceprint(samples)
            if vector is None or speech < CLIP_MIN_SPEECH:
                raise ConfigError(
                    f"the speaker clip {path} holds no speech ({speech:.1f} s heard)", hint=hint
                )
            names.append(path.stem)
            prints.append(tuple(vector))
    logger.info("speakers.loaded", count=len(names), names=names)
    return KnownSpeakers(names=tuple(names), voiceprints=tuple(prints))


def label_segments(
    segments: Sequence[Segment], diarization: Diarization
) -> tuple[list[Segment], list[dict[str, Any]]]:
    """The merged segments with speakers, and the speakers' list with their talk time
    ([{"name": ..., "seconds": ...}], first appearance first)."""
    labelled = assign_speakers(list(segments), diarization.turns)
    return labelled, talk_times(diarization.turns, diarization.speakers)


def run_diarization_sync(
    source: Path, speakers_dir: Path | None = None, model_dir: Path | None = None
) -> Diarization:
    """diarize_source (with known speakers from speakers_dir) outside a daemon: for benchmarks."""
    folder = model_dir or default_model_dir()

    async def run() -> Diarization:
        known = KnownSpeakers()
        if speakers_dir is not None:
            known = await load_known_speakers(speakers_dir, model_dir=folder)
        return await diarize_source(source, model_dir=folder, known=known)

    started = time.perf_counter()
    result = trio.run(run)
    logger.debug("diarize.sync", seconds=time.perf_counter() - started)
    return result


# ---------------------------------------------------------------- what the pipeline calls


def speakers_wanted(config: Config, engine_name: str) -> bool:
    """`speakers = "auto"` labels speakers for the embedded engine; "on" for every engine."""
    return config.speakers == "on" or (config.speakers == "auto" and engine_name == "embedded")


async def prepare_speakers(config: Config, engine_name: str) -> KnownSpeakers:
    """At start: the speaker models must be there, and every reference clip usable (else
    ConfigError, naming the file); returns the known speakers' voiceprints."""
    if not speakers_wanted(config, engine_name):
        return KnownSpeakers()
    model_dir = default_model_dir()
    problem = await trio.to_thread.run_sync(check_model_dir, model_dir)
    if problem:
        raise ConfigError(
            problem,
            hint="run: python -m transcribed.diarization_models install (or set speakers = off)",
        )
    if config.speakers_dir is None:
        return KnownSpeakers()
    return await load_known_speakers(
        config.speakers_dir, model_dir=model_dir, limits=config.media_limits
    )


async def diarize_recording(
    config: Config, known: KnownSpeakers, source: Path, *, audio_track: int
) -> Diarization:
    """The job's diarization pass (diarize_source under the job's configured limits), on the
    audio track the job transcribes."""
    result = await diarize_source(
        source,
        model_dir=default_model_dir(),
        known=known,
        max_seconds=config.max_audio_seconds,
        stall_timeout=config.decode_stall_timeout,
        limits=config.media_limits,
        audio_track=audio_track,
    )
    logger.info(
        "job.diarized",
        speakers=len(result.speakers),
        turns=len(result.turns),
        seconds=round(result.wall_seconds, 2),
        cpu_seconds=round(result.cpu_seconds, 2),
        peak_rss_mib=round(result.peak_rss_mib),
    )
    return result
