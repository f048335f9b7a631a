"""Who spoke when, measured: a recording of seven real voices in turns, and the daemon's labels
scored against the truth.

The voices (real recordings that ship in installable packages; no synthetic speech):

* dickens      moonshine-voice wheel, assets/two_cities.wav (A Tale of Two Cities)
* pyannote-a/b pyannote-audio 4.0.7 wheel, pyannote/audio/sample/sample.wav with its RTTM
               (two people in conversation; only the stretches where one speaks alone are used)
* klettres-en/es/fr/lt  Debian klettres-data 4:22.12.3-1: letters and short words read by the
               English, Spanish, French and Lithuanian volunteers of KDE's KLettres (GPL-2+)

Left out, after checking each source's two halves against each other and against the others
with the embedding network (same person: cosine similarity 0.7-0.9; different: below 0.4):
moonshine's beckett.wav (0.6-0.8 against two_cities.wav: very likely the same reader), and
KLettres' German set (its letters and its words, 0.2 apart, are two different people).

The packages are fetched as files (pip download / apt-get download, pinned, sha256-checked)
into bench/.cache; nothing is installed. Utterances are cut at their pauses (energy), each
voice is brought to the same active speech level (-20 dBFS), and a seeded plan places turns
of 3–45 s (one voice's utterances back to back, 0.15–0.4 s apart), 0.3–1.5 s pauses between
turns, over a constant noise floor. The material per voice is small (10–90 s), so an
utterance recurs in several turns. For "dickens" and "klettres-de", a part of their material
never goes into the recording: it is their reference clip for the known-speaker test.

Printed: DER (missed + false alarm + confusion over reference speech, optimal one-to-one label
mapping, 0.25 s collar around every reference boundary), the speaker count against the truth,
the share of the known speakers' time carrying their names, and the diarization's wall time
and peak memory (RSS of its worker). With --transcribe, the real daemon pipeline also runs
with speakers off and auto: WER on the utterances whose words are known, and whether the text
is identical either way.

    python bench/diarization.py                     # 10 min, seed 1
    python bench/diarization.py --seconds 7200      # the 2-hour cost figures
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))

SAMPLE_RATE = 16_000
CACHE = Path(__file__).resolve().parent / ".cache"
SPEECH_DBFS = -20.0
NOISE_DBFS = -50.0

PYANNOTE = (
    "pyannote-audio==4.0.7",
    "pyannote_audio-4.0.7-py3-none-any.whl",
    "852ea15c4d85bc34773e618267603ffca6a521669a74d33742692cc67fc700d6",
)
KLETTRES = (
    "klettres-data=4:22.12.3-1",
    "klettres-data_4%3a22.12.3-1_all.deb",
    "1186d257a19e84230856baea0b0b1ded8be9195080fcdb2588970b5cd937f5a8",
)
LANGUAGES = ("en", "es", "fr", "lt")
KNOWN = ("dickens", "klettres-es")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch(spec: tuple[str, str, str], command: list[str]) -> Path:
    _, file_name, digest = spec
    path = CACHE / file_name
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(command, cwd=CACHE, check=True, capture_output=True)
    if _sha256(path) != digest:
        raise SystemExit(f"{path}: sha256 mismatch")
    return path


def pyannote_sample() -> tuple[Path, Path]:
    wheel = _fetch(
        PYANNOTE,
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            PYANNOTE[0],
            "-d",
            str(CACHE),
        ],
    )
    out = CACHE / "pyannote"
    if not (out / "sample.rttm").exists():
        out.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for name in ("sample.wav", "sample.rttm"):
                (out / name).write_bytes(archive.read(f"pyannote/audio/sample/{name}"))
    return out / "sample.wav", out / "sample.rttm"


def klettres_root() -> Path:
    deb = _fetch(KLETTRES, ["apt-get", "download", KLETTRES[0]])
    out = CACHE / "klettres"
    if not out.exists():
        subprocess.run(["dpkg", "-x", str(deb), str(out)], check=True)
    return out / "usr/share/klettres"


def moonshine_assets() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("moonshine_voice")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "assets"


def decode(path: Path) -> np.ndarray:
    raw = subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-i",
            str(path),
            "-ac",
            "1",
            "-ar",
            str(SAMPLE_RATE),
            "-f",
            "s16le",
            "-",
        ],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0


def speech_spans(
    audio: np.ndarray, *, quiet_db: float = 30.0, min_gap: float = 0.25
) -> list[tuple[int, int]]:
    """Utterances: runs of 10 ms frames within quiet_db of the loud frames, split at gaps."""
    frame = SAMPLE_RATE // 100
    n = len(audio) // frame
    if n == 0:
        return []
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1))
    db = 20 * np.log10(np.maximum(rms, 1e-7))
    loud = db > np.percentile(db, 95) - quiet_db
    spans: list[tuple[int, int]] = []
    start = None
    gap = 0
    for i, on in enumerate(loud):
        if on:
            if start is None:
                start = i
            gap = 0
        elif start is not None:
            gap += 1
            if gap * 0.01 >= min_gap:
                spans.append((start, i - gap + 1))
                start, gap = None, 0
    if start is not None:
        spans.append((start, n - gap))
    return [(a * frame, b * frame) for a, b in spans if (b - a) >= 15]


@dataclass(frozen=True, slots=True)
class Utterance:
    voice: str
    audio: np.ndarray  # speech only, normalised
    text: str | None  # the words, where known


def _level(audio: np.ndarray) -> float:
    frame = 320
    n = len(audio) // frame
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1))
    db = 20 * np.log10(np.maximum(rms, 1e-7))
    active = db[db > np.percentile(db, 95) - 25]
    return float(10 * np.log10(np.mean(10 ** (active / 10))))


def _normalised(parts: list[np.ndarray]) -> list[np.ndarray]:
    gain = 10 ** ((SPEECH_DBFS - _level(np.concatenate(parts))) / 20)
    peak = max(float(np.max(np.abs(p))) for p in parts) * gain
    if peak > 0.9:
        gain *= 0.9 / peak
    return [p * gain for p in parts]


def voices() -> tuple[dict[str, list[Utterance]], dict[str, np.ndarray]]:
    """Each voice's utterances for the recording, and the reference clips kept out of it."""
    import corpus  # bench/corpus.py: the measured utterance table of beckett and two_cities

    corpus.ASSETS = moonshine_assets()
    material: dict[str, list[tuple[np.ndarray, str | None]]] = {}
    references: dict[str, np.ndarray] = {}
    for voice, source in (("dickens", "two_cities"),):
        audio = decode(corpus.ASSETS / f"{source}.wav")
        material[voice] = [
            (audio[round(a * SAMPLE_RATE) : round(b * SAMPLE_RATE)], text)
            for a, b, text in corpus.UTTERANCES[source]
        ]
    # dickens: the last (8.8 s) and the first (3.3 s) utterances are the reference clip
    held = material["dickens"][-1:] + material["dickens"][:1]
    material["dickens"] = material["dickens"][1:-1]
    references["dickens"] = np.concatenate([a for a, _ in held])

    wav, rttm = pyannote_sample()
    audio = decode(wav)
    rows = [line.split() for line in rttm.read_text().splitlines() if line.strip()]
    turns = [(float(r[3]), float(r[3]) + float(r[4]), r[7]) for r in rows]
    for name, label in (("pyannote-a", "speaker90"), ("pyannote-b", "speaker91")):
        parts = []
        for start, end, who in turns:
            if who != label:
                continue
            # cut away any overlap with the other speaker
            pieces = [(start, end)]
            for o_start, o_end, other in turns:
                if other == label:
                    continue
                pieces = [
                    piece
                    for a, b in pieces
                    for piece in ((a, min(b, o_start)), (max(a, o_end), b))
                    if piece[1] - piece[0] >= 0.4
                ]
            parts += [audio[round(a * SAMPLE_RATE) : round(b * SAMPLE_RATE)] for a, b in pieces]
        material[name] = [(p, None) for p in parts]

    root = klettres_root()
    for language in LANGUAGES:
        files = sorted((root / language / "alpha").glob("*.ogg")) + sorted(
            (root / language / "syllab").glob("*.ogg")
        )
        parts = []
        for path in files:
            clip = decode(path)
            spans = speech_spans(clip)
            if spans:
                parts.append(clip[spans[0][0] : spans[-1][1]])
        name = f"klettres-{language}"
        if name in KNOWN:
            # every fourth clip is kept out: the reference (about 10 s)
            references[name] = np.concatenate(parts[3::4][:24])
            parts = [p for i, p in enumerate(parts) if i % 4 != 3]
        material[name] = [(p, None) for p in parts]

    out: dict[str, list[Utterance]] = {}
    for voice, items in material.items():
        scaled = _normalised([a for a, _ in items])
        out[voice] = [
            Utterance(voice, a.astype(np.float32), t)
            for a, (_, t) in zip(scaled, items, strict=True)
        ]
    for voice, clip in references.items():
        references[voice] = _normalised([clip])[0].astype(np.float32)
    return out, references


@dataclass(frozen=True, slots=True)
class Placed:
    start: float
    end: float
    voice: str
    text: str | None


def build(seconds: float, seed: int, out: Path) -> list[Placed]:
    """Render the recording to out (16 kHz mono wav) and return where each utterance went."""
    import wave

    material, _ = voices()
    rng = random.Random(seed)
    names = sorted(material)
    decks = {name: [] for name in names}  # type: dict[str, list[Utterance]]
    placed: list[Placed] = []
    chunks: list[np.ndarray] = []
    position = 0
    previous = None

    def silence(duration: float) -> None:
        nonlocal position
        count = round(duration * SAMPLE_RATE)
        chunks.append(np.zeros(count, np.float32))
        position += count

    silence(rng.uniform(0.5, 1.5))
    while position / SAMPLE_RATE < seconds - 5:
        voice = rng.choice([n for n in names if n != previous])
        previous = voice
        length = min(
            rng.choice([rng.uniform(3, 12), rng.uniform(8, 25), rng.uniform(20, 45)]),
            seconds - position / SAMPLE_RATE - 1,
        )
        turn_start = position
        while (position - turn_start) / SAMPLE_RATE < length:
            if not decks[voice]:
                decks[voice] = material[voice][:]
                rng.shuffle(decks[voice])
            utterance = decks[voice].pop()
            start = position
            chunks.append(utterance.audio)
            position += len(utterance.audio)
            placed.append(
                Placed(start / SAMPLE_RATE, position / SAMPLE_RATE, voice, utterance.text)
            )
            if (position - turn_start) / SAMPLE_RATE < length:
                silence(rng.uniform(0.15, 0.4))
        silence(rng.uniform(0.3, 1.5))
    audio = np.concatenate(chunks)
    noise = np.random.default_rng(seed).standard_normal(len(audio)).astype(np.float32)
    audio = audio + noise * 10 ** (NOISE_DBFS / 20)
    with wave.open(str(out), "wb") as sink:
        sink.setnchannels(1)
        sink.setsampwidth(2)
        sink.setframerate(SAMPLE_RATE)
        sink.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return placed


def reference_turns(placed: list[Placed], join: float = 0.5) -> list[tuple[float, float, str]]:
    """Utterances of one voice less than `join` apart are one stretch of that voice's speech."""
    out: list[tuple[float, float, str]] = []
    for item in placed:
        if out and out[-1][2] == item.voice and item.start - out[-1][1] < join:
            out[-1] = (out[-1][0], item.end, item.voice)
        else:
            out.append((item.start, item.end, item.voice))
    return out


def diarization_error(
    reference: list[tuple[float, float, str]],
    hypothesis: list[tuple[float, float, str]],
    collar: float = 0.25,
    step: float = 0.01,
) -> dict[str, float]:
    """DER with the optimal one-to-one label mapping; no scoring within `collar` of a
    reference boundary (md-eval's convention)."""
    from scipy.optimize import linear_sum_assignment

    end = max([e for _, e, _ in reference] + [e for _, e, _ in hypothesis] + [0.0])
    frames = int(np.ceil(end / step)) + 1
    ref_labels = sorted({label for *_, label in reference})
    hyp_labels = sorted({label for *_, label in hypothesis}) or ["-"]
    ref = np.zeros((frames, len(ref_labels)), bool)
    hyp = np.zeros((frames, len(hyp_labels)), bool)
    for start, stop, label in reference:
        ref[round(start / step) : round(stop / step), ref_labels.index(label)] = True
    for start, stop, label in hypothesis:
        hyp[round(start / step) : round(stop / step), hyp_labels.index(label)] = True
    keep = np.ones(frames, bool)
    for start, stop, _ in reference:
        for boundary in (start, stop):
            keep[max(0, round((boundary - collar) / step)) : round((boundary + collar) / step)] = (
                False
            )
    ref, hyp = ref[keep], hyp[keep]
    overlap = ref.T.astype(np.float64) @ hyp.astype(np.float64)
    rows, cols = linear_sum_assignment(-overlap)
    n_ref, n_hyp = ref.sum(axis=1), hyp.sum(axis=1)
    total = float(n_ref.sum())
    missed = float(np.maximum(n_ref - n_hyp, 0).sum())
    false_alarm = float(np.maximum(n_hyp - n_ref, 0).sum())
    confusion = float(np.minimum(n_ref, n_hyp).sum() - overlap[rows, cols].sum())
    mapping = {
        hyp_labels[c]: ref_labels[r] for r, c in zip(rows, cols, strict=True) if overlap[r, c] > 0
    }
    return {
        "der": (missed + false_alarm + confusion) / total,
        "missed": missed / total,
        "false_alarm": false_alarm / total,
        "confusion": confusion / total,
        "mapping": mapping,  # type: ignore[dict-item]
    }


def named_share(
    reference: list[tuple[float, float, str]],
    hypothesis: list[tuple[float, float, str]],
    name: str,
    label: str,
    step: float = 0.01,
) -> float:
    """Share of `name`'s reference time that the hypothesis labels `label`."""
    end = max(e for _, e, _ in reference + hypothesis)
    frames = int(np.ceil(end / step)) + 1
    truth = np.zeros(frames, bool)
    said = np.zeros(frames, bool)
    for start, stop, who in reference:
        if who == name:
            truth[round(start / step) : round(stop / step)] = True
    for start, stop, who in hypothesis:
        if who == label:
            said[round(start / step) : round(stop / step)] = True
    return float((truth & said).sum() / max(1, truth.sum()))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="folder to keep the recording and references in")
    parser.add_argument("--no-known", action="store_true", help="skip the run with reference clips")
    parser.add_argument(
        "--transcribe", action="store_true", help="also run the daemon pipeline for WER"
    )
    args = parser.parse_args()

    from transcribed import diarize

    folder = args.keep or Path(tempfile.mkdtemp(prefix="diarization-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    recording = folder / f"voices-{int(args.seconds)}s-seed{args.seed}.wav"
    t0 = time.perf_counter()
    placed = build(args.seconds, args.seed, recording)
    _, references = voices()
    speakers_dir = folder / "speakers"
    speakers_dir.mkdir(exist_ok=True)
    import wave

    for voice in KNOWN:
        with wave.open(str(speakers_dir / f"{voice}.wav"), "wb") as sink:
            sink.setnchannels(1)
            sink.setsampwidth(2)
            sink.setframerate(SAMPLE_RATE)
            sink.writeframes((references[voice] * 32767).astype("<i2").tobytes())
    reference = reference_turns(placed)
    talk = {}
    for start, stop, who in reference:
        talk[who] = talk.get(who, 0.0) + stop - start
    print(
        f"recording: {recording} ({placed[-1].end:.0f} s, {len(reference)} turns, built in {time.perf_counter() - t0:.1f} s)"
    )
    print("talk time per voice: " + ", ".join(f"{k} {v:.0f} s" for k, v in sorted(talk.items())))
    print(
        f"one label for everyone would score DER {1 - max(talk.values()) / sum(talk.values()):.1%}"
    )

    for with_references in (False,) if args.no_known else (False, True):
        result = diarize.run_diarization_sync(recording, speakers_dir if with_references else None)
        hypothesis = [(t.start, t.end, t.speaker) for t in result.turns]
        score = diarization_error(reference, hypothesis)
        title = (
            "with reference clips for " + " and ".join(KNOWN)
            if with_references
            else "no reference clips"
        )
        print(f"\n[{title}]")
        print(
            f"DER {score['der']:.2%} (missed {score['missed']:.2%}, false alarm {score['false_alarm']:.2%}, "
            f"confusion {score['confusion']:.2%}; collar 0.25 s)"
        )
        print(f"speakers found {len(result.speakers)}, truth {len(talk)}")
        print(
            f"wall {result.wall_seconds:.1f} s ({result.wall_seconds / placed[-1].end:.4f} x real time), "
            f"CPU {result.cpu_seconds:.1f} s, worker peak RSS {result.peak_rss_mib:.0f} MiB"
        )
        print(
            "label mapping: " + ", ".join(f"{h} → {r}" for h, r in sorted(score["mapping"].items()))
        )  # type: ignore[union-attr]
        if with_references:
            for voice in KNOWN:
                share = named_share(reference, hypothesis, voice, voice)
                print(f"known speaker {voice}: {share:.1%} of their time carries their name")
    if args.transcribe:
        transcribe_both(recording, placed, speakers_dir)
    return 0


def transcribe_both(recording: Path, placed: list[Placed], speakers_dir: Path) -> None:
    """The real pipeline (`transcribed transcribe`, embedded engine) with speakers off and on:
    the wall time of each, whether the text is the same, and the WER on the utterances whose
    words are known (dickens: segments whose middle falls inside one of them)."""
    import textnorm

    texts = {}
    for mode in ("off", "auto"):
        out = recording.parent / f"out-{mode}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "transcribed",
                "transcribe",
                str(recording),
                "--out",
                str(out),
                "--speakers",
                mode,
                "--speakers-dir",
                str(speakers_dir),
                "--log-format",
                "json",
            ],
            check=True,
            capture_output=True,
        )
        seconds = time.perf_counter() - started
        document = json.loads((out / f"{recording.stem}.json").read_text())
        known = [p for p in placed if p.text]
        hypothesis = [
            seg["text"]
            for seg in document["segments"]
            if any(p.start <= (seg["start"] + seg["end"]) / 2 <= p.end for p in known)
        ]
        error = textnorm.wer([p.text or "" for p in known], hypothesis)
        texts[mode] = document["text"]
        named = sorted({seg.get("speaker") or "-" for seg in document["segments"]})
        print(
            f"\n[transcribe, speakers = {mode}] wall {seconds:.1f} s; WER on the known words {error:.2%}; "
            f"speakers in .json: {', '.join(named)}"
        )
    print(f"text identical with speakers off and on: {texts['off'] == texts['auto']}")


if __name__ == "__main__":
    sys.exit(main())
