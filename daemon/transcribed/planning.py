"""Pure piece planning: loudness frames in, cut points out, decided as the audio streams by.

A recording is cut into pieces of about a target length, never longer than `max_seconds`.
Cuts go in pauses, and a pause is judged against the recording's own noise floor (a hearing
room hums; a fixed dB threshold would find no pause there, or pauses everywhere). The floor is
a low percentile of every frame heard so far, kept in a fixed-size histogram, so planning is
one streaming pass in constant memory and gives the same plan every time it is run on the same
audio, however the decoder happens to chunk it (a resumed job re-plans to exactly the pieces it
journaled): each decision hears the frames up to the end of the window it looks at, no more.

Where speech runs on for a whole window without a pause, the cut goes at the quietest moment
and the two neighbours overlap by `overlap_seconds`; the merge keeps each line once.

The schedule. When the recording's length is known (the header's claim) and the engine works
on `parallelism` pieces at once, the target shrinks toward the end (guided self-scheduling):
the next piece aims at the rest of the claimed length shared by `schedule_factor` × the
parallelism, between `min_target_seconds` and the engine's target, so the long pieces go
first and the last round is made of short ones that finish together. Only the very first piece
is short too (`min_target_seconds`): the first request goes out a fraction of a second after
the claim instead of after a whole long window is decoded and encoded. Past the claimed end the
claim was wrong; the rest is guessed to be as long as the overrun so far, so pieces grow back
from the floor. A wrong claim costs balance, never a piece: these are only targets, and every
piece still ends in a pause, within `max_seconds`.

Silence. A piece with nothing to transcribe is marked silent and never sent. It is judged as
the audio streams, against the floor heard so far, on 200 ms averages: digital silence (under
-80 dBFS) is silent whatever came before; so is a stretch that never rises 6 dB over the floor
(and stays under the pause threshold); and so is steady quiet sound, room tone and hum, which
after pre-emphasis stays within a few dB of its own floor, even before any speech has been
heard. Speech rises well above its own floor, so a quiet speaker after a loud one is not silent.
A window that opens with silence is cut where the sound starts, and a long silence inside a
window is cut out, so silence becomes pieces of its own, as long as the window allows.

Stitching. A long silence cut out of the pieces would end a piece early and start a new window
after it: the recording's silences, not its length, would decide how many requests it takes
(a 2-hour hearing with a pause of 12 s every minute or two: 113 requests, 70 silent pieces, the
shortest sent piece 2 s). So a piece that ends where a long silence begins leaves its group
open: the next piece with sound is planned in the rest of the same window (the window, less
what the group already holds) and marked `joins`, to be sent in one request with the pieces
before it, the silence between them left out. The seam keeps `SILENCE_MARGIN_SECONDS` of the
silence on either side, so the model hears a pause there. Pieces stay what the journal keeps:
each has its own span and its own result, split back out of the request's answer.

`plan_rules` versions these rules: a job journaled under the first rules (no schedule, no
silence cuts, digital silence in the floor, the floor heard a decoder block at a time) is
re-planned by them, to the same pieces; one journaled under the second (no stitching) by those.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
FRAME_SAMPLES = 320  # 20 ms
FRAMES_PER_SECOND = SAMPLE_RATE // FRAME_SAMPLES
_FLOOR_DB = -100.0
_HIST_BINS = 200  # 0.5 dB bins from -100 dB to 0 dB

PLAN_RULES = 3  # the rules new jobs are planned by (see the module docstring)
# The schedule's defaults, chosen with bench/piece_plan.py (the figures are in bench/README.md).
SCHEDULE_FACTOR = 1.5
MIN_TARGET_SECONDS = 20.0
# Silence.
DIGITAL_SILENCE_DB = -80.0  # ±5 LSB: no microphone is this quiet, only a padded or muted file
QUIET_MARGIN_DB = 6.0  # the pause threshold's least margin over the floor
QUIET_CEILING_DB = -45.0  # steady sound louder than this is sent, whatever it sounds like
# After pre-emphasis, room tone's loudest 200 ms stays this close to its floor: measured 1.0-1.3
# dB for white, pink and brown noise with hum (3.6-9 dB before); speech over a floor 10 dB
# under it rises 7 dB and more (tests/speech_corpus.py's words; two_cities.wav)
NOISE_SPREAD_DB = 4.0
SMOOTH_FRAMES = 10  # silence is judged on 200 ms averages: one loud frame is a click
LEADING_SILENCE_SECONDS = 2.0  # a window opening with this much silence has it cut off
LONG_SILENCE_SECONDS = 10.0  # a silence this long inside a window is cut out of the pieces
SILENCE_MARGIN_SECONDS = 0.5  # left to the speech on either side of a silence cut
# A group stays open for the next piece with sound only if the window has this much left for it
MIN_JOIN_SECONDS = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PieceLimits:
    """How a job's pieces are planned: the engine's limits, and the schedule that aims them at
    the recording's length. Recorded in the job's journal at its first planning, so a resumed
    job plans by the same values whatever the configuration says by then. Seconds throughout.
    """

    target_seconds: float
    max_seconds: float
    overlap_seconds: float = 1.0
    min_pause_seconds: float = 0.3
    # the schedule: the claimed length it aims at (None: not known, every piece aims at the
    # target), how many pieces the engine works on at once, how fast the targets shrink
    total_seconds: float | None = None
    parallelism: int = 1
    schedule_factor: float = SCHEDULE_FACTOR
    min_target_seconds: float = MIN_TARGET_SECONDS
    plan_rules: int = PLAN_RULES

    @property
    def min_seconds(self) -> float:
        return self.target_seconds / 2

    def scheduled(self, *, total_seconds: float | None, parallelism: int) -> PieceLimits:
        """These limits aimed at a recording claimed to last `total_seconds` (None, zero or not
        finite: not known) on an engine that works on `parallelism` pieces at once."""
        known = total_seconds is not None and math.isfinite(total_seconds) and total_seconds > 0
        return dataclasses.replace(
            self, total_seconds=total_seconds if known else None, parallelism=max(1, parallelism)
        )

    def target_at(self, position: float) -> float:
        """The length a piece starting `position` seconds into the recording aims at: its share
        of what is left of the claimed length, once the engine's slots share the rest."""
        if self.total_seconds is None or self.plan_rules < 2:
            return self.target_seconds
        if position <= 0:
            # a quick start: the first request goes out as soon as a short piece is decoded and
            # encoded (~0.1 s for 20 s of audio), not after a whole long window (~0.5-0.8 s for
            # 3 minutes); one request more costs one slot 0.8 s
            return min(self.target_seconds, self.min_target_seconds)
        # past the claimed end the claim was wrong: guess the rest is as long as the overrun
        remaining = abs(self.total_seconds - position)
        share = remaining / (self.schedule_factor * self.parallelism)
        return min(self.target_seconds, max(self.min_target_seconds, share))

    def as_dict(self) -> dict[str, float]:
        data = {
            "target_seconds": self.target_seconds,
            "max_seconds": self.max_seconds,
            "overlap_seconds": self.overlap_seconds,
            "min_pause_seconds": self.min_pause_seconds,
            "parallelism": self.parallelism,
            "schedule_factor": self.schedule_factor,
            "min_target_seconds": self.min_target_seconds,
            "plan_rules": self.plan_rules,
        }
        if self.total_seconds is not None:
            data["total_seconds"] = self.total_seconds
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> PieceLimits:
        """Limits as a job's journal recorded them. A record without `plan_rules` was planned
        before the schedule and the silence cuts existed: it is re-planned by the first rules."""
        total = data.get("total_seconds")
        return cls(
            target_seconds=float(data["target_seconds"]),
            max_seconds=float(data["max_seconds"]),
            overlap_seconds=float(data.get("overlap_seconds", 1.0)),
            min_pause_seconds=float(data.get("min_pause_seconds", 0.3)),
            total_seconds=None if total is None else float(total),
            parallelism=int(data.get("parallelism", 1)),
            schedule_factor=float(data.get("schedule_factor", SCHEDULE_FACTOR)),
            min_target_seconds=float(data.get("min_target_seconds", MIN_TARGET_SECONDS)),
            plan_rules=int(data.get("plan_rules", 1)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Cut:
    """A decided cut, in frames from the start of the recording; `silent`: the piece that ends
    here holds nothing to transcribe."""

    frame: int
    in_pause: bool
    silent: bool = False
    joins: bool = False  # the piece that ends here is sent with the pieces before it (stitched)


@dataclass(frozen=True, slots=True)
class _Decision:
    """Where a window is cut, before silence is judged; `before_silence`: where a long silence
    begins."""

    frame: int
    in_pause: bool
    before_silence: bool = False


def frame_loudness(samples: np.ndarray) -> np.ndarray:
    """RMS level in dBFS of each whole 20 ms frame of int16 samples (a partial tail is ignored)."""
    whole = len(samples) - len(samples) % FRAME_SAMPLES
    if whole == 0:
        return np.empty(0, dtype=np.float32)
    frames = samples[:whole].astype(np.float32).reshape(-1, FRAME_SAMPLES) / 32768.0
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    loudness: np.ndarray = np.maximum(20.0 * np.log10(np.maximum(rms, 1e-10)), _FLOOR_DB)
    return loudness.astype(np.float32)


class NoiseFloor:
    """Running percentiles of frame loudness, in constant memory."""

    def __init__(self) -> None:
        self._counts = np.zeros(_HIST_BINS, dtype=np.int64)

    def add(self, loudness: np.ndarray) -> None:
        bins = ((loudness - _FLOOR_DB) * (_HIST_BINS / -_FLOOR_DB)).astype(np.int64)
        self._counts += np.bincount(np.clip(bins, 0, _HIST_BINS - 1), minlength=_HIST_BINS)

    def percentile(self, fraction: float) -> float:
        total = int(self._counts.sum())
        if total == 0:
            return _FLOOR_DB
        index = int(np.searchsorted(np.cumsum(self._counts), fraction * total))
        return _FLOOR_DB + (index + 0.5) * (-_FLOOR_DB / _HIST_BINS)

    def pause_threshold(self) -> float:
        """Frames quieter than this are pause: a margin above the floor that grows with the
        recording's dynamic range (speech level minus floor), never less than 6 dB, and always
        at least 10 dB below the speech level (in unbroken speech the low percentile is speech
        too, and its dips are not pauses)."""
        floor = self.percentile(0.05)
        speech = self.percentile(0.90)
        return min(floor + max(6.0, 0.35 * (speech - floor)), speech - 10.0)


class PiecePlanner:
    """Feed loudness frames in order; get cuts back as soon as each one can be decided.

    A cut is decided once a whole window after the previous cut has been heard (`max_seconds`
    at most), so the caller needs to hold at most `max_seconds + overlap_seconds` of audio.
    Steady sound is judged on the same frames after pre-emphasis (timing.pre_emphasis), where
    the rumble and hum of a room are flat; without them, on the loudness frames.
    """

    def __init__(self, limits: PieceLimits) -> None:
        self.limits = limits
        self._rules = limits.plan_rules
        self._floor = NoiseFloor()
        self._emphasised_floor = NoiseFloor()
        self._heard = 0  # absolute frames added to the floors
        self._pending = np.empty(0, dtype=np.float32)  # frames since the last cut
        self._pending_emphasised = np.empty(0, dtype=np.float32)
        self._pending_start = 0  # absolute frame index of _pending[0]
        self._max = round(limits.max_seconds * FRAMES_PER_SECOND)
        self._overlap = round(limits.overlap_seconds * FRAMES_PER_SECOND)
        self._min_pause = max(1, round(limits.min_pause_seconds * FRAMES_PER_SECOND))
        self._leading_silence = round(LEADING_SILENCE_SECONDS * FRAMES_PER_SECOND)
        self._long_silence = round(LONG_SILENCE_SECONDS * FRAMES_PER_SECOND)
        self._margin = round(SILENCE_MARGIN_SECONDS * FRAMES_PER_SECOND)
        self._min_join = round(MIN_JOIN_SECONDS * FRAMES_PER_SECOND)
        # stitching: frames of sound the open group holds (0: no group is open)
        self._carry = 0
        self.final_joins = False  # after finish(): the last piece is stitched to the open group

    def feed(self, loudness: np.ndarray, emphasised: np.ndarray | None = None) -> list[Cut]:
        """Take the next frames (and the same frames after pre-emphasis); return the cuts that
        can now be decided, in order."""
        emphasised = loudness if emphasised is None else emphasised
        if self._rules < 2:  # the first rules heard a decoder block at a time
            self._floor.add(loudness)
            self._emphasised_floor.add(emphasised)
        self._pending = np.concatenate([self._pending, loudness])
        self._pending_emphasised = np.concatenate([self._pending_emphasised, emphasised])
        cuts: list[Cut] = []
        while (cut := self._next_cut()) is not None:
            cuts.append(dataclasses.replace(cut, frame=self._pending_start + cut.frame))
            self._pending = self._pending[cut.frame :]
            self._pending_emphasised = self._pending_emphasised[cut.frame :]
            self._pending_start += cut.frame
        return cuts

    def finish(self) -> bool:
        """Whether what follows the last cut (the recording's last piece) is silent."""
        self._hear(len(self._pending))
        silent = self._is_silent(len(self._pending))
        # stitched only if the group still fits its window
        _, _, longest = self._window()
        self.final_joins = (
            not silent and 0 < self._carry and self._carry + len(self._pending) <= longest
        )
        return silent

    def _hear(self, frames: int) -> None:
        """Add the pending frames up to `frames` to the floors, each frame once."""
        if self._rules < 2:
            return
        end = self._pending_start + frames
        if end > self._heard:
            new = slice(self._heard - self._pending_start, frames)
            # digital silence is left out, so a muted stretch does not pull the floor below
            # the room's
            audible = self._pending[new] >= DIGITAL_SILENCE_DB
            self._floor.add(self._pending[new][audible])
            self._emphasised_floor.add(self._pending_emphasised[new][audible])
            self._heard = end

    def _window(self) -> tuple[int, int, int]:
        """(target, shortest, longest) in frames, for the piece that starts at the last cut."""
        limits = self.limits
        target = limits.target_at(self._pending_start / FRAMES_PER_SECOND)
        longest = self._max
        if target < limits.target_seconds:  # a shrunken target keeps the engine's proportions
            stretch = limits.max_seconds / limits.target_seconds
            longest = min(self._max, round(target * stretch * FRAMES_PER_SECOND))
        shortest = max(1, round(target / 2 * FRAMES_PER_SECOND))
        return round(target * FRAMES_PER_SECOND), shortest, longest

    def _next_cut(self) -> Cut | None:
        target, shortest, longest = self._window()
        if len(self._pending) < longest:
            return None
        self._hear(longest)
        if self._rules >= 2:
            examined = longest
            lead = self._silent_prefix(examined)
            if lead == examined < self._max:
                # silence all through a short window: let it run on to a long one, so a long
                # silence makes few pieces
                if len(self._pending) < self._max:
                    return None
                examined = self._max
                self._hear(examined)
                lead = self._silent_prefix(examined)
            if lead >= self._leading_silence:
                # the silence goes on past the window, or ends where the sound starts
                end = lead if lead == examined else lead - self._margin
                return self._grouped(Cut(frame=end, in_pause=True, silent=self._is_silent(end)))
        carry = self._carry if self._rules >= 3 else 0
        if carry and target - carry < self._min_join:
            carry = self._carry = 0  # too little room left: the group closes, a new one opens
        cut = self._decide(longest - carry, max(1, target - carry), max(1, shortest - carry))
        return self._grouped(
            Cut(frame=cut.frame, in_pause=cut.in_pause, silent=self._is_silent(cut.frame)),
            before_silence=cut.before_silence,
        )

    def _grouped(self, cut: Cut, *, before_silence: bool = False) -> Cut:
        """The cut, marked `joins` when its piece is stitched to the open group; the group
        stays open after a piece that ends where a long silence begins, and across silent
        pieces, and closes after any other piece with sound."""
        if self._rules < 3 or cut.silent:
            return cut
        joins = 0 < self._carry and self._carry + cut.frame <= self._max  # (one request's most)
        held = self._carry if joins else 0
        self._carry = held + cut.frame if before_silence else 0
        return dataclasses.replace(cut, joins=joins)

    def _decide(self, longest: int, target: int, shortest: int) -> _Decision:
        window = self._pending[:longest]
        if self._rules >= 2:
            silence = self._long_silence_start(longest)
            if silence is not None:
                return _Decision(frame=silence + self._margin, in_pause=True, before_silence=True)
            quiet = window < max(self._floor.pause_threshold(), DIGITAL_SILENCE_DB)
        else:
            quiet = window < self._floor.pause_threshold()
        best: tuple[float, int] | None = None
        for start, end in _runs(quiet):
            length = end - start
            center = (start + end) // 2
            if length < self._min_pause or not shortest <= center < longest:
                continue
            # longest pause wins; among similar ones, the one nearest the target
            score = length * (1.0 - 0.5 * abs(center - target) / longest)
            if best is None or score > best[0]:
                best = (score, center)
        if best is not None:
            return _Decision(frame=best[1], in_pause=True)
        # No pause: cut at the quietest 200 ms between the target and the end of the window,
        # leaving room for the overlap with the next piece.
        low = min(target, longest - self._overlap - 1)
        high = max(low + 1, longest - self._overlap)
        smooth = np.convolve(window, np.ones(10) / 10, mode="same")
        return _Decision(frame=low + int(np.argmin(smooth[low:high])), in_pause=False)

    # Silence: a stretch is silent when its loudest 200 ms is digital silence, or stays within
    # QUIET_MARGIN_DB of the floor (and under the pause threshold), or, in its emphasised
    # frames, within NOISE_SPREAD_DB of theirs (under QUIET_CEILING_DB). Never "far below the
    # speech": a quiet speaker after a loud one is still speech.

    def _quiet(self, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """For each 200 ms average that lies in the first `frames` pending frames (element j:
        frames j..j+9), whether it is quiet by the loudness frames and by the emphasised ones."""
        floor = self._floor
        margin = min(floor.pause_threshold(), floor.percentile(0.05) + QUIET_MARGIN_DB)
        quiet = max(DIGITAL_SILENCE_DB, margin)
        steady = min(QUIET_CEILING_DB, self._emphasised_floor.percentile(0.05) + NOISE_SPREAD_DB)
        return (
            _smoothed(self._pending[:frames]) < quiet,
            _smoothed(self._pending_emphasised[:frames]) < steady,
        )

    def _is_silent(self, frames: int) -> bool:
        """Whether the first `frames` pending frames, as a piece, hold nothing to transcribe."""
        by_loudness, by_emphasis = self._quiet(frames)
        return bool(by_loudness.all() or by_emphasis.all())

    def _silent_prefix(self, frames: int) -> int:
        """How many of the first `frames` pending frames, cut off as a piece, are silent: up to
        the first 200 ms that is loud by one measure, the later of the two (or all of them)."""
        prefix = 0
        for quiet in self._quiet(frames):
            loud = np.flatnonzero(~quiet)
            prefix = max(prefix, int(loud[0]) if len(loud) else frames)
        return prefix

    def _long_silence_start(self, frames: int) -> int | None:
        """Where the first silence of LONG_SILENCE_SECONDS or more begins in the first `frames`
        pending frames (after some sound), if one does."""
        starts = [
            start
            for quiet in self._quiet(frames)
            for start, end in _runs(quiet)
            if start > 0 and end - start >= self._long_silence
        ]
        return min(starts, default=None)


def _smoothed(frames: np.ndarray) -> np.ndarray:
    """200 ms averages of frames, each over whole frames only (element j: frames j..j+9)."""
    if len(frames) < SMOOTH_FRAMES:
        return frames
    return np.convolve(frames, np.ones(SMOOTH_FRAMES) / SMOOTH_FRAMES, mode="valid")


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in a boolean array."""
    if len(mask) == 0:
        return []
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class PieceSpan:
    """Where a piece lies, in samples: what is sent [start, end) and what is kept [keep_start,
    keep_end). They differ only around a cut that fell outside a pause (overlap)."""

    index: int
    start: int
    end: int
    keep_start: int
    keep_end: int

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE
