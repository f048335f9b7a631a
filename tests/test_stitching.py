"""Pieces stitched into one request, and the answer split back per piece: each piece gets the
segments of its own stretch of the upload, in its own time, and its share of the cost."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing
from conftest import FakeEngine, SyntheticDecoder, make_config, no_events, progress, running, synthetic_recording
from transcribed.engines.base import PieceResult, Segment, Word
from transcribed.engines.openai import parse_answer
from transcribed.merge import merge_pieces
from transcribed.planning import SAMPLE_RATE, PieceLimits, PieceSpan
from transcribed.stitching import split_result, stitched


def test_each_piece_gets_the_segments_of_its_stretch_in_its_own_time() -> None:
    result = PieceResult(
        segments=[
            Segment(start=1.0, end=4.0, text=" The first piece."),
            Segment(start=11.0, end=13.5, text=" The second one."),
        ],
        cost=0.003,
        possibly_billed_cost=0.0015,
    )
    first, second = split_result(result, [10.0, 20.0])
    assert [(s.start, s.end, s.text) for s in first.segments] == [(1.0, 4.0, " The first piece.")]
    assert [(s.start, s.end, s.text) for s in second.segments] == [(1.0, 3.5, " The second one.")]
    assert np.isclose(first.cost, 0.001) and np.isclose(second.cost, 0.002)
    assert np.isclose(first.possibly_billed_cost + second.possibly_billed_cost, 0.0015)


def test_a_segment_across_a_seam_is_split_by_its_words_and_keeps_its_punctuation() -> None:
    words = (
        Word(start=8.0, end=8.5, text="end"),
        Word(start=8.6, end=9.2, text="here"),
        Word(start=10.6, end=11.0, text="and"),
        Word(start=11.1, end=11.8, text="again"),
    )
    result = PieceResult(segments=[Segment(start=8.0, end=11.8, text=" End here. And again,", words=words)])
    first, second = split_result(result, [10.0, 5.0])
    assert [(s.start, s.end, s.text) for s in first.segments] == [(8.0, 9.2, " End here.")]
    (later,) = second.segments
    assert (later.text, round(later.start, 3), round(later.end, 3)) == (" And again,", 0.6, 1.8)
    assert [(w.text, round(w.start, 3)) for w in later.words] == [("and", 0.6), ("again", 1.1)]


def test_a_segment_without_words_is_shared_by_the_pieces_it_runs_across() -> None:
    """whisper-1 without word times: the part of the segment's time each piece holds, with that
    share of its text cut between words; merged, the line starts where its speech starts,
    before the silence the upload left out, and ends after it."""
    result = PieceResult(segments=[Segment(start=7.0, end=14.0, text=" Across the seam.")])
    first, second = split_result(result, [10.0, 10.0])
    assert [(s.start, s.end, s.text) for s in first.segments] == [(7.0, 10.0, " Across")]
    assert [(s.start, s.end, s.text) for s in second.segments] == [(0.0, 4.0, " the seam.")]
    # piece A is the source's 0-20 s, a 14 s silence, piece B its 34-54 s
    a = PieceSpan(index=0, start=0, end=20 * SAMPLE_RATE, keep_start=0, keep_end=20 * SAMPLE_RATE)
    b = PieceSpan(index=2, start=34 * SAMPLE_RATE, end=54 * SAMPLE_RATE, keep_start=34 * SAMPLE_RATE, keep_end=54 * SAMPLE_RATE)
    line = Segment(start=17.0, end=25.0, text=" Said before the pause. Said after it.")
    pa, pb = split_result(PieceResult(segments=[line]), [a.seconds, b.seconds])
    merged = merge_pieces([(a, pa.segments), (b, pb.segments)])
    assert [(s.start, s.end) for s in merged] == [(17.0, 20.0), (34.0, 39.0)]
    assert " ".join(s.text.strip() for s in merged) == "Said before the pause. Said after it."
    # a lone piece's result is its own
    alone = PieceResult(segments=[Segment(start=0.5, end=2.0, text=" x")], cost=0.01)
    assert split_result(alone, [5.0]) == [alone]


def test_a_seam_keeps_every_character_of_the_text_where_words_and_tokens_differ() -> None:
    """A whisper-1 answer whose last word starts at its segment's end (so the segment's word
    list leaves it out) and whose text has a dash no word matches; and Japanese text, one token
    for many words: split at the seam, the text is the text, nothing dropped or added."""
    body = json.dumps(
        {
            "text": "End here - and again.",
            "segments": [{"start": 8.0, "end": 11.5, "text": " End here - and again."}],
            "words": [
                {"word": "End", "start": 8.0, "end": 8.5},
                {"word": "here", "start": 8.6, "end": 9.2},
                {"word": "and", "start": 10.6, "end": 11.0},
                {"word": "again", "start": 11.5, "end": 11.9},
            ],
        }
    ).encode()
    segments = parse_answer(body, timestamps=True, seconds=15.0)
    first, second = split_result(PieceResult(segments=segments), [10.0, 5.0])
    assert [s.text for s in first.segments] == ["End here -"]
    assert [(s.text, [w.text for w in s.words]) for s in second.segments] == [("and again.", ["and"])]
    words = tuple(Word(start=8.0 + 0.5 * i, end=8.4 + 0.5 * i, text=c) for i, c in enumerate(["今日", "は", "雨", "です"]))
    first, second = split_result(PieceResult(segments=[Segment(start=8.0, end=10.0, text="今日は雨です", words=words)]), [9.2, 5.0])
    assert ([s.text for s in first.segments], [s.text for s in second.segments]) == (["今日は"], ["雨です"])
    words = tuple(Word(start=8.0 + 0.5 * i, end=8.4 + 0.5 * i, text=w) for i, w in enumerate(["Die", "Straße", "ist", "nass"]))
    first, second = split_result(PieceResult(segments=[Segment(start=8.0, end=10.0, text=" Die Straße ist nass.", words=words)]), [9.2, 5.0])
    assert ([s.text for s in first.segments], [s.text for s in second.segments]) == ([" Die Straße"], [" ist nass."])


def test_the_upload_is_the_pieces_end_to_end() -> None:
    a, b = np.arange(5, dtype=np.int16), np.arange(5, 8, dtype=np.int16)
    assert stitched([a, b]).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert stitched([a]) is a


class GappedDecoder(SyntheticDecoder):
    """The synthetic recording with 14 s of digital silence after every 6 s, in 4000-sample
    blocks: every speech stretch is stitched to the next across a silence."""

    @asynccontextmanager
    async def open_pcm(self, path: Path, *, audio_track: int = 0) -> AsyncIterator[AsyncIterator[np.ndarray]]:
        seconds = self._seconds(path)
        self.opened += 1
        rng = np.random.default_rng(11)
        t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        audio = rng.normal(0, 20, len(t)) + (np.floor(t) % 4 != 3) * rng.normal(0, 3000, len(t))
        audio[t % 20 >= 6] = 0
        pcm = np.clip(audio, -32768, 32767).astype(np.int16)

        async def blocks() -> AsyncIterator[np.ndarray]:
            for start in range(0, len(pcm), 4000):
                await trio.lowlevel.checkpoint()
                yield pcm[start : start + 4000]

        yield blocks()


async def _transcribe(root: Path, engine: FakeEngine, *, stop_after: int | None = None) -> dict:
    config = make_config(root, **{"openai.max_cost_per_file": 100, "settle_interval": 0})
    async with running(config, engine, decoder=GappedDecoder(), watcher=no_events) as shutdown:
        with trio.fail_after(3600):
            while (state := _state(root)).get("state") not in ("done", "failed"):
                if stop_after is not None and state.get("pieces", {}).get("done", 0) >= stop_after:
                    shutdown.set()
                    break
                await trio.sleep(0.5)
    return _state(root)


def _state(root: Path) -> dict:
    try:
        return progress(root, "hearing")
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet
        return {}


def _engine() -> FakeEngine:
    engine = FakeEngine(capacity=2, limits=PieceLimits(target_seconds=20, max_seconds=30), price_per_minute=1.0)
    engine.delay = 5
    return engine


async def test_a_job_drained_between_stitched_requests_resumes_with_the_same_requests(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """Silent pieces are journaled as they are cut, inside a group still being gathered; on a
    restart they leave the group open as they did, so the two runs together send the requests
    of one uninterrupted run, the same audio, for the same transcript and cost."""
    clean_root, root = tmp_path / "clean", tmp_path / "drained"
    for folder in (clean_root, root):
        synthetic_recording(folder / "inbox" / "hearing.mp3", 400)
    clean = _engine()
    assert (await _transcribe(clean_root, clean))["state"] == "done"
    first, second = _engine(), _engine()
    assert (await _transcribe(root, first, stop_after=10))["state"] != "done"
    resumed = await _transcribe(root, second)
    assert resumed["state"] == "done" and first.calls > 0 and second.calls > 0
    # a segment per piece with sound, fewer requests than that: pieces were stitched
    assert clean.calls < len(json.loads((clean_root / "outbox" / "hearing.json").read_text())["segments"])
    assert first.calls + second.calls == clean.calls
    assert first.seconds_sent + second.seconds_sent == pytest.approx(clean.seconds_sent)
    assert resumed["cost"]["spent"] == pytest.approx(_state(clean_root)["cost"]["spent"])
    assert (root / "outbox" / "hearing.json").read_text() == (clean_root / "outbox" / "hearing.json").read_text()
