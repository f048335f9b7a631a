"""Accuracy of the whole pipeline against the engine alone: word error rate and timestamps.

For each test recording:

* the daemon's transcript: `transcribed transcribe FILE --out DIR` (planning, cutting at pauses,
  pieces, merge), read back from DIR/STEM.json, .srt and .vtt;
* the per-utterance baseline: every reference utterance cut out of the SAME decoded audio
  (background noise included; margins of up to 0.25 s, never past half the gap to a
  neighbour) and transcribed alone by the same engine (transcribed.engines.embedded, driven
  directly under trio).

(a)/(b) Word error rate (jiwer, after lowercasing and stripping punctuation) of both against
the reference text, and the difference. Goal: daemon <= per-utterance + 1 point.

(c) Timestamps. Reference and hypothesis words are aligned (jiwer); each exactly matching word
links its reference utterance to the output segment holding it. Utterances and segments linked
to each other form groups (connected components): usually one utterance and one segment; an
engine line that spans two utterances said back to back, or an utterance split over two
lines, makes a bigger group, of which only the outer start and end can be judged. For every
group, start error = first segment start - first utterance start, end error likewise; the
table gives median, p95 and max of |error| for the .json, .srt and .vtt outputs (and for the
engine alone, per utterance, as the floor of what is achievable). Goal: within 0.5 s.
Matching by words rather than by time alone keeps a badly placed segment from being silently
matched to whatever utterance it happens to overlap.

Recordings: a built one (corpus.py; default 600 s, seed 2, WAV) plus the shipped beckett.wav
and two_cities.wav whole.

Run:
    .venv/bin/python bench/accuracy.py                       # ~5-8 min on 2 cores
    .venv/bin/python bench/accuracy.py --seconds 120         # quicker
    .venv/bin/python bench/accuracy.py --recording X.wav --layout X.layout.json
    .venv/bin/python bench/accuracy.py --format mp3          # build the test recording as MP3
    .venv/bin/python bench/accuracy.py --workdir D --reuse   # re-report from a kept run (no transcribing)
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np
import structlog
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
from textnorm import normalise, wer  # noqa: E402

from transcribed.config import EmbeddedConfig  # noqa: E402
from transcribed.engines.embedded import open_embedded_engine  # noqa: E402
from transcribed.engines.base import transcribe_audio  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TRANSCRIBED = REPO / ".venv/bin/transcribed"
SR = corpus.SAMPLE_RATE
MAX_MARGIN = 0.25


@dataclass(frozen=True, slots=True)
class Seg:
    start: float
    end: float
    text: str


# ---------------------------------------------------------------- reading outputs

_SRT_TIME = re.compile(r"(\d+):(\d\d):(\d\d)[,.](\d{3})\s*-->\s*(\d+):(\d\d):(\d\d)[,.](\d{3})")


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def read_cues(path: Path) -> list[Seg]:
    """Cues of an .srt or .vtt file (timing line, then text lines up to a blank line)."""
    segs: list[Seg] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _SRT_TIME.search(lines[i])
        i += 1
        if not match:
            continue
        text = []
        while i < len(lines) and lines[i].strip():
            text.append(lines[i].strip())
            i += 1
        g = match.groups()
        segs.append(Seg(_seconds(*g[:4]), _seconds(*g[4:]), " ".join(text)))
    return segs


def read_outputs(folder: Path, stem: str) -> dict[str, list[Seg]]:
    document = json.loads((folder / f"{stem}.json").read_text())
    return {
        "json": [Seg(s["start"], s["end"], s["text"]) for s in document["segments"]],
        "srt": read_cues(folder / f"{stem}.srt"),
        "vtt": read_cues(folder / f"{stem}.vtt"),
    }


# ---------------------------------------------------------------- timestamp matching

def match_groups(layout: list[dict], segs: list[Seg]) -> list[tuple[list[int], list[int]]]:
    """Groups of (utterance indices, segment indices) linked by exactly matching aligned words."""
    ref_owner = [u for u, item in enumerate(layout) for _ in normalise(item["text"]).split()]
    hyp_owner = [s for s, seg in enumerate(segs) for _ in normalise(seg.text).split()]
    ref = " ".join(normalise(item["text"]) for item in layout)
    hyp = " ".join(normalise(seg.text) for seg in segs)
    parent = list(range(len(layout) + len(segs)))  # union-find: utterances, then segments

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    linked_u, linked_s = set(), set()
    if ref and hyp:
        for chunk in jiwer.process_words(ref, hyp).alignments[0]:
            if chunk.type != "equal":
                continue
            for k in range(chunk.ref_end_idx - chunk.ref_start_idx):
                u = ref_owner[chunk.ref_start_idx + k]
                s = hyp_owner[chunk.hyp_start_idx + k]
                parent[find(u)] = find(len(layout) + s)
                linked_u.add(u)
                linked_s.add(s)
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for u in sorted(linked_u):
        groups.setdefault(find(u), ([], []))[0].append(u)
    for s in sorted(linked_s):
        groups.setdefault(find(len(layout) + s), ([], []))[1].append(s)
    return sorted(groups.values())


@dataclass
class TimingStats:
    groups: int
    single: int  # groups of exactly one utterance and one segment
    utterances_merged: int  # utterances in a group with other utterances
    unmatched: int  # utterances with no exactly matching word in any segment
    start_errors: np.ndarray
    end_errors: np.ndarray


def timing(layout: list[dict], segs: list[Seg]) -> TimingStats:
    groups = match_groups(layout, segs)
    starts, ends = [], []
    single = merged = 0
    matched = 0
    for us, ss in groups:
        matched += len(us)
        single += len(us) == 1 and len(ss) == 1
        merged += len(us) if len(us) > 1 else 0
        starts.append(min(segs[s].start for s in ss) - min(layout[u]["start"] for u in us))
        ends.append(max(segs[s].end for s in ss) - max(layout[u]["end"] for u in us))
    return TimingStats(len(groups), single, merged, len(layout) - matched, np.array(starts), np.array(ends))


def errors_per_utterance(layout: list[dict], hyp_texts: list[str]) -> list[int]:
    """Word errors attributed to each reference utterance (an insertion goes to the utterance of
    the reference word before it)."""
    owner = [u for u, item in enumerate(layout) for _ in normalise(item["text"]).split()]
    counts = [0] * len(layout)
    ref = " ".join(normalise(item["text"]) for item in layout)
    hyp = " ".join(normalise(t) for t in hyp_texts)
    if not ref:
        return counts
    if not hyp:
        return [len(normalise(item["text"]).split()) for item in layout]
    for chunk in jiwer.process_words(ref, hyp).alignments[0]:
        if chunk.type in ("substitute", "delete"):
            for k in range(chunk.ref_start_idx, chunk.ref_end_idx):
                counts[owner[k]] += 1
        elif chunk.type == "insert":
            at = owner[max(0, chunk.ref_start_idx - 1)]
            counts[at] += chunk.hyp_end_idx - chunk.hyp_start_idx
    return counts


def _stats(errors: np.ndarray) -> str:
    if len(errors) == 0:
        return f"{'-':>6} {'-':>6} {'-':>6} {'-':>7}"
    a = np.abs(errors)
    return f"{np.median(a):6.2f} {np.percentile(a, 95):6.2f} {a.max():6.2f} {np.mean(errors):+7.2f}"


# ---------------------------------------------------------------- the two ways of transcribing

def run_daemon(files: list[Path], out: Path) -> float:
    """`transcribed transcribe FILES --out OUT`; returns wall seconds."""
    started = time.monotonic()
    proc = subprocess.run([str(TRANSCRIBED), "transcribe", *map(str, files), "--out", str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"transcribed transcribe failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.monotonic() - started


def utterance_cuts(audio: np.ndarray, layout: list[dict]) -> list[tuple[int, np.ndarray]]:
    """(first sample, samples) of each utterance with small margins, from the decoded audio."""
    cuts = []
    for i, item in enumerate(layout):
        before = item["start"] - layout[i - 1]["end"] if i > 0 else item["start"]
        after = layout[i + 1]["start"] - item["end"] if i + 1 < len(layout) else len(audio) / SR - item["end"]
        lo = max(0, round((item["start"] - min(MAX_MARGIN, before / 2)) * SR))
        hi = min(len(audio), round((item["end"] + min(MAX_MARGIN, after / 2)) * SR))
        cuts.append((lo, audio[lo:hi]))
    return cuts


async def _engine_on_cuts(jobs: list[list[tuple[int, np.ndarray]]]) -> list[list[list[Seg]]]:
    async with open_embedded_engine(EmbeddedConfig()) as engine:
        results: list[list[list[Seg]]] = [[[] for _ in cuts] for cuts in jobs]

        async def one(j: int, k: int, lo: int, samples: np.ndarray) -> None:
            piece = await transcribe_audio(engine, samples)
            results[j][k] = [Seg(s.start + lo / SR, s.end + lo / SR, s.text) for s in piece.segments]

        async with trio.open_nursery() as nursery:
            for j, cuts in enumerate(jobs):
                for k, (lo, samples) in enumerate(cuts):
                    nursery.start_soon(one, j, k, lo, samples)
        return results


def per_utterance(jobs: list[list[tuple[int, np.ndarray]]]) -> tuple[list[list[list[Seg]]], float]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    started = time.monotonic()
    results = trio.run(_engine_on_cuts, jobs)
    return results, time.monotonic() - started


# ---------------------------------------------------------------- report

def report(name: str, layout: list[dict], outputs: dict[str, list[Seg]], alone: list[list[Seg]],
           audio_seconds: float, daemon_wall: float | None) -> dict:
    refs = [u["text"] for u in layout]
    daemon_wer = wer(refs, [s.text for s in outputs["json"]])
    alone_wer = wer(refs, [" ".join(s.text for s in segs) for segs in alone])
    diff = 100 * (daemon_wer - alone_wer)
    n_words = sum(len(normalise(r).split()) for r in refs)
    print(f"\n=== {name}: {audio_seconds:.1f} s audio, {len(layout)} utterances, {n_words} words"
          + (f", daemon wall {daemon_wall:.1f} s (RTF {daemon_wall / audio_seconds:.3f})" if daemon_wall else ""))
    verdict = "PASS" if diff <= 1.0 else "FAIL"
    print(f"WER  daemon {100 * daemon_wer:5.2f} %   per-utterance {100 * alone_wer:5.2f} %   "
          f"difference {diff:+5.2f} points   (goal <= +1.00: {verdict})")
    print(f"{'timestamps':12} {'groups':>6} {'1:1':>4} {'merged':>6} {'unmat':>5} | "
          f"{'start |err| s: med':>18} {'p95':>6} {'max':>6} {'mean':>7} | {'end |err| s: med':>16} {'p95':>6} "
          f"{'max':>6} {'mean':>7}")
    flat_alone = [seg for segs in alone for seg in segs]
    worst = 0.0
    rows = {**outputs, "engine alone": flat_alone}
    for label, segs in rows.items():
        t = timing(layout, segs)
        if label != "engine alone" and len(t.start_errors):
            worst = max(worst, float(np.percentile(np.abs(t.start_errors), 95)),
                        float(np.percentile(np.abs(t.end_errors), 95)))
        print(f"{label:12} {t.groups:6d} {t.single:4d} {t.utterances_merged:6d} {t.unmatched:5d} | "
              f"{'':12}{_stats(t.start_errors)} | {'':10}{_stats(t.end_errors)}")
    print(f"timestamp p95 |error| of the daemon's outputs {worst:.2f} s (goal <= 0.5 s: "
          f"{'PASS' if worst <= 0.5 else 'FAIL'})")
    daemon_errs = errors_per_utterance(layout, [s.text for s in outputs["json"]])
    alone_errs = errors_per_utterance(layout, [" ".join(s.text for s in segs) for segs in alone])
    worse = [u for u in range(len(layout)) if daemon_errs[u] > alone_errs[u]]
    if worse:
        print(f"utterances where the daemon made more word errors than the engine alone ({len(worse)}):")
        for u in worse[:20]:
            item = layout[u]
            said = " | ".join(s.text for s in outputs["json"] if s.end > item["start"] - 0.5 and s.start < item["end"] + 0.5)
            print(f"  {item['start']:8.2f}-{item['end']:8.2f} s  errors {daemon_errs[u]} vs {alone_errs[u]}  "
                  f"ref {item['text']!r}\n{'':24}daemon {said!r}\n{'':24}alone  "
                  f"{' '.join(s.text for s in alone[u])!r}")
    return {"name": name, "daemon_wer": daemon_wer, "alone_wer": alone_wer, "timestamp_p95": worst}


def decode_pcm(path: Path) -> np.ndarray:
    return corpus.decode(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the built recording")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--format", default="wav", choices=("wav", "mp3", "flac"))
    parser.add_argument("--recording", type=Path, help="use this recording instead of building one")
    parser.add_argument("--layout", type=Path, help="its layout JSON (default: STEM.layout.json beside it)")
    parser.add_argument("--no-sources", action="store_true", help="skip beckett.wav and two_cities.wav")
    parser.add_argument("--workdir", type=Path, help="keep recordings and outputs here (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true",
                        help="with --workdir: reuse its recording, transcripts and per-utterance results")
    args = parser.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="transcribed-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)
    built = work / f"accuracy_{int(args.seconds)}s_seed{args.seed}.{args.format}"
    if args.reuse and not args.recording and built.exists():
        args.recording = built
    if args.recording:
        recording = args.recording
        layout = corpus.load_layout(args.layout or corpus.default_layout_path(recording))
    else:
        recording = work / f"accuracy_{int(args.seconds)}s_seed{args.seed}.{args.format}"
        extra = ["-c:a", "libmp3lame", "-b:a", "128k", "-ar", "44100"] if args.format == "mp3" else None
        print(f"building {recording} ...", flush=True)
        corpus.build(recording, args.seconds, args.seed, ffmpeg_args=extra)
        layout = corpus.load_layout(corpus.default_layout_path(recording))

    tests: list[tuple[str, Path, list[dict]]] = [(recording.stem, recording, layout)]
    if not args.no_sources:
        for name in ("beckett", "two_cities"):
            tests.append((name, corpus.ASSETS / f"{name}.wav", corpus.source_layout(name)))

    out = work / "outbox"
    if args.reuse and all((out / f"{p.stem}.json").exists() for _, p, _ in tests):
        print(f"daemon: reusing the transcripts in {out}", flush=True)
        daemon_wall = None
    else:
        print(f"daemon: transcribed transcribe {' '.join(p.name for _, p, _ in tests)} ...", flush=True)
        daemon_wall = run_daemon([p for _, p, _ in tests], out)
        print(f"  {daemon_wall:.1f} s (all files, one process, model load included)", flush=True)

    audios = [decode_pcm(path) for _, path, _ in tests]
    jobs = [utterance_cuts(audio, lay) for audio, (_, _, lay) in zip(audios, tests, strict=True)]
    saved = work / "alone.json"
    if args.reuse and saved.exists():
        alone = [[[Seg(*seg) for seg in segs] for segs in test] for test in json.loads(saved.read_text())]
        print(f"engine alone: reusing {saved}", flush=True)
    else:
        print(f"engine alone on {sum(len(j) for j in jobs)} utterance cuts ...", flush=True)
        alone, alone_wall = per_utterance(jobs)
        print(f"  {alone_wall:.1f} s", flush=True)
        saved.write_text(json.dumps([[[[s.start, s.end, s.text] for s in segs] for segs in test] for test in alone]))

    summary = []
    for (name, path, lay), audio, segs_alone in zip(tests, audios, alone, strict=True):
        outputs = read_outputs(out, path.stem)
        wall = daemon_wall if len(tests) == 1 and daemon_wall else None
        summary.append(report(name, lay, outputs, segs_alone, len(audio) / SR, wall))

    print("\n=== summary")
    print(f"{'recording':28} {'daemon WER':>10} {'alone WER':>10} {'diff':>7} {'ts p95':>7}")
    ok = True
    for row in summary:
        diff = 100 * (row["daemon_wer"] - row["alone_wer"])
        ok &= diff <= 1.0 and row["timestamp_p95"] <= 0.5
        print(f"{row['name']:28} {100 * row['daemon_wer']:9.2f}% {100 * row['alone_wer']:9.2f}% {diff:+7.2f} "
              f"{row['timestamp_p95']:6.2f}s")
    print(f"outputs in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
