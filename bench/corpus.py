"""Test recordings built from real speech with a known layout (what was said, and when).

The speech comes from the two recordings shipped in the moonshine-voice wheel:

* beckett.wav     "Ever tried. Ever failed. ..." (6 utterances)
* two_cities.wav  the opening of A Tale of Two Cities (13 utterances)

(endgame_nagg_nell.wav is not used: it is a two-voice scene whose exact words we cannot
check without a trusted transcript.)

Each source is decoded to 16 kHz mono (ffmpeg) and split into utterances at its pauses. The
boundaries (speech onset and offset of every utterance, in seconds of the source) were measured
once with a 10 ms energy profile (quiet runs below -50 dBFS of at least 100 ms) and are
hard-coded in UTTERANCES below; `python bench/corpus.py verify` re-checks them: the audio just
outside each utterance must be quiet, and each utterance transcribed alone by the embedded
engine must give its reference text.

A recording is built by placing utterances in a seeded random order over a constant noise
floor (pink + brown noise and a 50 Hz hum with harmonics, about -45 dBFS RMS); speech is
normalised to about -20 dBFS (active level). Pauses are mostly 0.3-4 s, sometimes 4-15 s;
sometimes several utterances follow each other with 0.08-0.25 s gaps, and now and then such a
run is long (12-20 utterances, ~1 minute with no pause the daemon would call a pause), so that
stretches of speech run past the embedded engine's maximum piece length.

The audio is rendered block by block and streamed to disk (a .wav via the wave module, any other
suffix through an ffmpeg pipe), so a 2-hour file needs only a few MiB of memory. Beside it goes
a layout JSON: [{"start": s, "end": s, "text": reference, "source": ..., "index": ...}, ...],
start/end being the speech onset/offset of each utterance in the built recording.

CLI:
    .venv/bin/python bench/corpus.py build OUT.wav --seconds 600 [--seed 1] [--layout OUT.layout.json]
    .venv/bin/python bench/corpus.py build OUT.mp3 --seconds 7200      # encoded by ffmpeg
    .venv/bin/python bench/corpus.py verify                           # check the boundaries
    .venv/bin/python bench/corpus.py list                             # print the utterance table
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import wave
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
ASSETS = (
    Path(__file__).resolve().parent.parent
    / ".venv/lib/python3.11/site-packages/moonshine_voice/assets"
)

# (speech onset, speech offset, reference text), seconds in the source file.
UTTERANCES: dict[str, list[tuple[float, float, str]]] = {
    "beckett": [
        (0.32, 1.50, "Ever tried."),
        (1.70, 2.86, "Ever failed."),
        (3.52, 4.42, "No matter."),
        (4.55, 5.50, "Try again."),
        (6.62, 7.49, "Fail again."),
        (8.00, 9.10, "Fail better."),
    ],
    "two_cities": [
        (1.21, 4.54, "It was the best of times, it was the worst of times,"),
        (5.02, 6.17, "it was the age of wisdom,"),
        (6.67, 8.18, "it was the age of foolishness,"),
        (8.82, 10.28, "it was the epoch of belief,"),
        (10.77, 12.77, "it was the epoch of incredulity,"),
        (13.48, 14.75, "it was the season of Light,"),
        (15.15, 16.67, "it was the season of Darkness,"),
        (17.57, 20.45, "it was the spring of hope, it was the winter of despair,"),
        (21.25, 23.99, "we had everything before us, we had nothing before us,"),
        (24.66, 25.97, "we were all going direct to Heaven,"),
        (26.56, 28.26, "we were all going direct the other way –"),
        (29.11, 32.22, "in short, the period was so far like the present period,"),
        (
            32.79,
            41.63,
            "that some of its noisiest authorities insisted on its being received, "
            "for good or for evil, in the superlative degree of comparison only.",
        ),
    ],
}

SPEECH_DBFS = -20.0  # active speech level the sources are normalised to
NOISE_DBFS = -45.0  # RMS of the background floor
MARGIN = 0.10  # seconds of source audio kept around each utterance (less if the gap is shorter)
FADE = 0.010
BLOCK = SAMPLE_RATE * 10  # render 10 s at a time
NOISE_LOOP = 61 * SAMPLE_RATE  # the coloured noise is an exactly periodic 61 s loop


@dataclass(frozen=True, slots=True)
class Clip:
    """One utterance cut from its source: samples (float32, normalised) and where speech is."""

    source: str
    index: int
    text: str
    audio: np.ndarray
    onset: int  # sample of speech onset inside `audio`
    offset: int  # sample of speech offset inside `audio`


@dataclass(frozen=True, slots=True)
class Placement:
    """An utterance placed in a built recording (seconds of the recording)."""

    start: float
    end: float
    text: str
    source: str
    index: int


def decode(path: Path) -> np.ndarray:
    """16 kHz mono int16 samples of a (small) file, via ffmpeg."""
    out = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-ac", "1", "-ar", str(SAMPLE_RATE),
         "-f", "s16le", "-"],
        check=True, capture_output=True,
    ).stdout
    return np.frombuffer(out, dtype="<i2")


def frame_db(samples: np.ndarray, frame: int = 160) -> np.ndarray:
    """dBFS per frame of int16 or float samples (float assumed in [-1, 1])."""
    x = samples.astype(np.float32)
    if samples.dtype == np.int16:
        x /= 32768.0
    n = len(x) // frame
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-7))


@cache
def source_audio(name: str) -> np.ndarray:
    return decode(ASSETS / f"{name}.wav")


def source_gain(name: str) -> float:
    """Linear gain bringing the source's active speech (inside its utterances) to SPEECH_DBFS."""
    audio = source_audio(name).astype(np.float32) / 32768.0
    parts = [audio[round(a * SAMPLE_RATE) : round(b * SAMPLE_RATE)] for a, b, _ in UTTERANCES[name]]
    speech = np.concatenate(parts)
    db = frame_db(speech, 320)
    active = db[db > np.percentile(db, 95) - 25]  # the voiced part, not the gaps between words
    level = 10 * np.log10(np.mean(10 ** (active / 10)))
    gain_db = SPEECH_DBFS - level
    peak = float(np.max(np.abs(speech)))
    gain_db = min(gain_db, -1.0 - 20 * np.log10(peak))  # never clip
    return float(10 ** (gain_db / 20))


@cache
def clips() -> tuple[Clip, ...]:
    """Every utterance of every source, cut with up to MARGIN of its own room noise around it."""
    out = []
    for name, table in UTTERANCES.items():
        audio = source_audio(name).astype(np.float32) / 32768.0 * source_gain(name)
        for i, (a, b, text) in enumerate(table):
            before = a - table[i - 1][1] if i > 0 else a
            after = table[i + 1][0] - b if i + 1 < len(table) else len(audio) / SAMPLE_RATE - b
            m0, m1 = min(MARGIN, before / 2), min(MARGIN, after / 2)
            lo, hi = round((a - m0) * SAMPLE_RATE), round((b + m1) * SAMPLE_RATE)
            clip = audio[lo:hi].copy()
            fade = round(FADE * SAMPLE_RATE)
            ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
            clip[:fade] *= ramp
            clip[-fade:] *= ramp[::-1]
            out.append(Clip(name, i, text, clip, round(a * SAMPLE_RATE) - lo, round(b * SAMPLE_RATE) - lo))
    return tuple(out)


def plan_layout(seconds: float, seed: int = 1) -> list[Placement]:
    """Where each utterance goes: seeded, so the same arguments give the same recording."""
    rng = random.Random(seed)
    pool = list(clips())
    deck: list[Clip] = []
    placements: list[Placement] = []
    t = rng.uniform(0.5, 2.0)
    run_left = 0
    previous: Clip | None = None
    while True:
        if not deck:
            deck = pool[:]
            rng.shuffle(deck)
            if previous is not None and deck[-1] is previous:
                deck.insert(0, deck.pop())
        clip = deck.pop()
        length = (clip.offset - clip.onset) / SAMPLE_RATE
        # keep the source's own margins inside the recording
        if t + length + 1.0 > seconds:
            break
        placements.append(Placement(round(t, 4), round(t + length, 4), clip.text, clip.source, clip.index))
        previous = clip
        if run_left > 0:
            run_left -= 1
            gap = rng.uniform(0.08, 0.25)
        else:
            r = rng.random()
            if r < 0.01:  # a long stretch of speech with no real pause (~1 min)
                run_left = rng.randint(12, 20)
                gap = rng.uniform(0.08, 0.25)
            elif r < 0.11:  # a few utterances back to back
                run_left = rng.randint(1, 4)
                gap = rng.uniform(0.08, 0.25)
            elif r < 0.20:  # a long silence
                gap = rng.uniform(4.0, 15.0)
            else:
                gap = rng.uniform(0.3, 4.0)
        t += length + gap
    return placements


class NoiseFloor:
    """Constant background: an exactly periodic loop of pink+brown noise, plus mains hum."""

    def __init__(self, seed: int, dbfs: float = NOISE_DBFS, hum_hz: float = 50.0) -> None:
        rng = np.random.default_rng(seed)
        spectrum = np.fft.rfft(rng.standard_normal(NOISE_LOOP))
        f = np.fft.rfftfreq(NOISE_LOOP, 1 / SAMPLE_RATE)
        f[0] = 1.0
        shape = 1 / np.sqrt(f) + 20 / f  # pink plus some brown (room rumble)
        shape[f < 20] = 0.0  # no DC or sub-sonic drift
        loop = np.fft.irfft(spectrum * shape, NOISE_LOOP).astype(np.float32)
        loop /= np.sqrt(np.mean(loop**2))
        self._loop = loop
        self._hum_hz = hum_hz
        # broadband 75 % and hum 25 % of the power, RMS total = dbfs
        total = 10 ** (dbfs / 20)
        self._noise_amp = total * np.sqrt(0.75)
        self._hum_amp = total * np.sqrt(0.25)

    def block(self, start: int, count: int) -> np.ndarray:
        idx = (np.arange(start, start + count) % NOISE_LOOP)
        t = np.arange(start, start + count, dtype=np.float64) / SAMPLE_RATE
        w = 2 * np.pi * self._hum_hz * t
        hum = (np.sin(w) + 0.5 * np.sin(2 * w + 0.3) + 0.3 * np.sin(3 * w + 1.1)) / np.sqrt((1 + 0.25 + 0.09) / 2)
        return (self._noise_amp * self._loop[idx] + self._hum_amp * hum).astype(np.float32)


def render(placements: list[Placement], seconds: float, seed: int = 1) -> Iterator[np.ndarray]:
    """The recording as int16 blocks, in order; holds only one block plus one clip in memory."""
    by_key = {(c.source, c.index): c for c in clips()}
    noise = NoiseFloor(seed)
    total = round(seconds * SAMPLE_RATE)
    # clip sample ranges in the recording, sorted by start
    spans = []
    for p in placements:
        c = by_key[(p.source, p.index)]
        lo = round(p.start * SAMPLE_RATE) - c.onset
        spans.append((lo, lo + len(c.audio), c))
    first = 0
    for start in range(0, total, BLOCK):
        count = min(BLOCK, total - start)
        out = noise.block(start, count)
        while first < len(spans) and spans[first][1] <= start:
            first += 1
        j = first
        while j < len(spans) and spans[j][0] < start + count:
            lo, hi, c = spans[j]
            a, b = max(lo, start), min(hi, start + count)
            if a < b:
                out[a - start : b - start] += c.audio[a - lo : b - lo]
            j += 1
        yield np.clip(np.round(out * 32768.0), -32768, 32767).astype("<i2")


def write_audio(path: Path, blocks: Iterator[np.ndarray], ffmpeg_args: list[str] | None = None) -> None:
    """Stream blocks to a .wav (wave module) or, for any other suffix, through ffmpeg."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".wav" and not ffmpeg_args:
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            for block in blocks:
                w.writeframes(block.tobytes())
        return
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1",
           "-i", "-", *(ffmpeg_args or []), str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        for block in blocks:
            proc.stdin.write(block.tobytes())
    finally:
        proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}")


def build(path: Path, seconds: float, seed: int = 1, layout_path: Path | None = None,
          ffmpeg_args: list[str] | None = None) -> list[Placement]:
    """Build a recording of `seconds` at `path` and its layout JSON; returns the layout."""
    placements = plan_layout(seconds, seed)
    write_audio(path, render(placements, seconds, seed), ffmpeg_args)
    layout_path = layout_path or default_layout_path(path)
    layout_path.write_text(json.dumps([asdict(p) for p in placements], indent=1, ensure_ascii=False) + "\n")
    return placements


def default_layout_path(path: Path) -> Path:
    return path.with_name(path.stem + ".layout.json")


def load_layout(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def source_layout(name: str) -> list[dict]:
    """The layout of a shipped source file itself (for whole-file benchmarks)."""
    return [{"start": a, "end": b, "text": t, "source": name, "index": i}
            for i, (a, b, t) in enumerate(UTTERANCES[name])]


# ---------------------------------------------------------------- verification

def _verify() -> int:
    import trio

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from textnorm import wer  # noqa: PLC0415

    from transcribed.config import EmbeddedConfig  # noqa: PLC0415
    from transcribed.engines.embedded import open_embedded_engine  # noqa: PLC0415
    from transcribed.engines.base import transcribe_audio  # noqa: PLC0415

    bad = 0
    print("boundary check: loudest 50 ms within 60 ms outside each utterance (should be quiet)")
    for name, table in UTTERANCES.items():
        audio = source_audio(name)
        db = frame_db(audio, 160)
        floor = float(np.percentile(db, 10))
        for i, (a, b, text) in enumerate(table):
            pre = db[max(0, round(a * 100) - 6) : round(a * 100)]
            post = db[round(b * 100) : round(b * 100) + 6]
            pre_max = float(pre.max()) if len(pre) else floor
            post_max = float(post.max()) if len(post) else floor
            inside = float(np.percentile(db[round(a * 100) : round(b * 100)], 90))
            flag = "" if max(pre_max, post_max) < inside - 12 else "  <-- not quiet"
            bad += bool(flag)
            print(f"  {name:10s} {i:2d} {a:6.2f}-{b:6.2f} before {pre_max:6.1f} after {post_max:6.1f} "
                  f"speech p90 {inside:6.1f} dBFS{flag}")

    async def transcribe_all() -> list[str]:
        async with open_embedded_engine(EmbeddedConfig()) as engine:
            results: list[str] = [""] * len(clips())

            async def one(k: int, clip: Clip) -> None:
                pcm = np.clip(np.round(clip.audio * 32768), -32768, 32767).astype(np.int16)
                r = await transcribe_audio(engine, pcm)
                results[k] = " ".join(s.text for s in r.segments)

            async with trio.open_nursery() as nursery:
                for k, clip in enumerate(clips()):
                    nursery.start_soon(one, k, clip)
            return results

    print("\neach utterance alone through the embedded engine:")
    hyps = trio.run(transcribe_all)
    refs = [c.text for c in clips()]
    for clip, hyp in zip(clips(), hyps, strict=True):
        w = wer([clip.text], [hyp])
        errors = round(w * len(clip.text.split()))
        # one word wrong is the engine's doing; more would point at a bad boundary
        flag = "" if errors <= 1 else "  <-- check"
        bad += bool(flag)
        print(f"  {clip.source:10s} {clip.index:2d} WER {100 * w:5.1f}%  {hyp!r}{flag}")
    print(f"\nall utterances: WER {100 * wer(refs, hyps):.1f}%   suspicious: {bad}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a recording and its layout JSON")
    b.add_argument("out", type=Path, help="output file: .wav, or .mp3/.flac/... (encoded by ffmpeg)")
    b.add_argument("--seconds", type=float, default=600.0)
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--layout", type=Path, default=None, help="default: OUT_STEM.layout.json")
    b.add_argument("--ffmpeg-args", default="", help="extra ffmpeg output options, e.g. '-ar 44100 -b:a 128k'")
    sub.add_parser("verify", help="check the hard-coded utterance boundaries")
    sub.add_parser("list", help="print the utterance table")
    args = parser.parse_args(argv)
    if args.command == "build":
        layout = build(args.out, args.seconds, args.seed, args.layout, args.ffmpeg_args.split() or None)
        speech = sum(p.end - p.start for p in layout)
        print(f"{args.out}: {args.seconds:.0f} s, {len(layout)} utterances, {speech:.0f} s of speech, "
              f"layout {args.layout or default_layout_path(args.out)}")
        return 0
    if args.command == "verify":
        return _verify()
    for c in clips():
        print(f"{c.source:10s} {c.index:2d} {(c.offset - c.onset) / SAMPLE_RATE:5.2f} s  {c.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
