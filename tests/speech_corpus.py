"""A speech corpus whose every word time is known: espeak-ng words laid out over a noise floor.

Each distinct word is synthesised once by espeak-ng (Debian package espeak-ng, .ci/setup),
resampled to 16 kHz and trimmed to its sound; a recording is then laid out word by word from
seeded sentences: short gaps inside phrases, longer ones after commas and sentence ends, now
and then a long pause, and now and then run-on speech with no pause a planner would call one.
Speech level varies by sentence; the noise floor (pink-ish noise and mains hum, about -48 dBFS)
is not periodic, so any piece of the recording can be located by cross-correlation.

`Corpus.locate` finds where a piece (decoded from an upload) lies: a coarse search over 20 ms
loudness envelopes, then the exact sample by correlating the PCM around the best candidates.
`Corpus.words_in` gives the words whose centres fall in a piece, with times relative to the
piece as decoded, which is what a perfect transcriber would answer. An upload that decodes late
(an encoder's priming) therefore gets late times, as from a real server.

    python tests/speech_corpus.py build OUT.wav --seconds 600 [--seed 1]   # + OUT.words.json
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 16_000
FRAME = 320  # 20 ms

SENTENCES = [
    "The meeting is open, and the minutes of the last meeting are approved.",
    "Councillor Okonkwo asked whether the budget for the library had been agreed.",
    "The chair said that the report would be published next week.",
    "We have received seventeen letters about the new bridge over the river.",
    "Most of them support the plan, but several raise questions about the cost.",
    "The treasurer explained that the reserves were lower than expected this year.",
    "Is there any other business before we move to the planning items?",
    "The first application concerns a house on Mill Lane, near the old school.",
    "Neighbours object to the height of the extension and the loss of light.",
    "The officer recommends approval, with a condition on the working hours.",
    "Councillor Fairweather proposed that the decision be deferred for a site visit.",
    "That was seconded, and the vote was carried by nine votes to four.",
    "The second item is the review of parking charges in the town centre.",
    "Traders say that higher charges will drive shoppers to the retail park.",
    "The committee asked for a survey of car park use on market days.",
    "Thank you, everyone, for your patience this evening.",
    "We will now take a short break of ten minutes.",
    "Welcome back; we resume with questions from members of the public.",
    "A resident asked when the footpath by the canal would be repaired.",
    "The answer is that the work is planned for the spring, weather permitting.",
    "Another resident raised the noise from the depot early in the morning.",
    "The chair promised a written reply within fourteen days.",
    "The next meeting will be held on the third Tuesday of the month.",
    "There being no further business, the meeting closed at nine fifteen.",
]


@dataclass(frozen=True, slots=True)
class CorpusWord:
    text: str  # as written, with its punctuation
    start: float
    end: float

    @property
    def centre(self) -> float:
        return (self.start + self.end) / 2


def _synthesise(word: str, speed: int) -> np.ndarray:
    """One word from espeak-ng, at 16 kHz, trimmed to where it sounds."""
    wav = subprocess.run(
        ["espeak-ng", "-v", "en-gb", "-s", str(speed), "--stdout", word],
        capture_output=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2").astype(float)
    times = np.arange(round(len(samples) * RATE / rate)) / RATE
    resampled = np.interp(times, np.arange(len(samples)) / rate, samples)
    loud = np.flatnonzero(np.abs(resampled) > 0.02 * np.abs(resampled).max())
    return resampled[loud[0] : loud[-1] + 1] / max(1.0, np.abs(resampled).max())


def _gap(word: str, rng: random.Random) -> float:
    if word.endswith((".", "?", "!")):
        roll = rng.random()
        if roll < 0.15:
            return rng.uniform(0.08, 0.2)  # run-on speech
        if roll < 0.27:
            return rng.uniform(1.5, 4.0)
        if roll < 0.29:
            return rng.uniform(6.0, 12.0)
        return rng.uniform(0.4, 1.0)
    if word.endswith((",", ";", ":")):
        return rng.uniform(0.15, 0.35)
    return rng.uniform(0.03, 0.1)


def layout(seconds: float, seed: int) -> tuple[list[CorpusWord], list[tuple[str, float]]]:
    """(words with their times, the gain of each sentence) for a recording of `seconds`."""
    rng = random.Random(seed)
    words: list[CorpusWord] = []
    at = rng.uniform(0.5, 2.0)
    cache: dict[str, float] = {}
    while True:
        sentence = rng.choice(SENTENCES)
        for token in sentence.split():
            spoken = token.strip(".,;:?!").lower()
            if spoken not in cache:
                cache[spoken] = len(_synthesise(spoken, 170)) / RATE
            if at + cache[spoken] > seconds - 1.0:
                return words, []
            words.append(CorpusWord(token, round(at, 4), round(at + cache[spoken], 4)))
            at += cache[spoken] + _gap(token, rng)


def build(path: Path, seconds: float, seed: int = 1) -> list[CorpusWord]:
    """Write the recording (16 kHz mono wav) and PATH.words.json; return the words."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng; see .ci/setup)")
    words, _ = layout(seconds, seed)
    rng = np.random.default_rng(seed)
    total = round(seconds * RATE)
    audio = np.zeros(total, dtype=np.float32)
    block = 10 * RATE
    smooth = np.ones(8) / 8
    for start in range(0, total, block):  # white plus low-passed noise, and 50 Hz hum
        white = rng.standard_normal(min(block, total - start) + 7)
        coloured = np.convolve(white, smooth, mode="valid")
        t = (start + np.arange(len(coloured))) / RATE
        noise = 50 * white[7:] + 90 * coloured + 40 * np.sin(2 * np.pi * 50 * t)
        audio[start : start + len(coloured)] = noise.astype(np.float32)
    shapes: dict[str, np.ndarray] = {}
    gain = 6000.0
    for number, word in enumerate(words):
        spoken = word.text.strip(".,;:?!").lower()
        if spoken not in shapes:
            shapes[spoken] = _synthesise(spoken, 170)
        if number == 0 or words[number - 1].text.endswith((".", "?", "!")):
            gain = float(rng.uniform(3500, 9000))
        first = round(word.start * RATE)
        shape = shapes[spoken]
        audio[first : first + len(shape)] += (shape * gain).astype(np.float32)
    pcm = np.clip(audio, -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(RATE)
        writer.writeframes(pcm.tobytes())
    words_path(path).write_text(json.dumps([[w.text, w.start, w.end] for w in words]))
    return words


def words_path(path: Path) -> Path:
    return path.with_suffix(".words.json")


def envelope(pcm: np.ndarray) -> np.ndarray:
    whole = len(pcm) - len(pcm) % FRAME
    frames = pcm[:whole].astype(np.float32).reshape(-1, FRAME)
    level = 10 * np.log10(np.mean(frames * frames, axis=1) + 1.0)
    return level - level.mean()


class Corpus:
    """A built recording and its words, able to locate a piece of itself."""

    def __init__(self, path: Path) -> None:
        with wave.open(str(path)) as reader:
            self.pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
        self.words = [CorpusWord(t, s, e) for t, s, e in json.loads(words_path(path).read_text())]
        self._envelope = envelope(self.pcm)
        self._spectrum_size = 1 << int(np.ceil(np.log2(len(self._envelope) * 2)))
        self._spectrum = np.fft.rfft(self._envelope, self._spectrum_size)

    def locate(self, piece: np.ndarray) -> int:
        """The sample of the corpus where the decoded piece starts."""
        probe = envelope(piece)
        if len(probe) == 0:
            raise ValueError("piece too short")
        scores = np.fft.irfft(self._spectrum * np.conj(np.fft.rfft(probe, self._spectrum_size)), self._spectrum_size)
        scores = scores[: len(self._envelope)]
        candidates = np.argsort(scores)[-3:][::-1]
        # the loudest 4 s of the piece, matched sample by sample around each candidate
        window = min(len(piece), 4 * RATE)
        energy = np.convolve(piece.astype(np.float64) ** 2, np.ones(FRAME), mode="valid")[::FRAME]
        span = max(1, window // FRAME)
        sums = np.convolve(energy, np.ones(span), mode="valid")
        at = int(np.argmax(sums)) * FRAME if len(sums) else 0
        segment = piece[at : at + window].astype(np.float64)
        best: tuple[float, int] = (-np.inf, 0)
        for candidate in candidates:
            centre = int(candidate) * FRAME + at
            low = max(0, centre - 2 * FRAME)
            region = self.pcm[low : centre + 2 * FRAME + window].astype(np.float64)
            if len(region) < len(segment):
                continue
            size = 1 << int(np.ceil(np.log2(len(region) + len(segment))))
            correlation = np.fft.irfft(np.fft.rfft(region, size) * np.conj(np.fft.rfft(segment, size)), size)
            lags = correlation[: len(region) - len(segment) + 1]
            lag = int(np.argmax(lags))
            norm = np.sqrt(np.sum(segment**2) * np.sum(region[lag : lag + len(segment)] ** 2)) or 1.0
            score = float(lags[lag] / norm)
            if score > best[0]:
                best = (score, low + lag - at)
        return best[1]

    def words_of(self, piece: np.ndarray, stretches: list[tuple[int, int, int]] | None = None) -> list[tuple[str, float, float]]:
        """The true words of a decoded upload, in upload time: one stretch of the corpus, or
        several stitched end to end (the daemon leaves a long silence out of an upload)."""
        words: list[tuple[str, float, float]] = []
        for upload_at, samples, corpus_at in self.stretches(piece) if stretches is None else stretches:
            shift = upload_at / RATE
            words.extend((t, round(s + shift, 3), round(e + shift, 3)) for t, s, e in self.words_in(corpus_at, samples))
        return words

    def stretches(self, piece: np.ndarray) -> list[tuple[int, int, int]]:
        """(upload sample, samples, corpus sample) of each stretch of the corpus in the upload.
        Candidate seams are the middles of the upload's inner pauses of 0.6 s or more; the
        upload is located whole, each part between seams is checked against that location
        sample by sample, and a part that does not match starts a stretch located anew."""
        level = 10 * np.log10(np.mean(piece[: len(piece) // FRAME * FRAME].astype(np.float64).reshape(-1, FRAME) ** 2, axis=1) + 1.0)
        if len(level) == 0:
            return [(0, len(piece), self.locate(piece))]
        quiet = level < np.percentile(level, 5) + 6.0
        edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
        seams = [(a + b) // 2 * FRAME for a, b in zip(edges[0::2], edges[1::2]) if a > 0 and b < len(level) and b - a >= 0.6 * RATE // FRAME]
        bounds = [0, *seams, len(piece)]
        whole = self.locate(piece)  # corpus sample = upload sample + delta, for each run
        runs: list[tuple[int, int]] = []  # (upload sample, delta) where each run starts
        for start, end in zip(bounds, bounds[1:]):
            part = piece[start:end]
            if runs and self._match(part, start + runs[-1][1]) is not None:
                continue
            found = self._match(part, start + whole)
            if found is None:
                found = self._match(part, self.locate(part))
            runs.append((start, (self.locate(part) if found is None else found) - start))
        ends = [start for start, _ in runs[1:]] + [len(piece)]
        return [(start, end - start, start + delta) for (start, delta), end in zip(runs, ends, strict=True)]

    def _match(self, part: np.ndarray, at: int) -> int | None:
        """Where `part` is the corpus, if it is within two frames of sample `at`."""
        low = max(0, at - 2 * FRAME)
        region = self.pcm[low : at + len(part) + 2 * FRAME].astype(np.float64)
        segment = part.astype(np.float64)
        if len(region) < len(segment) or len(segment) == 0:
            return None
        size = 1 << int(np.ceil(np.log2(len(region) + len(segment))))
        lags = np.fft.irfft(np.fft.rfft(region, size) * np.conj(np.fft.rfft(segment, size)), size)[: len(region) - len(segment) + 1]
        lag = int(np.argmax(lags))
        norm = np.sqrt(np.sum(segment**2) * np.sum(region[lag : lag + len(segment)] ** 2)) or 1.0
        return low + lag if float(lags[lag] / norm) > 0.5 else None

    def words_in(self, offset: int, samples: int) -> list[tuple[str, float, float]]:
        """The words whose centres fall in [offset, offset + samples), in piece time."""
        start, end = offset / RATE, (offset + samples) / RATE
        seconds = samples / RATE
        return [
            (w.text, round(max(0.0, w.start - start), 3), round(min(seconds, w.end - start), 3))
            for w in self.words
            if start <= w.centre < end
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build")
    make.add_argument("out", type=Path)
    make.add_argument("--seconds", type=float, default=600.0)
    make.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    words = build(args.out, args.seconds, args.seed)
    print(f"{args.out}: {len(words)} words, {args.seconds:g} s")


if __name__ == "__main__":
    main()
