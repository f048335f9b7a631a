"""The embedded engine: Moonshine base-en on the CPU, in a pool of worker processes.

Each worker (see moonshine_worker.py) loads the model once and takes one piece at a time over a
pipe. Processes rather than threads, measured in bench/engine_parallelism.py: the same speed
with both cores busy, but a native crash or leak costs one worker instead of the daemon, a
worker whose memory grew is simply replaced, and the event loop never shares the GIL with the
model's Python glue. The weights are the ones shipped inside the moonshine-cpp wheel, found
without importing that module (its import loads a second ONNX runtime into the process).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import trio

from transcribed.config import EmbeddedConfig
from transcribed.engines.base import EngineTraits, PieceResult, PreparedPiece, Segment
from transcribed.errors import ConfigError, PermanentError, RetryableError
from transcribed.media import OWN_GROUP, child_environment
from transcribed.planning import SAMPLE_RATE, PieceLimits
from transcribed.retry import RetryPolicy
from transcribed.workers import LineReader

logger = structlog.get_logger()

_START_TIMEOUT = 120.0


def default_model_dir() -> Path:
    """The base-en weights inside the installed moonshine-cpp wheel (found, not imported)."""
    spec = importlib.util.find_spec("moonshine_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the moonshine-cpp package (which carries the model) is not installed",
            hint="install transcribed with its dependencies: pip install -e .",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "base-en"


def check_model_dir(model_dir: Path) -> None:
    missing = [
        name
        for name in ("encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin")
        if not (model_dir / name).is_file()
    ]
    if missing:
        raise ConfigError(
            f"the Moonshine model folder {model_dir} lacks {', '.join(missing)}",
            hint="point embedded.model_dir at a base-en model folder, or unset it to use the "
            "one shipped in moonshine-cpp",
        )


def worker_count(config: EmbeddedConfig) -> int:
    return config.workers or max(1, len(os.sched_getaffinity(0)))


class _Worker:
    """One worker process and its pipes."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self._lines = LineReader(process.stdout)

    @classmethod
    async def start(cls, model_dir: Path) -> _Worker:
        env = child_environment() | {
            # one ONNX thread per worker: its default threads burn ~70 % more CPU for nothing
            "MOONSHINE_ORT_SINGLE_THREAD": "1",
            # The runtime mallocs and frees large tensors through mmap, faulting in ~10 million
            # fresh pages per 44 s of audio; huge pages cut the worker's CPU time by 55-63 %
            # with the same transcripts and peak memory (bench/engine_parallelism.py).
            "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
        }
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "transcribed.engines.moonshine_worker", str(model_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            **OWN_GROUP,
        )
        worker = cls(process)
        try:
            with trio.fail_after(_START_TIMEOUT):
                message = await worker._read_message()
        except BaseException:
            worker.kill()
            raise
        if "error" in message:
            worker.kill()
            raise PermanentError(str(message["error"]), hint="check embedded.model_dir")
        logger.debug("engine.worker_started", pid=process.pid)
        return worker

    async def _read_message(self) -> dict[str, Any]:
        try:
            line = await self._lines.read_line()
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            await self.process.wait()
            raise RetryableError(
                f"an engine worker stopped unexpectedly (exit status {self.process.returncode})"
            ) from None
        message: dict[str, Any] = json.loads(line)
        return message

    async def transcribe(self, audio: np.ndarray) -> list[Segment]:
        payload = np.ascontiguousarray(audio, dtype="<i2").tobytes()
        try:
            await self._stdin.send_all(len(audio).to_bytes(8, "little") + payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.process.wait()
            raise RetryableError(
                f"an engine worker stopped unexpectedly (exit status {self.process.returncode})"
            ) from None
        message = await self._read_message()
        if "error" in message:
            raise PermanentError(f"the engine failed on this piece: {message['error']}")
        return [
            Segment(start=float(start), end=float(start) + float(duration), text=str(text))
            for start, duration, text in message["lines"]
        ]

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()

    async def aclose(self) -> None:
        with trio.move_on_after(5, shield=True):
            await self._stdin.aclose()
            await self.process.wait()
        self.kill()
        with trio.move_on_after(1, shield=True):
            await self.process.wait()


class EmbeddedEngine:
    """A pool of Moonshine worker processes, each used for exactly one piece.

    The runtime keeps process-wide state from one transcription to the next (measured: the same
    piece comes out with line starts 32 ms apart, sometimes a different word, depending on
    which pieces went before, even through a fresh Transcriber or stream in the same process),
    while the first piece a new process transcribes always comes out the same. So each worker
    transcribes one piece and is replaced, the replacement loading in the background while the
    others work: transcripts are reproducible, and a resumed job equals an uninterrupted one.
    """

    def __init__(self, config: EmbeddedConfig, model_dir: Path, count: int) -> None:
        self.traits = EngineTraits(
            name="embedded",
            model="moonshine-base-en",
            limits=PieceLimits(
                target_seconds=config.piece_target_seconds, max_seconds=config.piece_max_seconds
            ),
            capacity=count,
            # a worker that crashes on the same piece three times will crash on it again
            retry=RetryPolicy(max_attempts=3),
        )
        self._model_dir = model_dir
        self._idle_send, self._idle_receive = trio.open_memory_channel[_Worker](count)
        # used workers go back to the replacer, which reaps them and starts fresh ones
        self._used_send, self._used_receive = trio.open_memory_channel[_Worker](count)

    async def prepare(self, audio: np.ndarray) -> PreparedPiece:
        return PreparedPiece(seconds=len(audio) / SAMPLE_RATE, audio=audio)

    async def transcribe(self, piece: PreparedPiece) -> PieceResult:
        assert piece.audio is not None
        audio = piece.audio
        worker = await self._idle_receive.receive()
        try:
            with trio.fail_after(60 + 5 * len(audio) / SAMPLE_RATE):
                return PieceResult(segments=await worker.transcribe(audio))
        except trio.TooSlowError:
            raise RetryableError("an engine worker took far too long on one piece") from None
        finally:
            worker.kill()
            self._used_send.send_nowait(worker)

    async def serve_replacer(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Reap each used worker and start a fresh one in its place, until cancelled."""

        async def replace(used: _Worker) -> None:
            await used.aclose()
            delay = 1.0
            while True:
                try:
                    fresh = await _Worker.start(self._model_dir)
                except (PermanentError, RetryableError) as exc:
                    logger.error("engine.worker_start_failed", error=exc.reason, retry_in=delay)
                    await trio.sleep(delay)
                    delay = min(60.0, delay * 2)
                    continue
                self._idle_send.send_nowait(fresh)
                return

        async with trio.open_nursery() as nursery:
            task_status.started()
            async for used in self._used_receive:
                nursery.start_soon(replace, used)

    def kill_idle(self) -> None:
        while True:
            try:
                self._idle_receive.receive_nowait().kill()
            except trio.WouldBlock:
                return


@asynccontextmanager
async def open_embedded_engine(config: EmbeddedConfig) -> AsyncIterator[EmbeddedEngine]:
    """Start every worker (so a missing model stops start-up, not the first job), keep them
    replaced while the block runs, and stop them all when it ends."""
    model_dir = config.model_dir or default_model_dir()
    check_model_dir(model_dir)
    count = worker_count(config)
    engine = EmbeddedEngine(config, model_dir, count)

    async def start_one() -> None:
        try:
            worker = await _Worker.start(model_dir)
        except (PermanentError, RetryableError) as exc:
            # an unusable model is the configuration's fault: stop start-up (exit 78), do not
            # say "ready" and then fail every file
            raise ConfigError(
                f"the embedded model cannot be loaded: {exc.reason}",
                hint="check embedded.model_dir (unset it to use the model shipped in moonshine-cpp) "
                "and reinstall transcribed with its dependencies",
            ) from None
        engine._idle_send.send_nowait(worker)

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(start_one)
        logger.info(
            "engine.ready", engine=engine.traits.name, model=engine.traits.model, workers=count
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.serve_replacer)
            yield engine
            nursery.cancel_scope.cancel()
    finally:
        engine.kill_idle()
