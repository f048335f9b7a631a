"""Timing and subtitle rules per model, measured against a corpus whose every word time is known.

1. OpenAI models. A recording is built by tests/speech_corpus.py (espeak-ng words over a noise
   floor, every word's start and end known). tests/openai_server.py runs with that corpus: it
   locates each uploaded piece by cross-correlation and answers with the exact words whose
   centres fall in the piece, in the model's format (timed segments for whisper-1, bare text
   for gpt-transcribe / gpt-4o-transcribe). The real `transcribed transcribe` runs against it.
   Then, with the output words aligned to the true words (difflib):
   * segment start/end error (.json): each segment's start against its first word's true start,
     its end against its last word's true end: median / p95 / max of |error|, and the mean
     signed start error (a constant delay shows here);
   * cue start error (.srt), the same for each cue's first word;
   * lost and doubled words (true words missing from the output; output words not in the truth);
   * % of cues within the rules (subtitles.cue_problems on the parsed .srt).
2. The embedded engine on a bench/corpus.py recording (real speech): % of cues within the rules,
   and the word error rate of the .txt against the layout's text.

Run:
    .venv/bin/python bench/timing.py                          # 600 s recording, ~2-3 min
    .venv/bin/python bench/timing.py --seconds 7200 --models gpt-transcribe
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from speech_corpus import build  # noqa: E402

from transcribed.subtitles import Cue, cue_problems  # noqa: E402

PYTHON = sys.executable


def norm(token: str) -> str:
    return re.sub(r"[^a-z0-9']", "", token.lower())


def read_srt(path: Path) -> list[Cue]:
    cues = []
    for block in path.read_text().strip().split("\n\n"):
        lines = block.split("\n")
        if len(lines) < 3:
            continue
        start, end = (_seconds(t) for t in lines[1].split(" --> "))
        cues.append(Cue(start=start, end=end, lines=tuple(lines[2:])))
    return cues


def _seconds(stamp: str) -> float:
    h, m, rest = stamp.strip().replace(",", ".").split(":")
    return int(h) * 3600 + int(m) * 60 + float(rest)


def stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    a = np.abs(np.array(values))
    return f"median {np.median(a):.3f}  p95 {np.percentile(a, 95):.3f}  max {a.max():.3f}"


def align(truth: list[tuple[str, float, float]], tokens: list[str]) -> tuple[dict[int, int], int, int]:
    """(output token index → truth word index for equal words, lost words, extra words)."""
    matcher = difflib.SequenceMatcher(a=[norm(w[0]) for w in truth], b=[norm(t) for t in tokens], autojunk=False)
    mapping: dict[int, int] = {}
    lost = extra = 0
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            for k in range(a1 - a0):
                mapping[b0 + k] = a0 + k
        else:
            lost += a1 - a0
            extra += b1 - b0
    return mapping, lost, extra


def span_errors(truth: list[tuple[str, float, float]], spans: list[tuple[float, float, str]]) -> tuple[list[float], list[float], int, int]:
    """Start and end errors of each span (start, end, text) against its first/last true word."""
    tokens: list[str] = []
    bounds: list[tuple[int, int]] = []
    for _, _, text in spans:
        words = text.split()
        bounds.append((len(tokens), len(tokens) + len(words) - 1))
        tokens.extend(words)
    mapping, lost, extra = align(truth, tokens)
    starts, ends = [], []
    for (start, end, _), (first, last) in zip(spans, bounds, strict=True):
        if first in mapping:
            starts.append(start - truth[mapping[first]][1])
        if last in mapping and last >= first:
            ends.append(end - truth[mapping[last]][2])
    return starts, ends, lost, extra


def run_openai(recording: Path, truth: list[tuple[str, float, float]], model: str, work: Path, *, utterances: list[tuple[int, int]] | None = None, flags: tuple[str, ...] = ()) -> dict[str, object]:
    name = f"{model}-{recording.stem}-{len(list(work.glob('out-*')))}"
    port_file = work / f"port-{name}"
    server = subprocess.Popen(
        [PYTHON, str(ROOT / "tests" / "openai_server.py"), "--port-file", str(port_file), "--corpus", str(recording)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the fake server did not start")
            time.sleep(0.1)
        url = port_file.read_text().strip()
        out = work / f"out-{name}"
        out.mkdir()
        env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon"), "OPENAI_API_KEY": "sk-bench-not-a-key"}
        env = {k: v for k, v in env.items() if not k.startswith("TRANSCRIBED_")}
        started = time.monotonic()
        subprocess.run(
            [PYTHON, "-m", "transcribed", "transcribe", str(recording), "--out", str(out),
             "--engine", "openai", "--openai-base-url", url, "--openai-model", model,
             "--openai-max-cost-per-file", "100", "--log-level", "error", *flags],
            check=True, env=env, stdout=subprocess.DEVNULL, timeout=1800,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        with urllib.request.urlopen(f"{url.rstrip('/').removesuffix('/v1')}/_stats", timeout=10) as answer:
            stats_doc = json.loads(answer.read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    document = json.loads((out / f"{recording.stem}.json").read_text())
    segments = [(s["start"], s["end"], s["text"]) for s in document["segments"]]
    cues = read_srt(out / f"{recording.stem}.srt")
    starts, ends, lost, extra = span_errors(truth, segments)
    cue_starts, _, _, _ = span_errors(truth, [(c.start, c.end, c.text) for c in cues])
    problems = cue_problems(cues)
    kept = sum(1 for p in problems if not p)
    if utterances is not None:  # real speech: only utterance bounds are exact
        starts, ends = utterance_errors(truth, utterances, document)
        return {
            "model": model, "corpus": "real speech (bench/corpus.py)", "flags": " ".join(flags),
            "requests": stats_doc.get("requests"), "utterances": len(utterances),
            "utterance_start": stats(starts), "utterance_end": stats(ends),
            "mean_start_offset_ms": round(1000 * float(np.mean(starts)), 1) if starts else None,
            "lost_words": lost, "extra_words": extra, "cues": len(cues),
            "cues_within_rules_pct": round(100 * kept / max(1, len(cues)), 2), "broken_rules": _tally(problems),
        }  # fmt: skip
    return {
        "model": model,
        "flags": " ".join(flags),
        "seconds": round(elapsed, 1),
        "requests": stats_doc.get("requests"),
        "segments": len(segments),
        "segment_start": stats(starts),
        "segment_end": stats(ends),
        "mean_start_offset_ms": round(1000 * float(np.mean(starts)), 1) if starts else None,
        "cue_start": stats(cue_starts),
        "lost_words": lost,
        "extra_words": extra,
        "cues": len(cues),
        "cues_within_rules_pct": round(100 * kept / max(1, len(cues)), 2),
        "broken_rules": _tally(problems),
    }


def _tally(problems: list[list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for found in problems:
        for name in found:
            counts[name] = counts.get(name, 0) + 1
    return counts


def real_corpus(work: Path, seconds: float) -> tuple[Path, list[tuple[str, float, float]], list[tuple[int, int]]]:
    """A bench/corpus.py recording (real speech, a hearing room's floor) as a corpus for the
    fake server: the words of each utterance spread over it by length (so the server can pick
    those of a piece), and the (first, last) word index of every utterance, whose start and
    end are exact."""
    from corpus import build as build_real

    recording = work / "real-text.wav"
    placements = build_real(recording, seconds, seed=3, layout_path=work / "real-text.layout.json")
    words: list[tuple[str, float, float]] = []
    utterances: list[tuple[int, int]] = []
    for placement in placements:
        tokens = placement.text.split()
        total = sum(len(t) + 1 for t in tokens)
        at = placement.start
        first = len(words)
        for token in tokens:
            length = (placement.end - placement.start) * (len(token) + 1) / total
            words.append((token, round(at, 4), round(at + length, 4)))
            at += length
        utterances.append((first, len(words) - 1))
    recording.with_suffix(".words.json").write_text(json.dumps(words))
    return recording, words, utterances


def utterance_errors(truth: list[tuple[str, float, float]], utterances: list[tuple[int, int]], document: dict[str, object]) -> tuple[list[float], list[float]]:
    """Output word times at each utterance's first and last word against the exact times."""
    timed: list[tuple[str, float, float]] = []
    for segment in document["segments"]:  # type: ignore[attr-defined]
        tokens = segment["text"].split()
        words = segment.get("words") or []
        if len(words) == len(tokens):
            timed.extend((t, w["start"], w["end"]) for t, w in zip(tokens, words, strict=True))
        else:
            step = (segment["end"] - segment["start"]) / max(1, len(tokens))
            timed.extend((t, segment["start"] + i * step, segment["start"] + (i + 1) * step) for i, t in enumerate(tokens))
    mapping, _, _ = align(truth, [t for t, _, _ in timed])
    back = {v: k for k, v in mapping.items()}
    starts = [timed[back[a]][1] - truth[a][1] for a, _ in utterances if a in back]
    ends = [timed[back[b]][2] - truth[b][2] for _, b in utterances if b in back]
    return starts, ends


def run_embedded(work: Path, seconds: float, daemon: Path = ROOT / "daemon") -> dict[str, object]:
    from corpus import build as build_real
    from corpus import load_layout
    from textnorm import wer

    recording = work / "real.wav"
    layout_path = work / "real.layout.json"
    if not recording.exists():
        build_real(recording, seconds, seed=2, layout_path=layout_path)
    out = work / f"out-embedded-{len(list(work.glob('out-embedded*')))}"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSCRIBED_")}
    env["PYTHONPATH"] = str(daemon)
    started = time.monotonic()
    subprocess.run(
        [PYTHON, "-m", "transcribed", "transcribe", str(recording), "--out", str(out), "--engine", "embedded", "--log-level", "error"],
        check=True, env=env, stdout=subprocess.DEVNULL, timeout=1800,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    cues = read_srt(out / "real.srt")
    problems = cue_problems(cues)
    layout = load_layout(layout_path)
    reference = " ".join(u["text"] for u in layout)
    document = json.loads((out / "real.json").read_text())
    hypothesis = " ".join(s["text"] for s in document["segments"])
    txt = re.sub(r"\[\d\d:\d\d:\d\d\]", " ", (out / "real.txt").read_text())
    return {
        "model": "embedded",
        "daemon": str(daemon),
        "seconds": round(elapsed, 1),
        "cues": len(cues),
        "cues_within_rules_pct": round(100 * sum(1 for p in problems if not p) / max(1, len(cues)), 2),
        "broken_rules": _tally(problems),
        "longest_line": max((len(line) for c in cues for line in c.lines), default=0),
        "wer_json_pct": round(100 * wer([reference], [hypothesis]), 2),
        "wer_txt_pct": round(100 * wer([reference], [txt]), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--models", default="whisper-1,gpt-transcribe,gpt-4o-transcribe")
    parser.add_argument("--embedded-seconds", type=float, default=180.0, help="0 to skip")
    parser.add_argument("--compare-daemon", type=Path, help="also run the embedded engine with this daemon/ folder (an older checkout)")
    parser.add_argument("--real-seconds", type=float, default=300.0, help="real-speech corpus for text-only models; 0 to skip")
    parser.add_argument("--piece-targets", default="", help="also try these openai.piece_target_seconds for text-only models, e.g. 15,60,120")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-timing-") as folder:
        work = Path(folder)
        recording = work / "hearing.wav"
        words = build(recording, args.seconds, args.seed)
        truth = [(w.text, w.start, w.end) for w in words]
        print(f"corpus: {args.seconds:g} s, {len(truth)} words (espeak-ng), seed {args.seed}", file=sys.stderr)
        models = [model for model in args.models.split(",") if model]
        results = [run_openai(recording, truth, model, work) for model in models]
        text_only = [m for m in models if m != "whisper-1"][:1]
        for target in [t for t in args.piece_targets.split(",") if t]:
            maximum = str(max(float(target) * 2, 10.0))
            for model in text_only:
                results.append(run_openai(recording, truth, model, work, flags=("--openai-piece-target-seconds", target, "--openai-piece-max-seconds", maximum)))
        if args.real_seconds > 0:
            real, real_truth, utterances = real_corpus(work, args.real_seconds)
            for model in text_only:
                results.append(run_openai(real, real_truth, model, work, utterances=utterances))
                for target in [t for t in args.piece_targets.split(",") if t]:
                    maximum = str(max(float(target) * 2, 10.0))
                    flags = ("--openai-piece-target-seconds", target, "--openai-piece-max-seconds", maximum)
                    results.append(run_openai(real, real_truth, model, work, utterances=utterances, flags=flags))
        if args.embedded_seconds > 0:
            results.append(run_embedded(work, args.embedded_seconds))
            if args.compare_daemon:
                results.append(run_embedded(work, args.embedded_seconds, args.compare_daemon))
    for result in results:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
