"""Piece lengths against balance: fixed-length plans and shrinking schedules, on a model server.

Run from the repository root (2 cores; about a minute with the defaults):

    .venv/bin/python bench/piece_plan.py [--hours 2] [--runs 200] [--decode-rate 900]

The server is the one issue 11 measured: 16 requests in flight, 500 requests a minute, a
service time of 0.8 s + audio seconds / 10 with lognormal jitter (σ = 0.3, mean 1). The client
is the daemon's scheduler as a model: pieces start in plan order (list scheduling), each when
the decoder has reached the end of the window its cut was decided in (`--decode-rate` audio
seconds per second; ffmpeg decodes a 2-hour MP3 in about 8 s here), a look-ahead of 17 pieces
cut ahead of the answers (PieceScheduler), a free slot and a rate permit (the gate: GCRA, a
burst of 16). The plans are made by the real planner (transcribed.planning) over synthetic
loudness frames: speech with the pauses of tests/speech_corpus.py (words, gaps after commas and
sentences, now and then a long pause or run-on speech), so cuts land in pauses as they would.

For each plan it prints the requests, the drop-to-done time (mean and 90th percentile over
`--runs` jitter draws), that time against two bounds, and the last round's idle time:

    bound(N)   (audio service + 0.8 s × the plan's N requests) / 16: the best any schedule of
               this plan could do
    server     (audio service + 0.8 s × 16) / 16: issue 11's bound, one request per slot
    idle       slot-seconds idle between the first slot's last answer and the last answer
    tail       seconds from the first slot's last answer to the last answer

Then wrong claims: the schedule aimed at a header that says 1 h for 3 h of audio, and 3 h for
1 h, against the fixed plan on the same audio.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))

from transcribed.planning import FRAMES_PER_SECOND, PieceLimits, PiecePlanner  # noqa: E402

SLOTS = 16
RPM = 500.0
BURST = 16
SERVICE_BASE = 0.8
SERVICE_PER_SECOND = 0.1
JITTER = 0.3
LOOKAHEAD = SLOTS + 1
WHISPER = PieceLimits(target_seconds=120.0, max_seconds=180.0)  # engines/models.py


# ---------------------------------------------------------------- synthetic speech


def speech_loudness(seconds: float, seed: int) -> np.ndarray:
    """20 ms loudness frames of speech over a -50 dBFS floor, with speech_corpus.py's gaps."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    total = round(seconds * FRAMES_PER_SECOND)
    frames = (-50.0 + noise.normal(0, 1.0, total)).astype(np.float32)
    at = rng.uniform(0.5, 2.0)
    gain = -25.0
    words_left = 0
    while at < seconds - 1.0:
        if words_left == 0:
            words_left = rng.randint(6, 16)
            gain = rng.uniform(-32.0, -20.0)
        length = rng.uniform(0.15, 0.6)
        first, last = round(at * FRAMES_PER_SECOND), round((at + length) * FRAMES_PER_SECOND)
        frames[first:last] = gain + noise.normal(0, 4.0, last - first)
        at += length
        words_left -= 1
        if words_left == 0:  # a sentence ends
            roll = rng.random()
            if roll < 0.15:
                at += rng.uniform(0.08, 0.2)  # run-on speech
            elif roll < 0.27:
                at += rng.uniform(1.5, 4.0)
            elif roll < 0.29:
                at += rng.uniform(6.0, 12.0)
            else:
                at += rng.uniform(0.4, 1.0)
        elif rng.random() < 0.15:
            at += rng.uniform(0.15, 0.35)  # a comma
        else:
            at += rng.uniform(0.03, 0.1)
    return frames


@dataclass(frozen=True, slots=True)
class PlannedPiece:
    seconds: float
    ready_at: float  # audio seconds decoded when its cut was decided
    silent: bool


def plan(loudness: np.ndarray, limits: PieceLimits) -> list[PlannedPiece]:
    """The real planner over the frames, fed a second at a time as the decoder would."""
    planner = PiecePlanner(limits)
    pieces: list[PlannedPiece] = []
    previous = 0
    block = FRAMES_PER_SECOND
    for start in range(0, len(loudness), block):
        fed = min(len(loudness), start + block)
        for cut in planner.feed(loudness[start:fed]):
            pieces.append(
                PlannedPiece(
                    (cut.frame - previous) / FRAMES_PER_SECOND, fed / FRAMES_PER_SECOND, cut.silent
                )
            )
            previous = cut.frame
    tail = (len(loudness) - previous) / FRAMES_PER_SECOND
    if tail > 0:
        pieces.append(PlannedPiece(tail, len(loudness) / FRAMES_PER_SECOND, planner.finish()))
    return pieces


# ---------------------------------------------------------------- the server and the client


@dataclass(frozen=True, slots=True)
class Run:
    makespan: float
    idle: float
    tail: float


def simulate(pieces: list[PlannedPiece], *, decode_rate: float, rng: np.random.Generator) -> Run:
    interval = 60.0 / RPM
    tolerance = (BURST - 1) * interval
    tat = -math.inf
    slots = [0.0] * SLOTS  # when each slot is next free (a heap)
    outstanding: list[float] = []  # answers the look-ahead waits for (a heap)
    clock = 0.0  # the decoder's
    decoded = 0.0
    for piece in pieces:
        clock += (piece.ready_at - decoded) / decode_rate
        decoded = piece.ready_at
        if piece.silent:
            continue
        while outstanding and outstanding[0] <= clock:
            heapq.heappop(outstanding)
        if len(outstanding) >= LOOKAHEAD:  # the decoder waits for an answer
            clock = heapq.heappop(outstanding)
        start = max(clock, heapq.heappop(slots))
        start = max(start, tat - tolerance)  # the rate permit, taken inside the slot
        tat = max(tat, start) + interval
        jitter = rng.lognormal(-JITTER * JITTER / 2, JITTER)
        finish = start + (SERVICE_BASE + SERVICE_PER_SECOND * piece.seconds) * jitter
        heapq.heappush(slots, finish)
        heapq.heappush(outstanding, finish)
    makespan = max(slots)
    return Run(makespan, sum(makespan - s for s in slots), makespan - min(slots))


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    requests: int
    shortest: float
    longest: float
    mean: float
    p90: float
    bound: float
    server: float
    idle: float
    tail: float


def measure(name: str, pieces: list[PlannedPiece], *, runs: int, decode_rate: float) -> Row:
    sent = [p for p in pieces if not p.silent]
    audio = sum(p.seconds for p in sent)
    rng = np.random.default_rng(1)  # the same jitter draws for every plan
    results = [simulate(pieces, decode_rate=decode_rate, rng=rng) for _ in range(runs)]
    spans = np.array([r.makespan for r in results])
    return Row(
        name=name,
        requests=len(sent),
        shortest=min(p.seconds for p in sent[:-1]) if len(sent) > 1 else sent[0].seconds,
        longest=max(p.seconds for p in sent),
        mean=float(spans.mean()),
        p90=float(np.percentile(spans, 90)),
        bound=(SERVICE_PER_SECOND * audio + SERVICE_BASE * len(sent)) / SLOTS,
        server=(SERVICE_PER_SECOND * audio + SERVICE_BASE * SLOTS) / SLOTS,
        idle=float(np.mean([r.idle for r in results])),
        tail=float(np.mean([r.tail for r in results])),
    )


def print_rows(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    print(
        f"{'plan':<34} {'requests':>8} {'pieces s':>11} {'done s':>7} {'p90 s':>7} {'/bound(N)':>9} {'/server':>8} {'idle slot-s':>11} {'tail s':>7}"
    )
    for r in rows:
        lengths = f"{r.shortest:.0f}-{r.longest:.0f}"
        print(
            f"{r.name:<34} {r.requests:>8} {lengths:>11} {r.mean:>7.1f} {r.p90:>7.1f} {r.mean / r.bound:>9.3f} {r.mean / r.server:>8.3f} {r.idle:>11.1f} {r.tail:>7.1f}"
        )


def fixed(target: float) -> PieceLimits:
    return PieceLimits(target_seconds=target, max_seconds=min(180.0, 1.5 * target))


def scheduled(
    total: float, *, factor: float, floor: float, limits: PieceLimits = WHISPER
) -> PieceLimits:
    base = PieceLimits(
        target_seconds=limits.target_seconds, max_seconds=limits.max_seconds,
        schedule_factor=factor, min_target_seconds=floor,
    )  # fmt: skip
    return base.scheduled(total_seconds=total, parallelism=SLOTS)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=200, help="jitter draws per plan")
    parser.add_argument(
        "--decode-rate", type=float, default=900.0, help="audio seconds decoded per second"
    )
    parser.add_argument("--factors", default="1,1.5,2")
    parser.add_argument("--floors", default="10,15,20,30")
    args = parser.parse_args()
    seconds = args.hours * 3600
    loudness = speech_loudness(seconds, seed=7)
    options = {"runs": args.runs, "decode_rate": args.decode_rate}

    rows = [
        measure(
            f"fixed {t:g} s (max {fixed(t).max_seconds:g})", plan(loudness, fixed(t)), **options
        )
        for t in (20, 30, 60, 120, 180)
    ]
    for factor in (float(f) for f in args.factors.split(",")):
        for floor in (float(f) for f in args.floors.split(",")):
            limits = scheduled(seconds, factor=factor, floor=floor)
            rows.append(
                measure(
                    f"schedule k={factor:g} floor {floor:g} s", plan(loudness, limits), **options
                )
            )
    print_rows(
        f"{args.hours:g} h of speech, claim right, 16 slots, 500 rpm, decode {args.decode_rate:g}x",
        rows,
    )

    wrong = []
    for audio_hours, claims in ((3.0, (1.0,)), (1.0, (3.0,)), (2.0, (1.8, 2.2))):
        audio = speech_loudness(audio_hours * 3600, seed=8)
        wrong.append(
            measure(f"{audio_hours:g} h audio, no claim (fixed)", plan(audio, WHISPER), **options)
        )
        for claim_hours in (audio_hours, *claims):
            limits = WHISPER.scheduled(total_seconds=claim_hours * 3600, parallelism=SLOTS)
            wrong.append(
                measure(
                    f"{audio_hours:g} h audio, claim {claim_hours:g} h",
                    plan(audio, limits),
                    **options,
                )
            )
    print_rows("wrong claims (the defaults)", wrong)


if __name__ == "__main__":
    main()
