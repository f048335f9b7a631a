"""Subtitle cues, readable paragraphs, speaker labels and the merge's text tidying."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from transcribed.engines.base import Segment, Word
from transcribed.merge import merge_pieces, tidy_punctuation
from transcribed.outputs import NO_SPEECH_WARNING, render_srt, render_txt, render_vtt, write_outputs
from transcribed.planning import SAMPLE_RATE, PieceSpan
from transcribed.subtitles import SubtitleRules, break_lines, cue_problems, make_cues

PROSE = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the "
    "season of Light, it was the season of Darkness. It was the spring of hope, it was the winter "
    "of despair, we had everything before us, we had nothing before us. We were all going direct "
    "to Heaven, we were all going direct the other way. In short, the period was so far like the "
    "present period, that some of its noisiest authorities insisted on its being received, for "
    "good or for evil, in the superlative degree of comparison only."
)


def whole_piece_segments(seed: int) -> list[Segment]:
    """Segments the size of a text-only model's pieces (~30 s of text each) with pauses."""
    rng = random.Random(seed)
    words = PROSE.split() * 6
    segments, at, i = [], 0.0, 0
    while i < len(words):
        count = rng.randint(40, 90)
        text = " ".join(words[i : i + count])
        seconds = count / rng.uniform(2.2, 3.2)
        segments.append(Segment(start=at, end=at + seconds, text=text))
        at += seconds + rng.uniform(0.2, 2.5)
        i += count
    return segments


def test_long_segments_become_cues_within_every_rule() -> None:
    """Whole ~30 s pieces of text become cues of ≤2 lines of ≤42 characters, ≤7 s, ≥1 s where
    there is room, no overlap, and no word lost or repeated."""
    for seed in range(5):
        segments = whole_piece_segments(seed)
        cues = make_cues(segments)
        assert all(problems == [] for problems in cue_problems(cues)), seed
        assert " ".join(c.text for c in cues).split() == " ".join(s.text for s in segments).split()
        assert all(a.end <= b.start for a, b in itertools.pairwise(cues))


def test_lines_break_at_punctuation_rather_than_mid_phrase() -> None:
    """Given a comma that allows two fitting lines, the break goes after it."""
    tokens = "We had everything before us, we had nothing before us".split()
    lines, _ = break_lines(tokens, SubtitleRules()) or ((), 0)
    assert lines == ("We had everything before us,", "we had nothing before us")


def test_a_cue_never_spans_a_long_pause_and_short_speech_stays_short() -> None:
    """A pause of over a second ends a cue; a 0.3 s word followed at once by more speech keeps
    its short cue instead of overlapping the next one."""
    segments = [
        Segment(start=0.0, end=0.3, text="Yes."),
        Segment(start=0.35, end=2.0, text="The motion carries."),
        Segment(start=5.0, end=6.0, text="Next item."),
    ]
    cues = make_cues(segments)
    assert [c.text for c in cues][-1] == "Next item."
    assert cues[-2].end <= 5.0
    assert all(problems == [] for problems in cue_problems(cues))


def test_word_times_place_cues_where_the_words_are() -> None:
    """With the engine's word times, a cue starts at its first word's time, not at an even
    spread over the segment."""
    words = tuple(
        Word(start=t, end=t + 0.3, text=w)
        for t, w in [(0.0, "One."), (6.0, "Two"), (6.4, "three"), (6.8, "four.")]
    )
    segment = Segment(start=0.0, end=7.1, text="One. Two three four.", words=words)
    cues = make_cues([segment])
    assert [(c.text, round(c.start, 2)) for c in cues] == [("One.", 0.0), ("Two three four.", 6.0)]


def test_speakers_are_rendered_in_vtt_srt_and_txt() -> None:
    """vtt carries <v Name> spans, srt names the speaker on the first cue of each turn, txt
    opens each turn's paragraph with the name, and a change of speaker starts a new cue."""
    segments = [
        Segment(start=0.0, end=2.0, text="The meeting is open.", speaker="Chair"),
        Segment(start=2.1, end=4.0, text="Thank you.", speaker="Chair"),
        Segment(start=4.1, end=6.0, text="I object.", speaker="Member 2"),
    ]
    cues = make_cues(segments)
    srt, vtt, txt = render_srt(cues), render_vtt(cues), render_txt(segments)
    assert "Chair: The meeting is open. Thank you." in srt
    assert srt.count("Chair:") == 1 and "Member 2: I object." in srt
    assert "<v Chair>The meeting is open. Thank you.</v>" in vtt
    assert "<v Member 2>I object.</v>" in vtt
    assert txt == "[00:00:00] Chair: The meeting is open. Thank you.\n\n[00:00:04] Member 2: I object.\n"


def test_paragraphs_break_after_eighty_words_at_a_sentence_end() -> None:
    """Continuous speech is cut into paragraphs of ~80 words, each ending a sentence."""
    segments = [Segment(start=0.0, end=200.0, text=" ".join(PROSE.split() * 3))]
    blocks = render_txt(segments).strip().split("\n\n")
    assert len(blocks) >= 3
    for block in blocks[:-1]:
        assert block.startswith("[00:") and block.endswith((".", "?", "!"))
        assert len(block.split()) >= 80


def test_merge_tidies_doubled_punctuation_and_continuation_capitals() -> None:
    """`Differs,, from most,,` loses its doubled commas, and a line continuing a sentence starts
    in lower case when the word is written so elsewhere; names keep their capital."""
    assert tidy_punctuation("Differs,, from most ,, all... the end..") == "Differs, from most, all... the end."
    span = PieceSpan(index=0, start=0, end=60 * SAMPLE_RATE, keep_start=0, keep_end=60 * SAMPLE_RATE)
    merged = merge_pieces(
        [
            (
                span,
                [
                    Segment(start=0, end=2, text="Differs,, from most,,"),
                    Segment(start=2, end=4, text="And the council agreed"),
                    Segment(start=4, end=6, text="Smith said, and then"),
                    Segment(start=6, end=8, text="Smith left."),
                ],
            )
        ]
    )
    assert [s.text for s in merged] == [
        "Differs, from most,",
        "and the council agreed",
        "Smith said, and then",
        "Smith left.",
    ]


def test_a_transcript_without_speech_says_so(tmp_path: Path) -> None:
    """A recording with no speech still gets its files, and the json warns about it."""
    write_outputs(tmp_path, "silent", [], {"source": "silent.mp3", "warnings": []})
    document = json.loads((tmp_path / "silent.json").read_text())
    assert document["warnings"] == [NO_SPEECH_WARNING]
    assert (tmp_path / "silent.srt").read_text() == ""


def test_json_keeps_full_segments_with_words_and_speaker(tmp_path: Path) -> None:
    """The json holds each segment whole, with its word times and speaker."""
    segment = Segment(
        start=0.0, end=1.0, text="Hello there.", speaker="A",
        words=(Word(start=0.0, end=0.4, text="Hello"), Word(start=0.5, end=1.0, text="there.")),
    )  # fmt: skip
    write_outputs(tmp_path, "one", [segment], {"warnings": []})
    document = json.loads((tmp_path / "one.json").read_text())
    assert document["segments"] == [
        {
            "start": 0.0, "end": 1.0, "text": "Hello there.", "speaker": "A",
            "words": [{"start": 0.0, "end": 0.4, "text": "Hello"}, {"start": 0.5, "end": 1.0, "text": "there."}],
        }
    ]  # fmt: skip
    assert document["warnings"] == []
