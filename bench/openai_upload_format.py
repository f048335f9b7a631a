"""Which format and bitrate to upload pieces in: size against the API's limits, and accuracy.

Run from the repository root (takes a few minutes; 2 cores):

    .venv/bin/python bench/openai_upload_format.py [--seconds 180] [--json out.json]

The OpenAI API cannot be called from here, so accuracy is measured with a stand-in listener:
the embedded Moonshine engine, on a corpus recording of real speech over a hearing-room noise
floor (bench/corpus.py). Each variant is encoded exactly as the openai engine encodes a piece
(transcribed.engines.openai.encode_piece: an ffmpeg pipe, 16 kHz mono, bit-exact), decoded back,
cut into the same ~30 s pieces and transcribed; its word error rate is compared with the
lossless original's. Printed per variant: bytes per audio minute, the longest piece that fits
OpenAI's 26,214,400-byte request, encoding speed, WER and the change against lossless.

Whisper-family models (whisper-1, and the gpt-4o models' audio encoders) hear 16 kHz mono
anyway, so nothing above that is kept. Formats are limited to those OpenAI lists; Opus is shown
for comparison but gpt-4o models have been reported to refuse Ogg/Opus uploads.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from corpus import build, load_layout  # noqa: E402
from textnorm import wer  # noqa: E402

from transcribed.config import EmbeddedConfig  # noqa: E402
from transcribed.cutting import PieceCutter  # noqa: E402
from transcribed.engines.embedded import open_embedded_engine  # noqa: E402
from transcribed.engines.base import transcribe_audio  # noqa: E402
from transcribed.engines.openai import OPENAI_UPLOAD_LIMIT, UploadFormat, encode_piece, upload_format  # noqa: E402
from transcribed.planning import SAMPLE_RATE, PieceLimits  # noqa: E402


def variants() -> dict[str, UploadFormat]:
    found = {"wav (lossless)": upload_format("wav"), "flac (lossless)": upload_format("flac")}
    for bitrate in (16, 24, 32, 64):
        found[f"mp3 {bitrate}k"] = upload_format("mp3", bitrate)
    for bitrate in (24,):
        found[f"ogg/opus {bitrate}k"] = UploadFormat(suffix="ogg", mime="audio/ogg", ffmpeg_args=("-c:a", "libopus", "-b:a", f"{bitrate}k", "-f", "ogg"), bytes_per_second=bitrate * 125)
    return found


def decode(data: bytes) -> np.ndarray:
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "pipe:1"], input=data, capture_output=True, check=True).stdout
    return np.frombuffer(pcm, dtype="<i2")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def measure(seconds: float) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "corpus.wav"
        build(path, seconds, seed=3)
        references = [p["text"] for p in load_layout(path.with_name("corpus.layout.json")) if p["end"] <= seconds]
        original = decode(path.read_bytes())
    limits = PieceLimits(target_seconds=30, max_seconds=45)
    rows: list[dict[str, object]] = []
    async with open_embedded_engine(EmbeddedConfig()) as engine:
        for name, fmt in variants().items():
            cpu = children_cpu()
            data = await encode_piece(original, fmt)
            encode_cpu = children_cpu() - cpu
            heard = decode(data)[: len(original)]
            cutter = PieceCutter(limits)
            pieces = [*cutter.feed(heard), *cutter.finish()]
            texts: list[str] = [""] * len(pieces)

            async def one(index: int, audio: np.ndarray, texts: list[str] = texts) -> None:
                result = await transcribe_audio(engine, audio)
                texts[index] = " ".join(s.text for s in result.segments)

            async with trio.open_nursery() as nursery:
                for index, piece in enumerate(pieces):
                    nursery.start_soon(one, index, piece.audio)
            per_minute = len(data) / (len(original) / SAMPLE_RATE / 60)
            rows.append({
                "variant": name,
                "bytes_per_minute": round(per_minute),
                "max_piece_seconds": round((OPENAI_UPLOAD_LIMIT - 64 * 1024) / (per_minute / 60)),
                "encode_speed_x_realtime": round(seconds / max(encode_cpu, 1e-3)),
                "wer": round(wer(references, texts), 4),
            })  # fmt: skip
            print(f"  measured {name}", file=sys.stderr)
    baseline = float(rows[0]["wer"])  # type: ignore[arg-type]
    for row in rows:
        row["wer_change"] = round(float(row["wer"]) - baseline, 4)  # type: ignore[arg-type]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = trio.run(measure, args.seconds)
    print(f"\n{args.seconds:g} s of corpus speech; WER by the embedded engine (a stand-in listener)\n")
    print(f"{'variant':<18} {'bytes/min':>10} {'fits 25 MiB':>12} {'encode':>9} {'WER':>7} {'vs lossless':>12}")
    for row in rows:
        print(f"{row['variant']:<18} {row['bytes_per_minute']:>10,} {row['max_piece_seconds']:>10,} s {row['encode_speed_x_realtime']:>7}x {float(row['wer']):>7.2%} {float(row['wer_change']):>+12.2%}")  # type: ignore[arg-type]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
