"""ffprobe and ffmpeg as child processes: probe a file, stream its audio as 16 kHz mono PCM.

Every call on an untrusted file follows the same rules: argv list (never a shell), the input
given as `file:` + an absolute path the daemon chose, only the `file` protocol, a whitelist of
demuxers, no stdin, a minimal environment (no API key, no NOTIFY_SOCKET), and a timeout. A
crash of ffmpeg on a hostile file is a failed child process, never a crashed daemon.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog
import trio

from transcribed.errors import ConfigError, JobError, RejectedFileError
from transcribed.planning import SAMPLE_RATE

logger = structlog.get_logger()

# Demuxers a recording may come in. "mov" covers mp4/m4a/3gp, "matroska" covers mkv and webm.
FORMAT_WHITELIST = "mp3,wav,flac,ogg,mov,matroska,aac,w64,caf,aiff"
_STDERR_KEEP = 4096
_READ_SIZE = 1 << 16


def child_environment() -> dict[str, str]:
    """The whole environment a media child process gets: no secrets, no systemd sockets."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


# Every child the daemon starts runs in a process group of its own. Ctrl-C in a terminal signals
# the whole foreground group: a model worker still importing, or an ffmpeg mid-decode, died of it
# while the daemon was draining, and the drain logged a worker that "stopped unexpectedly" and a
# decode "incomplete". The daemon ends its children itself; under systemd KillMode=mixed does.
OWN_GROUP: dict[str, Any] = {"process_group": 0}


def _input_args(path: Path) -> list[str]:
    if not path.is_absolute():
        raise ValueError(f"media paths must be absolute, got {path}")
    return [
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        FORMAT_WHITELIST,
        "-i",
        f"file:{path}",
    ]


def _clean_stderr(raw: bytes) -> str:
    """ffmpeg's complaint, made safe to show: printable text only, the last few lines."""
    text = raw.decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() or ch == "\n" else "?" for ch in text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-3:])[:500]


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaLimits:
    """Kernel limits on every ffprobe/ffmpeg child reading an untrusted file (set with
    util-linux prlimit, not preexec_fn, which is unsafe with threads): CPU seconds, address
    space, open files, and a file size of 0, so a subverted decoder cannot write to disk (its
    output is a pipe)."""

    cpu_seconds: int = 3600
    memory_bytes: int = 1 << 30
    open_files: int = 64

    def confine(self, command: list[str]) -> list[str]:
        return [
            "prlimit",
            f"--cpu={self.cpu_seconds}",
            f"--as={self.memory_bytes}",
            f"--nofile={self.open_files}",
            "--fsize=0",
            "--core=0",
            "--",
            *command,
        ]


# what the daemon runs, and the Debian package that brings it
TOOLS = {"ffmpeg": "ffmpeg", "ffprobe": "ffmpeg", "prlimit": "util-linux"}


def check_tools() -> None:
    """Every program the daemon runs is on PATH; else a ConfigError (exit 78) naming it and how
    to install it, at start, instead of 'ready' and then every file failed."""
    missing = sorted({name for name in TOOLS if shutil.which(name) is None})
    if missing:
        packages = " ".join(sorted({TOOLS[name] for name in missing}))
        raise ConfigError(
            f"{', '.join(missing)} not found on PATH ({os.environ.get('PATH', '')})",
            hint=f"install them: sudo apt-get install {packages}",
        )


class Decoder(Protocol):
    """The media edge: what a job asks of ffprobe and ffmpeg, injectable like the HTTP
    transport, so the pipeline's waits and retries can be tested in virtual time."""

    async def probe(self, path: Path) -> ProbeResult:
        """What the file claims to be; RejectedFileError if it is not a recording with audio."""
        ...

    def open_pcm(
        self, path: Path, *, audio_track: int = 0
    ) -> AbstractAsyncContextManager[AsyncIterator[np.ndarray]]:
        """One audio track as 16 kHz mono int16 blocks, as they decode (see open_pcm_stream)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class FfmpegDecoder:
    """The real media edge: ffprobe and ffmpeg child processes under the configured limits."""

    probe_timeout: float = 60.0
    max_seconds: float = 12 * 3600.0
    stall_timeout: float = 120.0
    limits: MediaLimits = MediaLimits()

    async def probe(self, path: Path) -> ProbeResult:
        return await probe(path, timeout=self.probe_timeout, limits=self.limits)

    def open_pcm(
        self, path: Path, *, audio_track: int = 0
    ) -> AbstractAsyncContextManager[AsyncIterator[np.ndarray]]:
        return open_pcm_stream(
            path,
            max_seconds=self.max_seconds,
            stall_timeout=self.stall_timeout,
            limits=self.limits,
            audio_track=audio_track,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioTrack:
    """One audio stream as ffprobe lists it; `number` counts audio streams only (0:a:N)."""

    number: int
    codec: str | None
    default: bool = False
    language: str | None = None
    title: str | None = None
    start_seconds: float = 0.0  # after the file's start (a video's audio may begin later)

    def describe(self) -> str:
        details = [d for d in (self.title, self.language, "default" if self.default else None) if d]
        return f"track {self.number + 1}" + (f" ({', '.join(details)})" if details else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """What ffprobe says about a file. Durations here are claims; only decoding proves them."""

    format_name: str
    claimed_duration: float | None
    audio_streams: int
    audio_codec: str | None
    audio_tracks: tuple[AudioTrack, ...] = ()

    @property
    def chosen_track(self) -> int:
        """The audio track to transcribe: the one marked default, else the first."""
        return next((t.number for t in self.audio_tracks if t.default), 0)

    def track_warning(self) -> str | None:
        """When there was a choice of audio tracks, which one was taken."""
        if len(self.audio_tracks) < 2:
            return None
        chosen = self.audio_tracks[self.chosen_track]
        why = "it is marked default" if chosen.default else "none is marked default"
        return (
            f"the recording has {len(self.audio_tracks)} audio tracks; {chosen.describe()} was "
            f"transcribed because {why}"
        )

    def length_warning(self, decoded_seconds: float) -> str | None:
        """When the container's duration and the decoded audio disagree (a gap in the
        timestamps, a damaged index, a header that lies); times follow the audio's timestamps."""
        claimed = self.claimed_duration
        if claimed is None or abs(decoded_seconds - claimed) <= max(1.0, 0.01 * claimed):
            return None
        return (
            f"the file says it lasts {claimed:.1f} s but its audio runs {decoded_seconds:.1f} s on "
            "its own timeline; the transcript's times follow the audio's timestamps"
        )


async def probe(path: Path, *, timeout: float, limits: MediaLimits = MediaLimits()) -> ProbeResult:  # noqa: ASYNC109 - a slow probe is the file's fault, reported as such
    """Ask ffprobe what the file is; RejectedFileError if it is not a recording with audio."""
    command = [
        "ffprobe",
        "-hide_banner",
        "-loglevel",
        "error",
        "-print_format",
        "json",
        "-show_format",
        "-show_streams",
        *_input_args(path),
    ]
    try:
        with trio.fail_after(timeout):
            result = await trio.run_process(
                limits.confine(command),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                stdin=subprocess.DEVNULL,
                env=child_environment(),
                **OWN_GROUP,
            )
    except trio.TooSlowError:
        raise RejectedFileError(
            f"ffprobe did not finish reading the file within {timeout:g} s",
            hint="the file may be damaged or hostile; convert it to a common format and drop it again",
            code="probe_timeout",
        ) from None
    if result.returncode != 0:
        detail = _clean_stderr(result.stderr)
        raise RejectedFileError(
            "this is not a recording ffmpeg can read" + (f" ({detail})" if detail else ""),
            hint="drop an audio or video file (mp3, wav, flac, m4a, ogg/opus, mp4, mkv, webm)",
            code="not_media",
        )
    try:
        info = json.loads(result.stdout or b"{}")
    except json.JSONDecodeError:
        raise RejectedFileError(
            "ffprobe's answer about this file was unreadable", code="not_media"
        ) from None
    streams = [s for s in info.get("streams", []) if s.get("codec_type") == "audio"]
    fmt = info.get("format", {})
    claimed: float | None
    try:
        claimed = float(fmt["duration"])
        if not math.isfinite(claimed):
            claimed = None
    except (KeyError, TypeError, ValueError):
        claimed = None
    if not streams:
        raise RejectedFileError(
            "the file has no audio track",
            hint="check that the recording captured sound; export it again with its audio",
            code="no_audio",
        )
    return ProbeResult(
        format_name=str(fmt.get("format_name", "")),
        claimed_duration=claimed,
        audio_streams=len(streams),
        audio_codec=streams[0].get("codec_name"),
        audio_tracks=tuple(
            _audio_track(number, stream, _seconds(fmt.get("start_time")))
            for number, stream in enumerate(streams)
        ),
    )


def _seconds(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _audio_track(number: int, stream: dict[str, Any], file_start: float) -> AudioTrack:
    tags = stream.get("tags") or {}
    return AudioTrack(
        number=number,
        codec=stream.get("codec_name"),
        default=bool((stream.get("disposition") or {}).get("default")),
        language=tags.get("language") if tags.get("language") not in (None, "und") else None,
        title=tags.get("title"),
        start_seconds=max(0.0, _seconds(stream.get("start_time")) - file_start),
    )


class DecodeError(JobError):
    """ffmpeg stopped with an error while decoding; `samples` says how far it got."""

    def __init__(self, reason: str, *, samples: int) -> None:
        super().__init__(reason)
        self.samples = samples


@asynccontextmanager
async def open_pcm_stream(
    path: Path,
    *,
    max_seconds: float,
    stall_timeout: float,
    limits: MediaLimits = MediaLimits(),
    audio_track: int = 0,
) -> AsyncIterator[AsyncIterator[np.ndarray]]:
    """Decode an audio track (0:a:N) to 16 kHz mono int16, yielded as arrays as ffmpeg makes them.

    Samples follow the recording's own timeline: `aresample=async=1:first_pts=0` pads with
    silence when the audio starts after the file does (a video whose sound begins 4.9 s in) and
    fills gaps in the timestamps (an mkv with a 600 s hole), so sample N is at N/16000 s of the
    recording. Files with continuous timestamps decode bit-identical to before (measured on
    wav, mp3, m4a, ogg/opus).

    The decoder stops on its own after `max_seconds` of audio (one more second is decoded so the
    caller can tell "exactly at the limit" from "over it"). When the iteration ends normally
    ffmpeg's exit status is checked and DecodeError raised on failure; leaving the block early
    kills the child.
    """
    command = [
        "ffmpeg",
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-threads",
        "1",
        *_input_args(path),
        "-map",
        f"0:a:{audio_track}",
        "-vn",
        "-sn",
        "-dn",
        "-af",
        "aresample=async=1:first_pts=0",
        "-ac",
        "1",
        "-ar",
        str(SAMPLE_RATE),
        "-t",
        f"{max_seconds + 1:.3f}",
        "-f",
        "s16le",
        "-acodec",
        "pcm_s16le",
        "pipe:1",
    ]
    process = await trio.lowlevel.open_process(
        limits.confine(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_environment(),
        **OWN_GROUP,
    )
    assert process.stdout is not None and process.stderr is not None
    stderr_tail = bytearray()

    async def drain_stderr() -> None:
        assert process.stderr is not None
        async for chunk in process.stderr:
            stderr_tail.extend(chunk)
            del stderr_tail[:-_STDERR_KEEP]

    async def chunks() -> AsyncIterator[np.ndarray]:
        assert process.stdout is not None
        carry = b""
        samples = 0
        while True:
            with trio.move_on_after(stall_timeout) as stall:
                data = await process.stdout.receive_some(_READ_SIZE)
            if stall.cancelled_caught:
                raise JobError(
                    f"the decoder produced no audio for {stall_timeout:g} s",
                    hint="the file may be damaged; convert it to a common format and drop it again",
                )
            if not data:
                break
            data = carry + data
            usable = len(data) - (len(data) % 2)
            carry = data[usable:]
            if usable:
                block = np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)
                samples += len(block)
                yield block
        with trio.move_on_after(stall_timeout):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.returncode != 0:
            detail = _clean_stderr(bytes(stderr_tail))
            raise DecodeError(
                "ffmpeg could not decode the audio" + (f": {detail}" if detail else ""),
                samples=samples,
            )

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain_stderr)
            try:
                yield chunks()
            finally:
                if process.returncode is None:
                    process.kill()
                with trio.move_on_after(5, shield=True):
                    await process.wait()
    except BaseExceptionGroup as group:
        # The caller's own error (a DecodeError from the stream, a file too long) came back
        # wrapped by this helper's nursery: hand it back as it was raised.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        if process.returncode is None:
            process.kill()
