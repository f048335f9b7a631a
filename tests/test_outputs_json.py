"""The .json transcript is written a segment at a time, yet byte for byte the document
json.dumps(indent=2) makes of it whole, and its memory does not grow with the transcript."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from transcribed.engines.base import Segment, Word
from transcribed.outputs import render_json, write_outputs


def whole(segments: list[Segment], metadata: dict[str, Any]) -> str:
    """What the writer made before it streamed: the document built whole, then dumped."""
    document = {**metadata, "text": " ".join(s.text for s in segments), "segments": [s.as_dict() for s in segments]}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def spoken(count: int, *, speakers: bool = False) -> list[Segment]:
    segments = []
    for n in range(count):
        words = tuple(Word(start=n * 3 + k * 0.5, end=n * 3 + k * 0.5 + 0.4, text=f"wörd{k}\"\\", speaker="Chair" if speakers else None) for k in range(4))
        segments.append(Segment(start=words[0].start, end=words[-1].end, text=" ".join(w.text for w in words), words=words, speaker="Chair" if speakers else None))
    return segments


@pytest.mark.parametrize(
    ("segments", "metadata"),
    [
        (spoken(3), {"source": "hearing.mp3", "engine": "openai", "audio_seconds": 12.5, "warnings": []}),
        (spoken(5, speakers=True), {"source": "Ratssitzung – März.flac", "warnings": ["a line\nwith a newline", "ünïcode ✓"], "speakers": [{"name": "Chair", "seconds": 12.0}, {"name": "Speaker 2", "seconds": 0.5}], "nested": {"a": [1, {"b": None}], "empty": {}}}),
        ([], {"source": "silent.wav", "warnings": ["no speech"]}),
        ([Segment(start=0.0, end=1.0, text="no word times")], {}),
        (spoken(2), {"text": "a metadata key the text replaces, in its place", "source": "x"}),
    ],
)
def test_the_streamed_document_is_the_whole_one_byte_for_byte(segments: list[Segment], metadata: dict[str, Any]) -> None:
    assert "".join(render_json(segments, metadata)) == whole(segments, metadata)


def test_writing_ten_hours_holds_no_more_than_writing_two(tmp_path: Path) -> None:
    """The writer's own allocations at their peak stay the same size however long the
    transcript (it held the whole document twice before: as dicts and as one string)."""

    def peak(count: int) -> int:
        segments = spoken(count)
        tracemalloc.start()
        try:
            write_outputs(tmp_path, f"t{count}", segments, {"source": "x"}, formats=("json",))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short, long = peak(2_000), peak(10_000)
    assert json.loads((tmp_path / "t10000.json").read_text())["segments"][-1]["text"] == spoken(10_000)[-1].text
    # only the joined "text" grows (a few bytes a word): not the segments' dicts and dumps
    assert long - short < 2 * 1024 * 1024, (short, long)
