"""Pure cue segmentation: merged segments → subtitle cues that keep the usual broadcast rules.

One segmentation feeds both .srt and .vtt. The rules (Netflix/BBC style, `SubtitleRules`): at
most 42 characters a line and 2 lines a cue, at most 7 s a cue, at least ~1 s unless the speech
is shorter, no empty and no overlapping cues, reading speed under ~20 characters a second where
the speech allows it. Lines break at punctuation or between phrases rather than mid-phrase.

How: the segments become one stream of timed words (the engine's word times where it gave them,
else the segment's time spread over its words by length). The stream is cut into blocks at hard
breaks (a speaker change, a long pause), and each block is divided into cues by dynamic
programming over the word boundaries: a cue that breaks a hard rule is impossible, and the
cost prefers cues that end at punctuation or a pause, read slowly enough and last long enough.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from transcribed.engines.base import Segment

# a line break is better before these words than after them (they open a phrase)
_PHRASE_OPENERS = frozenset(
    "and but or nor so yet because although though while whereas if unless until when where "
    "which who whom whose that than to of in on at by for from with without into onto about "
    "after before over under between through during against among".split()
)
_SENTENCE_END = (".", "?", "!", "…", '."', '?"', '!"')
_CLAUSE_END = (",", ";", ":", "\u2014", "\u2013", ",'", ',"')


@dataclass(frozen=True, slots=True, kw_only=True)
class SubtitleRules:
    """The limits a cue keeps. Defaults: the usual broadcast rules."""

    max_line_chars: int = 42
    max_lines: int = 2
    max_cue_seconds: float = 7.0
    min_cue_seconds: float = 1.0
    max_chars_per_second: float = 20.0
    # a pause this long always ends a cue (subtitles should not hang over silence)
    pause_break_seconds: float = 1.0
    # the smallest gap kept between one cue's end and the next one's start
    min_gap_seconds: float = 0.04


@dataclass(frozen=True, slots=True, kw_only=True)
class TimedWord:
    start: float
    end: float
    text: str
    speaker: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Cue:
    """One subtitle: its time, its (already broken) lines, and who speaks."""

    start: float
    end: float
    lines: tuple[str, ...]
    speaker: str | None = None
    # the first cue of a speaker's turn (srt prefixes the name there)
    new_speaker: bool = False
    # the speech itself was this long (before the cue was stretched for reading)
    speech_seconds: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(self.lines)


# ---------------------------------------------------------------- words from segments


def segment_words(segment: Segment) -> list[TimedWord]:
    """The segment's words, each with a time: the engine's word times when they match the text
    word for word, else the segment's span spread over its words by their length."""
    tokens = segment.text.split()
    if not tokens:
        return []
    if len(segment.words) == len(tokens):
        return [
            TimedWord(start=w.start, end=max(w.start, w.end), text=t, speaker=segment.speaker)
            for w, t in zip(segment.words, tokens, strict=True)
        ]
    return spread_words(tokens, segment.start, segment.end, speaker=segment.speaker)


def spread_words(
    tokens: Sequence[str], start: float, end: float, *, speaker: str | None = None
) -> list[TimedWord]:
    """Words spread over [start, end] in proportion to their length (plus one for the space)."""
    weights = [len(t) + 1 for t in tokens]
    total = sum(weights)
    span = max(0.0, end - start)
    words: list[TimedWord] = []
    at = start
    for token, weight in zip(tokens, weights, strict=True):
        length = span * weight / total
        words.append(TimedWord(start=at, end=at + length, text=token, speaker=speaker))
        at += length
    return words


def timed_words(segments: Iterable[Segment]) -> list[TimedWord]:
    words: list[TimedWord] = []
    for segment in segments:
        words.extend(segment_words(segment))
    return words


# ---------------------------------------------------------------- line breaking


def _break_penalty(before: str, after: str | None) -> float:
    """How bad a break after the word `before` (and before `after`) is; 0 is a sentence end."""
    if before.endswith(_SENTENCE_END):
        return 0.0
    if before.endswith(_CLAUSE_END):
        return 0.4
    if after is not None and after.lower().strip("\"'(") in _PHRASE_OPENERS:
        return 1.2
    return 3.0


def break_lines(
    tokens: Sequence[str], rules: SubtitleRules
) -> tuple[tuple[str, ...], float] | None:
    """The best way to set `tokens` in at most `max_lines` lines of `max_line_chars`, and its
    penalty; None when they do not fit."""
    limit = rules.max_line_chars
    text = " ".join(tokens)
    if len(text) <= limit:
        return (text,), 0.0
    if rules.max_lines < 2:
        return None
    best: tuple[tuple[str, ...], float] | None = None
    for k in range(1, len(tokens)):
        top, bottom = " ".join(tokens[:k]), " ".join(tokens[k:])
        if len(top) > limit or len(bottom) > limit:
            continue
        # a break at a phrase boundary first; then balanced lines (a shorter top line is nicer)
        penalty = _break_penalty(tokens[k - 1], tokens[k]) + abs(len(top) - len(bottom)) / limit
        if len(top) > len(bottom):
            penalty += 0.1
        if best is None or penalty < best[1]:
            best = ((top, bottom), penalty)
    return best


def _hard_wrap(token: str, rules: SubtitleRules) -> list[str]:
    """A single word longer than a line (a URL): cut it into line-sized pieces."""
    size = rules.max_line_chars
    return [token[i : i + size] for i in range(0, len(token), size)]


# ---------------------------------------------------------------- cue segmentation


def _blocks(words: Sequence[TimedWord], rules: SubtitleRules) -> list[list[TimedWord]]:
    """Runs of words between hard breaks: a speaker change or a long pause."""
    blocks: list[list[TimedWord]] = []
    for word in words:
        if (
            blocks
            and word.speaker == blocks[-1][-1].speaker
            and word.start - blocks[-1][-1].end < rules.pause_break_seconds
        ):
            blocks[-1].append(word)
        else:
            blocks.append([word])
    return blocks


_IMPOSSIBLE = float("inf")


def _divide(block: Sequence[TimedWord], rules: SubtitleRules) -> list[tuple[int, int]]:
    """The cheapest division of a block into cues, as (first, end) word index ranges."""
    n = len(block)
    best = [0.0] + [_IMPOSSIBLE] * n
    back = [0] * (n + 1)
    for end in range(1, n + 1):
        chars = -1
        for first in range(end - 1, -1, -1):
            chars += len(block[first].text) + 1
            if chars > rules.max_line_chars * rules.max_lines and first < end - 1:
                break
            if best[first] == _IMPOSSIBLE:
                continue
            cost = _cue_cost(block, first, end, chars, rules)
            if cost == _IMPOSSIBLE:
                if block[end - 1].end - block[first].start > rules.max_cue_seconds:
                    break  # longer cues (earlier firsts) are longer still
                continue
            if best[first] + cost < best[end]:
                best[end] = best[first] + cost
                back[end] = first
        if best[end] == _IMPOSSIBLE:  # one word alone that fits nowhere: take it anyway
            best[end], back[end] = best[end - 1] + 10.0, end - 1
    ranges: list[tuple[int, int]] = []
    end = n
    while end > 0:
        ranges.append((back[end], end))
        end = back[end]
    return ranges[::-1]


def _cue_cost(
    block: Sequence[TimedWord], first: int, end: int, chars: int, rules: SubtitleRules
) -> float:
    duration = block[end - 1].end - block[first].start
    if end - first > 1 and duration > rules.max_cue_seconds:
        return _IMPOSSIBLE
    fitted = break_lines([w.text for w in block[first:end]], rules)
    if fitted is None:
        return _IMPOSSIBLE if end - first > 1 else 10.0
    cost = 1.0 + fitted[1]
    if end < len(block):
        gap = block[end].start - block[end - 1].end
        cost += _break_penalty(block[end - 1].text, block[end].text) * (0.3 if gap > 0.25 else 1.0)
    # time the cue may take: the speech, or more if there is silence after it
    room = (block[end].start if end < len(block) else block[end - 1].end + 2.0) - block[first].start
    shown = min(max(duration, rules.min_cue_seconds), rules.max_cue_seconds, max(room, duration))
    if shown < rules.min_cue_seconds:
        cost += 2.0 * (rules.min_cue_seconds - shown)
    reading = chars / max(shown, 0.01)
    if reading > rules.max_chars_per_second:
        cost += 0.5 * (reading - rules.max_chars_per_second)
    return cost


def make_cues(segments: Iterable[Segment], rules: SubtitleRules | None = None) -> list[Cue]:
    """Subtitle cues for merged segments (recording times), in order, never overlapping."""
    rules = rules or SubtitleRules()
    words = timed_words(segments)
    cues: list[Cue] = []
    for block in _blocks(words, rules):
        for first, end in _divide(block, rules):
            part = block[first:end]
            tokens = [w.text for w in part]
            fitted = break_lines(tokens, rules)
            lines = fitted[0] if fitted is not None else tuple(_hard_wrap(" ".join(tokens), rules))
            start, stop = part[0].start, part[-1].end
            cues.append(
                Cue(
                    start=start,
                    end=stop,
                    lines=lines,
                    speaker=part[0].speaker,
                    speech_seconds=stop - start,
                )
            )
    return _timed(cues, rules)


def _timed(cues: list[Cue], rules: SubtitleRules) -> list[Cue]:
    """Stretch short or fast cues into the silence after them, never into the next cue; mark
    each speaker's first cue."""
    timed: list[Cue] = []
    previous_speaker: str | None = None
    for i, cue in enumerate(cues):
        limit = cues[i + 1].start - rules.min_gap_seconds if i + 1 < len(cues) else cue.end + 2.0
        wanted = max(
            rules.min_cue_seconds, len(cue.text) / rules.max_chars_per_second, cue.end - cue.start
        )
        end = min(cue.start + wanted, cue.start + rules.max_cue_seconds, max(limit, cue.end))
        if i + 1 < len(cues):
            end = min(end, cues[i + 1].start)
        start = cue.start
        if timed and start < timed[-1].end:  # word times that overlap (engine jitter)
            start = timed[-1].end
        end = max(end, start + 0.001)
        timed.append(
            Cue(
                start=start,
                end=end,
                lines=cue.lines,
                speaker=cue.speaker,
                new_speaker=cue.speaker is not None and cue.speaker != previous_speaker,
                speech_seconds=cue.speech_seconds,
            )
        )
        previous_speaker = cue.speaker
    return timed


# ---------------------------------------------------------------- checking the rules


def cue_problems(cues: Sequence[Cue], rules: SubtitleRules | None = None) -> list[list[str]]:
    """For each cue, the rules it breaks (an empty list: all kept). Minimum duration and reading
    speed count only where the speech left room: the cue could have been stretched and was not."""
    rules = rules or SubtitleRules()
    problems: list[list[str]] = []
    for i, cue in enumerate(cues):
        found: list[str] = []
        duration = cue.end - cue.start
        room = (cues[i + 1].start - cue.start) if i + 1 < len(cues) else float("inf")
        if not cue.text.strip():
            found.append("empty")
        if len(cue.lines) > rules.max_lines:
            found.append("lines")
        if any(len(line) > rules.max_line_chars for line in cue.lines):
            found.append("line_chars")
        if duration > rules.max_cue_seconds + 1e-6:
            found.append("too_long")
        if duration <= 0 or (i + 1 < len(cues) and cue.end > cues[i + 1].start + 1e-6):
            found.append("overlap")
        if (
            duration < rules.min_cue_seconds - 1e-3
            and room > duration + rules.min_gap_seconds + 0.01
        ):
            found.append("too_short")
        allowed = min(room, rules.max_cue_seconds)
        if (
            len(cue.text) / max(duration, 1e-3) > rules.max_chars_per_second + 1e-6
            and allowed > duration + rules.min_gap_seconds + 0.01
        ):
            found.append("reading_speed")
        problems.append(found)
    return problems
