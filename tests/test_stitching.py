"""Pieces stitched into one request, and the answer split back per piece: each piece gets the
segments of its own stretch of the upload, in its own time, and its share of the cost."""

from __future__ import annotations

import numpy as np
from transcribed.engines.base import PieceResult, Segment, Word
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


def test_a_segment_without_words_goes_whole_to_the_piece_holding_its_middle_clipped_to_it() -> None:
    result = PieceResult(segments=[Segment(start=7.0, end=14.0, text=" Across the seam.")])
    first, second = split_result(result, [10.0, 10.0])
    assert [(s.start, s.end) for s in second.segments] == [(0.0, 4.0)]
    assert first.segments == []
    # a lone piece's result is its own
    alone = PieceResult(segments=[Segment(start=0.5, end=2.0, text=" x")], cost=0.01)
    assert split_result(alone, [5.0]) == [alone]


def test_the_upload_is_the_pieces_end_to_end() -> None:
    a, b = np.arange(5, dtype=np.int16), np.arange(5, 8, dtype=np.int16)
    assert stitched([a, b]).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert stitched([a]) is a
