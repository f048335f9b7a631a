"""mp3 uploads encoded in the daemon's process (LAME behind a LAME/Info frame of our own): no
child process, and a server's ffmpeg decodes them to exactly the samples it decoded from the
ffmpeg-made uploads they replace, with the same header fields."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import trio
from conftest import TWO_CITIES
from transcribed.engines import openai
from transcribed.engines.mp3 import EMPTY_ID3V2, _crc_bytes, crc16, encode_mp3
from transcribed.engines.openai import encode_piece, upload_format

RATE = 16000


def speech(seconds: float = 30.0) -> np.ndarray:
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(TWO_CITIES), "-f", "s16le", "-ac", "1", "-ar", str(RATE), "-"], capture_output=True, check=True).stdout
    samples = np.frombuffer(pcm, dtype="<i2")
    return np.tile(samples, int(seconds * RATE) // len(samples) + 1)[: int(seconds * RATE)].copy()


def ffmpeg_mp3(audio: np.ndarray, path: Path) -> bytes:
    """The upload as ffmpeg's mp3 muxer wrote it before (a seekable output, bit-exact)."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "s16le", "-ar", str(RATE), "-ac", "1", "-i", "pipe:0",
         "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
         "-c:a", "libmp3lame", "-b:a", "32k", "-compression_level", "9", "-f", "mp3", str(path)],
        input=audio.tobytes(), check=True, timeout=60,
    )  # fmt: skip
    return path.read_bytes()


def decoded(data: bytes) -> np.ndarray:
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", str(RATE), "pipe:1"], input=data, capture_output=True, check=True, timeout=60).stdout
    return np.frombuffer(out, dtype="<i2")


def info_fields(data: bytes) -> dict[str, object]:
    """The Xing and LAME fields of an mp3's first frame (after an ID3v2 tag)."""
    frame = data[len(EMPTY_ID3V2) :]
    assert frame[13:17] == b"Info"
    flags, frames, size = struct.unpack(">III", frame[17:29])
    lame = frame[133:169]
    delays = int.from_bytes(lame[21:24], "big")
    music_length, music_crc = struct.unpack(">IH", lame[28:34])
    return {"flags": flags, "frames": frames, "bytes": size, "encoder": lame[:9], "delay": delays >> 12, "padding": delays & 0xFFF, "music_length": music_length, "music_crc_ok": music_crc == crc16(frame[_frame_size(frame) :])}


def _frame_size(frame: bytes) -> int:
    """Bytes in an MPEG-2 Layer III frame at 16 kHz, from its header."""
    bitrates = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
    return 72_000 * bitrates[frame[2] >> 4] // 16000


async def test_an_mp3_upload_is_encoded_without_a_child_and_decodes_as_ffmpegs_did(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """encode_piece starts no ffmpeg for an mp3 (one child per piece peaked at 231 MiB PSS for
    16 pieces at once); ffmpeg decodes the upload to exactly the samples it decoded from the
    ffmpeg-made upload of the same piece: same start (no 69 ms of priming), same length."""
    audio = speech()

    async def no_child(*args: object, **kwargs: object) -> None:
        raise AssertionError("an ffmpeg child was started for an mp3 upload")

    monkeypatch.setattr(openai.trio, "run_process", no_child)
    with trio.fail_after(30):
        data = await encode_piece(audio, upload_format("mp3"))
    monkeypatch.undo()
    before = ffmpeg_mp3(audio, tmp_path / "before.mp3")
    assert len(data) == len(before)
    assert np.array_equal(decoded(data), decoded(before))


def test_the_info_frame_carries_what_ffmpegs_muxer_wrote(tmp_path: Path) -> None:
    """Flags, frame and byte counts, encoder string, LAME's 576-sample delay and the padding,
    the music length and a music CRC that checks out: field for field ffmpeg's, for pieces of
    several lengths."""
    for seconds in (1.0, 20.0, 61.3):
        audio = speech(seconds)
        ours, theirs = info_fields(encode_mp3(audio, bitrate=32, sample_rate=RATE)), info_fields(ffmpeg_mp3(audio, tmp_path / "x.mp3"))
        assert ours == theirs and ours["delay"] == 576 and ours["music_crc_ok"], (seconds, ours, theirs)


def test_the_lame_crc_is_crc16_arc_however_long_the_data() -> None:
    """CRC-16/ARC's check value, and the block-parallel CRC equals the byte-at-a-time one."""
    assert crc16(b"123456789") == 0xBB3D
    for size in (0, 1, 2047, 2048, 2049, 100_000, 360_001):
        data = os.urandom(size)
        assert crc16(data) == _crc_bytes(0, data), size
