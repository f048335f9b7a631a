"""How to encode pieces for upload: ffmpeg children, or an encoder in the daemon's own process.

Run from the repository root (about a minute on 2 cores; lameenc and PyAV must be installed
for their rows, e.g. `.venv/bin/pip install lameenc==1.9.0 av==18.1.0`):

    .venv/bin/python bench/openai_encoder.py [--pieces 16] [--rounds 3] [--json out.json]

Each variant encodes `--pieces` pieces of 60-90 s of real speech (16 kHz mono int16, the
moonshine-voice wheel's recordings looped) at once, as the OpenAI engine's `prepare` does when
16 requests are in flight, to mp3 at 32 kbit/s with LAME's fastest quality:

  ffmpeg    what the engine did before: one ffmpeg child per piece (libmp3lame, bit-exact),
            writing into a memfd so the muxer can go back and write the LAME/Info header
  lameenc   lameenc's Encoder (LAME 3.100 linked in) alone, in a worker thread per piece
  daemon    transcribed.engines.openai.encode_piece as the engine runs it now: lameenc behind
            the LAME/Info frame of engines/mp3.py, one worker thread at a time (LAME holds the
            GIL: more threads only take turns with the event loop)
  pyav      PyAV's libmp3lame into an in-memory mp3 container (seekable, so it writes the
            Info header), bit-exact flags, in a worker thread per piece

Every variant runs in a fresh process of its own, rounds interleaved (ffmpeg, lameenc, pyav,
ffmpeg, ...), so import costs and allocator state are its own. It encodes the pieces twice:
first while the peak PSS of the process tree is sampled every 5 ms, then timed without the
sampler. Printed per variant (medians over the rounds): wall time, CPU seconds of the process
and its children, the PSS the import of the encoder added, the peak PSS while encoding over
the baseline before the import, output bytes per audio minute, whether the mp3 carries a
LAME/Info header, how ffmpeg's decode of it lines up with the source (the lag found by
cross-correlation, in samples, and decoded length minus source length), whether the same
samples encode to the same bytes twice, and whether the first piece's bytes, and ffmpeg's
decode of them, are the ffmpeg variant's. Our timing needs the lag to be 0: without the Info
header a decoder keeps the encoder's 1105 priming samples, and the server hears the piece
69 ms late (bench/timing.py).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))

from transcribed.engines.openai import encode_piece, upload_format  # noqa: E402

SAMPLE_RATE = 16000
BITRATE = 32
VARIANTS = ("ffmpeg", "lameenc", "daemon", "pyav")
ENCODER_DELAY = 1105  # LAME's priming samples at 16 kHz (576 + 529)
# In-process encoders are fed a second at a time: LAME converts a whole call's input to float
# buffers first, so one call with a 90 s piece holds ~12 MB more until it returns (measured:
# 16 pieces at once peaked 190 MiB over the baseline fed whole).
FEED = SAMPLE_RATE


def speech_assets() -> list[Path]:
    spec = importlib.util.find_spec("moonshine_voice")
    assert spec is not None and spec.submodule_search_locations
    assets = Path(next(iter(spec.submodule_search_locations))) / "assets"
    return [assets / "two_cities.wav", assets / "beckett.wav"]


def decode(data: bytes, source: str = "pipe:0") -> np.ndarray:
    result = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", source, "-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "pipe:1"],
        input=data if source == "pipe:0" else None, capture_output=True, check=True,
    )  # fmt: skip
    return np.frombuffer(result.stdout, dtype="<i2")


def pieces(count: int) -> list[np.ndarray]:
    """`count` pieces of 60-90 s cut from the real speech looped, each from its own offset."""
    speech = np.concatenate([decode(b"", str(path)) for path in speech_assets()])
    lengths = [
        round((60 + (30 * number) / max(1, count - 1)) * SAMPLE_RATE) for number in range(count)
    ]
    looped = np.tile(speech, sum(lengths) // len(speech) + 2)
    offsets = np.cumsum([0, *lengths[:-1]])
    return [np.ascontiguousarray(looped[o : o + n]) for o, n in zip(offsets, lengths, strict=True)]


# ---------------------------------------------------------------- the encoders


def lameenc_encoder() -> Callable[[np.ndarray], bytes]:
    import lameenc

    def encode(audio: np.ndarray) -> bytes:
        encoder = lameenc.Encoder()
        encoder.set_bit_rate(BITRATE)
        encoder.set_in_sample_rate(SAMPLE_RATE)
        encoder.set_out_sample_rate(SAMPLE_RATE)
        encoder.set_channels(1)
        encoder.set_quality(7)  # lameenc's fastest (ffmpeg's compression_level 9 is LAME's -q 9)
        output = bytearray()
        for start in range(0, len(audio), FEED):
            output += encoder.encode(audio[start : start + FEED].tobytes())
        output += encoder.flush()
        return bytes(output)

    return encode


def pyav_encoder() -> Callable[[np.ndarray], bytes]:
    import av
    import av.codec.context
    import av.container

    def encode(audio: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="mp3") as output:
            output.flags |= av.container.Flags.bitexact.value
            stream = output.add_stream("libmp3lame", rate=SAMPLE_RATE, layout="mono")
            stream.bit_rate = BITRATE * 1000
            stream.codec_context.flags |= av.codec.context.Flags.bitexact.value
            stream.codec_context.options = {"compression_level": "9"}
            for start in range(0, len(audio), FEED):
                block = audio[start : start + FEED].reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
                frame.sample_rate = SAMPLE_RATE
                frame.pts = start
                for packet in stream.encode(frame):
                    output.mux(packet)
            for packet in stream.encode(None):
                output.mux(packet)
        return buffer.getvalue()

    return encode


async def ffmpeg_child(audio: np.ndarray) -> bytes:
    """The engine's encoder before it moved in-process: an ffmpeg child per piece, its mp3
    written into a memfd (seekable: the muxer goes back to write the LAME/Info header)."""
    memory = os.memfd_create("piece", os.MFD_CLOEXEC)
    command = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1", "-y",
        "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", "pipe:0",
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
        "-c:a", "libmp3lame", "-b:a", f"{BITRATE}k", "-compression_level", "9", "-f", "mp3",
        f"/dev/fd/{memory}",
    ]  # fmt: skip
    try:
        payload = np.ascontiguousarray(audio, dtype="<i2").tobytes()
        await trio.run_process(command, stdin=payload, capture_stderr=True, pass_fds=(memory,))
        return os.pread(memory, os.fstat(memory).st_size, 0)
    finally:
        os.close(memory)


def load(variant: str) -> Callable[[np.ndarray], bytes] | None:
    """The encoder that runs in a worker thread (None: the variant awaits its own)."""
    if variant == "lameenc":
        return lameenc_encoder()
    if variant == "pyav":
        return pyav_encoder()
    return None


# ---------------------------------------------------------------- measuring one variant


class PeakPss:
    """The peak PSS of this process and its children, sampled every 5 ms in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def now() -> int:
        me = psutil.Process()
        total = me.memory_full_info().pss
        for child in me.children(recursive=True):
            try:
                total += child.memory_full_info().pss
            except psutil.Error:
                pass  # an ffmpeg that just ended
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds() -> float:
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def lag(source: np.ndarray, decoded: np.ndarray, window: int = 10 * SAMPLE_RATE) -> int:
    """Samples by which `decoded` runs behind `source` (cross-correlation of their first 10 s)."""
    a = source[:window].astype(np.float64)
    b = decoded[: window + 4 * ENCODER_DELAY].astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    correlation = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    best = int(np.argmax(correlation[: 4 * ENCODER_DELAY + 1]))
    tail = int(np.argmax(correlation[-4 * ENCODER_DELAY :])) - 4 * ENCODER_DELAY
    return best if correlation[best] >= correlation[tail] else tail


def has_info_header(data: bytes) -> bool:
    """The first MPEG frame is a Xing/Info frame (LAME's header with the encoder delay)."""
    start = data.find(b"\xff")
    if data[:3] == b"ID3":  # skip an ID3v2 tag: 10 bytes + its synchsafe size
        size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
        start = 10 + size
    return b"Info" in data[start : start + 200] or b"Xing" in data[start : start + 200]


async def encode_all(
    variant: str, audio: list[np.ndarray], encoder: Callable[[np.ndarray], bytes] | None
) -> list[bytes]:
    outputs: list[bytes] = [b""] * len(audio)
    fmt = upload_format("mp3", BITRATE)
    one_at_a_time = trio.CapacityLimiter(1)  # as the engine holds it

    async def one(index: int) -> None:
        if variant == "ffmpeg":
            outputs[index] = await ffmpeg_child(audio[index])
        elif variant == "daemon":
            outputs[index] = await encode_piece(audio[index], fmt, limiter=one_at_a_time)
        else:
            assert encoder is not None
            outputs[index] = await trio.to_thread.run_sync(encoder, audio[index])

    async with trio.open_nursery() as nursery:
        for index in range(len(audio)):
            nursery.start_soon(one, index)
    return outputs


def measure(variant: str, count: int) -> dict[str, Any]:
    audio = pieces(count)
    baseline = PeakPss.now()
    encoder = load(variant)
    imported = PeakPss.now()
    with PeakPss() as peak:  # first, in the fresh process
        outputs = trio.run(encode_all, variant, audio, encoder)
    # then the time, without the sampler (reading smaps costs CPU of its own)
    cpu, started = cpu_seconds(), time.perf_counter()
    again = trio.run(encode_all, variant, audio, encoder)
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    decoded = decode(outputs[0])
    seconds = sum(len(a) for a in audio) / SAMPLE_RATE
    return {
        "variant": variant,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "import_pss_mib": (imported - baseline) / 2**20,
        "peak_pss_mib": (max(peak.peak, imported) - baseline) / 2**20,
        "bytes_per_minute": sum(len(o) for o in outputs) / seconds * 60,
        "info_header": has_info_header(outputs[0]),
        "lag_samples": lag(audio[0], decoded),
        "length_difference": len(decoded) - len(audio[0]),
        "deterministic": again == outputs,
        "sha256": hashlib.sha256(outputs[0]).hexdigest(),
        "decoded_sha256": hashlib.sha256(decoded.tobytes()).hexdigest(),
        "audio_seconds": seconds,
    }


# ---------------------------------------------------------------- the comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pieces", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one child's run
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.pieces)))
        return
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            child = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--pieces", str(args.pieces)],
                capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"},
            )  # fmt: skip
            if child.returncode != 0:
                print(f"{variant}: failed: {child.stderr.strip()[-300:]}", file=sys.stderr)
                continue
            runs[variant].append(json.loads(child.stdout.strip().splitlines()[-1]))
    rows = []
    for results in runs.values():
        if not results:
            continue
        row = {
            key: statistics.median(r[key] for r in results)
            if isinstance(results[0][key], float)
            else results[0][key]
            for key in results[0]
        }
        row["deterministic"] = all(r["deterministic"] for r in results)
        rows.append(row)
    audio = rows[0]["audio_seconds"] if rows else 0
    print(
        f"{args.pieces} pieces of 60-90 s at once ({audio / 60:.1f} min of speech), mp3 {BITRATE} kbit/s, median of {args.rounds} rounds"
    )
    reference = next((row for row in rows if row["variant"] == "ffmpeg"), {})
    print(
        f"{'variant':<9} {'wall s':>7} {'CPU s':>6} {'import PSS':>11} {'peak PSS':>9} {'KB/min':>7} {'Info':>5} {'lag':>5} {'len diff':>9} {'same bytes':>10} {'bytes = ffmpeg':>14} {'decode = ffmpeg':>15}"
    )
    for row in rows:
        print(
            f"{row['variant']:<9} {row['wall_seconds']:>7.2f} {row['cpu_seconds']:>6.2f} {row['import_pss_mib']:>7.1f} MiB "
            f"{row['peak_pss_mib']:>5.1f} MiB {row['bytes_per_minute'] / 1000:>7.1f} {'yes' if row['info_header'] else 'no':>5} "
            f"{row['lag_samples']:>5} {row['length_difference']:>9} {'yes' if row['deterministic'] else 'no':>10} "
            f"{'yes' if row['sha256'] == reference.get('sha256') else 'no':>14} "
            f"{'yes' if row['decoded_sha256'] == reference.get('decoded_sha256') else 'no':>15}"
        )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
