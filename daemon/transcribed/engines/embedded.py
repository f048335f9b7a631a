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
from transcribed.engines.base import PieceResult, Segment
from transcribed.errors import ConfigError, PermanentError, RetryableError
from transcribed.media import child_environment
from transcribed.planning import SAMPLE_RATE, PieceLimits

logger = structlog.get_logger()

_START_TIMEOUT = 120.0
# A worker whose resident memory passed this is replaced after its current piece.
_RECYCLE_RSS = 1_200 * 1024 * 1024


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


class _LineReader:
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


class _Worker:
    """One worker process and its pipes."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self._lines = _LineReader(process.stdout)
        self.rss = 0

    @classmethod
    async def start(cls, model_dir: Path) -> _Worker:
        env = child_environment() | {"MOONSHINE_ORT_SINGLE_THREAD": "1"}
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "transcribed.engines.moonshine_worker", str(model_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
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
        self.rss = int(message.get("rss", 0))
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
    """A pool of Moonshine workers; `transcribe` borrows one for the length of a piece."""

    name = "embedded"
    model = "moonshine-base-en"

    def __init__(self, config: EmbeddedConfig, model_dir: Path, workers: list[_Worker]) -> None:
        self.limits = PieceLimits(
            target_seconds=config.piece_target_seconds, max_seconds=config.piece_max_seconds
        )
        self.capacity = len(workers)
        self._model_dir = model_dir
        # A slot holding None needs a fresh worker (its last one died or was recycled).
        self._idle_send, self._idle_receive = trio.open_memory_channel[_Worker | None](len(workers))
        for worker in workers:
            self._idle_send.send_nowait(worker)

    async def transcribe(self, audio: np.ndarray) -> PieceResult:
        worker = await self._idle_receive.receive()
        healthy = False
        try:
            if worker is None:
                worker = await _Worker.start(self._model_dir)
            with trio.fail_after(60 + 5 * len(audio) / SAMPLE_RATE):
                segments = await worker.transcribe(audio)
            healthy = True
            return PieceResult(segments=segments)
        except trio.TooSlowError:
            raise RetryableError("an engine worker took far too long on one piece") from None
        finally:
            if worker is not None and (not healthy or worker.rss > _RECYCLE_RSS):
                if healthy:
                    logger.info("engine.worker_recycled", rss_mib=worker.rss >> 20)
                worker.kill()
                worker = None
            self._idle_send.send_nowait(worker)

    async def aclose(self) -> None:
        workers = []
        while True:
            try:
                worker = self._idle_receive.receive_nowait()
            except trio.WouldBlock:
                break
            if worker is not None:
                workers.append(worker)
        for worker in workers:
            await worker.aclose()


@asynccontextmanager
async def open_embedded_engine(config: EmbeddedConfig) -> AsyncIterator[EmbeddedEngine]:
    """Start every worker (so a missing model stops start-up, not the first job) and stop them
    all when the block ends."""
    model_dir = config.model_dir or default_model_dir()
    check_model_dir(model_dir)
    count = worker_count(config)
    workers: list[_Worker] = []

    async def start_one() -> None:
        workers.append(await _Worker.start(model_dir))

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(start_one)
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    engine = EmbeddedEngine(config, model_dir, workers)
    logger.info("engine.ready", engine=engine.name, model=engine.model, workers=count)
    try:
        yield engine
    finally:
        with trio.CancelScope(shield=True):
            await engine.aclose()
