"""Planning and cutting: cuts land in pauses judged against the noise floor, pieces tile the
recording exactly, and the plan does not depend on how the decoder happened to chunk its output;
pieces shrink toward a claimed end (and a lying claim only costs balance); silence (muted,
room tone, before or after speech) is never sent, and quiet speech always is."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import speech_corpus
from transcribed.cutting import PieceCutter
from transcribed.journal import JobRecord, Journal
from transcribed.planning import (
    FRAMES_PER_SECOND,
    PLAN_RULES,
    SAMPLE_RATE,
    NoiseFloor,
    PieceLimits,
    PiecePlanner,
    frame_loudness,
)

LIMITS = PieceLimits(target_seconds=30, max_seconds=45, overlap_seconds=1.0)


def loudness_track(layout: list[tuple[float, float]], *, floor_db: float = -50.0, speech_db: float = -20.0) -> np.ndarray:
    """Frame loudness for alternating (speech seconds, pause seconds) pairs, with some jitter."""
    rng = np.random.default_rng(7)
    parts = []
    for speech, pause in layout:
        parts.append(speech_db + rng.normal(0, 3, round(speech * FRAMES_PER_SECOND)))
        parts.append(floor_db + rng.normal(0, 1, round(pause * FRAMES_PER_SECOND)))
    return np.concatenate(parts).astype(np.float32)


def plan(loudness: np.ndarray, limits: PieceLimits = LIMITS, block: int = 50) -> list:
    planner = PiecePlanner(limits)
    cuts = []
    for i in range(0, len(loudness), block):
        cuts += planner.feed(loudness[i : i + block])
    return cuts


def test_cuts_fall_inside_pauses_and_pieces_stay_within_limits() -> None:
    """With regular pauses every ~8 s, every cut is in a pause and every piece is 15-45 s."""
    layout = [(7.5, 0.6)] * 60
    loudness = loudness_track(layout)
    cuts = plan(loudness)
    assert cuts, "a 8-minute track must be cut"
    pause_frames = loudness < -40
    for cut in cuts:
        assert cut.in_pause
        assert pause_frames[cut.frame], f"cut at frame {cut.frame} is not in a pause"
    bounds = [0] + [c.frame for c in cuts]
    lengths = np.diff(bounds) / FRAMES_PER_SECOND
    assert lengths.min() >= LIMITS.min_seconds and lengths.max() <= LIMITS.max_seconds


def test_the_longest_pause_in_the_window_wins() -> None:
    """A 2 s pause at 25 s is chosen over short 0.4 s pauses nearer the target."""
    layout = [(12.0, 0.4), (12.6, 2.0), (3.0, 0.4), (10.0, 0.4), (30.0, 0.4)]
    loudness = loudness_track(layout)
    first = plan(loudness)[0]
    assert 25.0 <= first.frame / FRAMES_PER_SECOND <= 27.0


def test_pauses_are_judged_against_the_noise_floor_not_a_fixed_level() -> None:
    """In a humming room (floor -32 dB, speech -15 dB) pauses are still found."""
    layout = [(9.0, 0.8)] * 30
    loudness = loudness_track(layout, floor_db=-32.0, speech_db=-15.0)
    cuts = plan(loudness)
    assert cuts and all(c.in_pause for c in cuts)
    floor = NoiseFloor()
    floor.add(loudness)
    assert -34 < floor.percentile(0.05) < -30


def test_speech_without_pauses_is_cut_at_the_quietest_moment_with_overlap() -> None:
    """Ninety seconds of unbroken speech gets forced cuts, and the pieces overlap around them."""
    rng = np.random.default_rng(1)
    loudness = (-20 + rng.normal(0, 2, 90 * FRAMES_PER_SECOND)).astype(np.float32)
    quiet_at = 35 * FRAMES_PER_SECOND
    loudness[quiet_at : quiet_at + 5] = -28  # a dip, but not a pause
    cuts = plan(loudness)
    assert cuts[0].in_pause is False
    assert abs(cuts[0].frame - (quiet_at + 2)) <= 5
    # the cutter overlaps the neighbours of a forced cut on the real samples
    rng = np.random.default_rng(5)
    speech = np.clip(rng.normal(0, 3000, 90 * SAMPLE_RATE), -32768, 32767).astype(np.int16)
    pieces = cut_all(speech, [SAMPLE_RATE])
    first, second = pieces[0].span, pieces[1].span
    assert first.end - first.keep_end == SAMPLE_RATE * LIMITS.overlap_seconds
    assert second.keep_start - second.start == SAMPLE_RATE * LIMITS.overlap_seconds
    assert second.keep_start == first.keep_end


def test_frame_loudness_measures_dbfs() -> None:
    """A full-scale square wave is 0 dBFS and digital silence is the floor."""
    square = np.tile(np.array([32767, -32767] * 160, dtype=np.int16), 3)
    assert np.allclose(frame_loudness(square), 0.0, atol=0.01)
    assert frame_loudness(np.zeros(640, dtype=np.int16)).max() == -100.0


def synthetic_audio(seconds: float, seed: int = 3) -> np.ndarray:
    """Noise bursts (speech-like loudness) separated by quiet gaps over a faint noise floor."""
    rng = np.random.default_rng(seed)
    audio = rng.normal(0, 30, round(seconds * SAMPLE_RATE))
    position = 0
    while position < len(audio):
        burst = int(rng.uniform(2, 9) * SAMPLE_RATE)
        audio[position : position + burst] += rng.normal(0, 3000, len(audio[position : position + burst]))
        position += burst + int(rng.uniform(0.3, 1.5) * SAMPLE_RATE)
    return np.clip(audio, -32768, 32767).astype(np.int16)


def cut_all(audio: np.ndarray, block_sizes: list[int]) -> list:
    cutter = PieceCutter(LIMITS)
    pieces, position, i = [], 0, 0
    while position < len(audio):
        size = block_sizes[i % len(block_sizes)]
        pieces += cutter.feed(audio[position : position + size])
        position += size
        i += 1
    return pieces + cutter.finish()


@pytest.mark.parametrize("block_sizes", [[65536], [1, 999, 32000, 7], [320 * 50]])
def test_pieces_tile_the_audio_exactly_whatever_the_decoder_block_size(block_sizes: list[int]) -> None:
    """Kept regions cover every sample once, each piece's samples are the source's, and the plan
    is the same for every way of chunking the stream (so a resumed job re-plans identically)."""
    audio = synthetic_audio(200)
    pieces = cut_all(audio, block_sizes)
    reference = cut_all(audio, [65536])
    assert [p.span for p in pieces] == [p.span for p in reference]
    assert pieces[0].span.keep_start == 0 and pieces[-1].span.keep_end == len(audio)
    for before, after in zip(pieces, pieces[1:], strict=False):
        assert before.span.keep_end == after.span.keep_start
    for piece in pieces:
        assert np.array_equal(piece.audio, audio[piece.span.start : piece.span.end])
        assert piece.span.end - piece.span.start <= (LIMITS.max_seconds + 2 * LIMITS.overlap_seconds) * SAMPLE_RATE


def test_silent_pieces_are_marked_and_speech_pieces_are_not() -> None:
    """A minute of room tone between speech is flagged silent, so no engine time is spent on it."""
    rng = np.random.default_rng(5)
    speech = synthetic_audio(40, seed=9)
    tone = rng.normal(0, 30, 100 * SAMPLE_RATE).astype(np.int16)
    pieces = cut_all(np.concatenate([speech, tone, speech]), [48000])
    silent = [p for p in pieces if p.silent]
    assert silent, "the room tone must give at least one silent piece"
    for piece in silent:
        assert piece.span.start >= 40 * SAMPLE_RATE - SAMPLE_RATE and piece.span.end <= 141 * SAMPLE_RATE
    assert not pieces[0].silent and not pieces[-1].silent


# ---------------------------------------------------------------- the schedule

WHISPER = PieceLimits(target_seconds=120, max_seconds=180)  # whisper-1's pieces (engines/models.py)


def speech_loudness(seconds: float, *, seed: int = 7) -> np.ndarray:
    """Speech-like loudness: 4-12 s of speech, then a 0.4-2 s pause, over and over."""
    rng = np.random.default_rng(seed)
    layout = []
    total = 0.0
    while total < seconds:
        layout.append((float(rng.uniform(4, 12)), float(rng.uniform(0.4, 2.0))))
        total += sum(layout[-1])
    return loudness_track(layout)[: round(seconds * FRAMES_PER_SECOND)]


def lengths_of(cuts: list, frames: int) -> np.ndarray:
    return np.diff([0, *[c.frame for c in cuts], frames]) / FRAMES_PER_SECOND


def test_pieces_shrink_toward_the_claimed_end_and_stay_within_the_limits() -> None:
    """Aimed at an hour on 16 slots, the first piece is short (a quick start), the next are the
    engine's long ones and the last round is short (about the 20 s floor), every cut in a
    pause, no piece over the maximum."""
    loudness = speech_loudness(3600)
    limits = WHISPER.scheduled(total_seconds=3600, parallelism=16)
    cuts = plan(loudness, limits)
    lengths = lengths_of(cuts, len(loudness))
    assert all(c.in_pause for c in cuts)
    assert lengths.max() <= WHISPER.max_seconds
    assert lengths[0] <= 1.5 * limits.min_target_seconds  # a quick start: the first request goes out at once
    assert lengths[1:9].min() >= WHISPER.target_seconds / 2 and lengths[1:9].mean() >= 100
    assert lengths[-16:-1].max() <= 1.5 * limits.min_target_seconds
    assert lengths[:-1].min() >= limits.min_target_seconds / 2
    # the fixed plan (no claim) ends as it began
    fixed = lengths_of(plan(loudness, WHISPER), len(loudness))
    assert fixed[-16:-1].min() >= WHISPER.target_seconds / 2


def test_without_a_usable_claim_every_piece_aims_at_the_target() -> None:
    """No claim, a zero, infinite or NaN one: the plan is the fixed one, piece for piece."""
    loudness = speech_loudness(900)
    fixed = plan(loudness, WHISPER)
    for claim in (None, 0.0, -5.0, float("inf"), float("nan")):
        limits = WHISPER.scheduled(total_seconds=claim, parallelism=16)
        assert limits.total_seconds is None
        assert plan(loudness, limits) == fixed


@pytest.mark.parametrize(("audio_seconds", "claimed_seconds"), [(3 * 1200, 1200), (1200, 3 * 1200)])
def test_a_claim_that_lies_costs_balance_never_a_piece(audio_seconds: float, claimed_seconds: float) -> None:
    """A header that says a third of the length, or three times it: every cut is still in a
    pause, no piece is over the maximum or under half the floor, and past a short claim the
    pieces grow back instead of staying at the floor."""
    loudness = speech_loudness(audio_seconds, seed=3)
    limits = WHISPER.scheduled(total_seconds=claimed_seconds, parallelism=16)
    cuts = plan(loudness, limits)
    lengths = lengths_of(cuts, len(loudness))
    assert all(c.in_pause for c in cuts)
    assert lengths.max() <= WHISPER.max_seconds
    assert lengths[:-1].min() >= limits.min_target_seconds / 2
    if audio_seconds > claimed_seconds:
        starts = np.array([0, *[c.frame for c in cuts]]) / FRAMES_PER_SECOND
        near_claim = lengths[np.abs(starts - claimed_seconds) < 120]
        well_past = lengths[(starts > 2.5 * claimed_seconds) & (starts < audio_seconds - 300)]
        assert near_claim.max() <= 1.5 * limits.min_target_seconds
        assert well_past.mean() >= 60


def test_limits_round_trip_through_the_journal_record() -> None:
    """as_dict/from_dict keep every planning value; a record from before the schedule (no
    plan_rules) comes back as the first rules, with no schedule."""
    limits = WHISPER.scheduled(total_seconds=7200.5, parallelism=16)
    assert PieceLimits.from_dict(limits.as_dict()) == limits
    assert PieceLimits.from_dict(WHISPER.as_dict()) == WHISPER
    old = PieceLimits.from_dict({"target_seconds": 30.0, "max_seconds": 45.0, "overlap_seconds": 1.0, "min_pause_seconds": 0.3})
    assert old.plan_rules == 1 and old.total_seconds is None and old.parallelism == 1


def test_the_journal_keeps_the_claim_and_parallelism_of_the_first_planning(tmp_path: Path) -> None:
    """job.json records the claimed length and parallelism the plan aimed at; a resume plans
    with those even when the engine's capacity (or the claim) is different by then."""
    journal = Journal(tmp_path / "job")
    record = JobRecord(job_id="j", display_name="a.mp3", name_b64="", stem="a", source_file="source.mp3", claimed_at="now")
    first = WHISPER.scheduled(total_seconds=7200.0, parallelism=16)
    record, limits = journal.fix_limits(record, first)
    assert limits == first
    saved = json.loads((journal.folder / "job.json").read_text())["limits"]
    assert saved["total_seconds"] == 7200.0 and saved["parallelism"] == 16 and saved["plan_rules"] == PLAN_RULES
    _, resumed = journal.fix_limits(journal.load(), WHISPER.scheduled(total_seconds=None, parallelism=4))
    assert resumed == first


def test_a_job_journaled_by_the_first_rules_re_plans_to_its_own_cuts() -> None:
    """The first rules, kept for jobs journaled before the schedule and the silence rules,
    still give the cuts they gave (recorded from the code before them): after a muted opening
    the floor sat at -100 dB and every later cut was forced. The current rules cut in pauses."""
    muted = np.full(30 * FRAMES_PER_SECOND, -100.0, dtype=np.float32)
    loudness = np.concatenate([muted, loudness_track([(7.5, 0.6)] * 20 + [(5.0, 25.0)] + [(9.0, 0.8)] * 12)])
    first_rules = PieceLimits.from_dict({"target_seconds": 30.0, "max_seconds": 45.0})
    recorded = [(750, True), (2297, False), (4329, False), (6341, False), (8367, False), (10062, False), (12054, False), (14009, False), (15976, False)]
    assert [(c.frame, c.in_pause) for c in plan(loudness, first_rules)] == recorded
    assert all(c.in_pause for c in plan(loudness, LIMITS))


# ---------------------------------------------------------------- silence, on real samples


def room_tone(seconds: float, *, level_db: float = -55.0, colour: float = 1.0, seed: int = 1) -> np.ndarray:
    """Steady room noise: 1/f^colour noise above 20 Hz (white 0, pink 1, brown 2) at `level_db`
    dBFS RMS, and 50 Hz mains hum 5 dB under it."""
    rng = np.random.default_rng(seed)
    count = round(seconds * SAMPLE_RATE)
    frequencies = np.fft.rfftfreq(count, 1 / SAMPLE_RATE)
    shape = np.where(frequencies < 20, 0.0, 1 / np.maximum(frequencies, 1.0) ** (colour / 2))
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(count)) * shape, count)
    noise *= 10 ** (level_db / 20) * 32768 / np.sqrt(np.mean(noise**2))
    hum = 10 ** ((level_db - 5) / 20) * 32768 * np.sqrt(2) * np.sin(2 * np.pi * 50 * np.arange(count) / SAMPLE_RATE)
    return np.clip(noise + hum, -32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """A minute of espeak-ng speech over a -48 dBFS floor, and its words with their times."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (.ci/setup)")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    words = speech_corpus.build(path, 60.0, seed=5)
    with wave.open(str(path)) as reader:
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2").copy()
    return pcm, [(w.text, w.start, w.end) for w in words]


def cut_with(audio: np.ndarray, limits: PieceLimits, block: int = 65536) -> list:
    cutter = PieceCutter(limits)
    pieces = []
    for position in range(0, len(audio), block):
        pieces += cutter.feed(audio[position : position + block])
    return pieces + cutter.finish()


def sent(pieces: list) -> list:
    return [p for p in pieces if not p.silent]


def words_not_sent(pieces: list, words: list[tuple[str, float, float]], offset: int) -> list[str]:
    """The words whose middle lies in no sent piece's kept region (what the merge would lose)."""
    spans = [p.span for p in sent(pieces)]
    return [
        text
        for text, start, end in words
        if not any(s.keep_start <= offset + round((start + end) / 2 * SAMPLE_RATE) < s.keep_end for s in spans)
    ]


def scaled(audio: np.ndarray, gain_db: float) -> np.ndarray:
    return np.clip(audio * 10 ** (gain_db / 20), -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("limits", [LIMITS, WHISPER], ids=["30-45s", "120-180s"])
def test_digital_silence_is_never_sent_and_makes_few_pieces(limits: PieceLimits) -> None:
    """Ten minutes of zeros, or of ±2 LSB dither, send no piece (before this, every one was
    sent: the floor was the silence itself), in pieces as long as the window allows."""
    rng = np.random.default_rng(2)
    for audio in (np.zeros(600 * SAMPLE_RATE, dtype=np.int16), rng.integers(-2, 3, 600 * SAMPLE_RATE).astype(np.int16)):
        pieces = cut_with(audio, limits)
        assert sent(pieces) == []
        assert len(pieces) <= np.ceil(600 / limits.max_seconds) + 1


def test_digital_silence_after_speech_is_not_sent(speech: tuple[np.ndarray, list]) -> None:
    """Speech, five muted minutes, speech: the muted minutes are silent, every word is sent."""
    pcm, words = speech
    audio = np.concatenate([pcm, np.zeros(300 * SAMPLE_RATE, dtype=np.int16), pcm])
    pieces = cut_with(audio, LIMITS)
    assert all(p.span.end <= len(pcm) + SAMPLE_RATE or p.span.start >= len(pcm) + 299 * SAMPLE_RATE for p in sent(pieces))
    assert words_not_sent(pieces, words, 0) == [] and words_not_sent(pieces, words, len(pcm) + 300 * SAMPLE_RATE) == []


@pytest.mark.parametrize("opening", ["digital silence", "room tone"])
def test_a_recording_that_opens_with_five_minutes_of_silence_sends_only_its_speech(
    speech: tuple[np.ndarray, list], opening: str
) -> None:
    """Five silent minutes, then speech: no piece of the opening is sent (before this, all
    were), the first sent piece starts at most 2 s before the first word (the speech's own
    floor, louder than the opening's, starts 1.4 s before it), every word is sent."""
    pcm, words = speech
    lead = np.zeros(300 * SAMPLE_RATE, dtype=np.int16) if opening == "digital silence" else room_tone(300, level_db=-55)
    if opening == "room tone":
        pcm = np.clip(pcm + room_tone(len(pcm) / SAMPLE_RATE, level_db=-55, seed=2), -32768, 32767).astype(np.int16)
    for limits in (LIMITS, WHISPER):
        pieces = cut_with(np.concatenate([lead, pcm]), limits)
        first_word = 300 * SAMPLE_RATE + round(words[0][1] * SAMPLE_RATE)
        assert first_word - 2 * SAMPLE_RATE <= sent(pieces)[0].span.start <= first_word
        assert words_not_sent(pieces, words, len(lead)) == []


@pytest.mark.parametrize("colour", [0.0, 1.0, 2.0], ids=["white", "pink", "brown"])
def test_five_minutes_of_room_tone_send_nothing(colour: float) -> None:
    """Room noise at -55 dBFS with mains hum, before any speech has been heard, sends no piece
    (before this, every one was sent: the pause threshold sat under the noise)."""
    for limits in (LIMITS, WHISPER):
        assert sent(cut_with(room_tone(300, level_db=-55, colour=colour), limits)) == []


def test_loud_steady_noise_is_sent_rather_than_guessed_silent() -> None:
    """Steady sound above -45 dBFS is never judged silent by its steadiness alone: it may be
    speech buried in noise, and paying for it is better than losing it."""
    assert sent(cut_with(room_tone(120, level_db=-35), LIMITS))


@pytest.mark.parametrize("speech_db", [-40.0, -50.0])
def test_quiet_speech_is_sent_and_its_quiet_room_is_not(speech: tuple[np.ndarray, list], speech_db: float) -> None:
    """Three minutes of room tone at -65 dBFS, then speech at -40 (or -50) dBFS over it: the
    tone is skipped and every word is sent."""
    pcm, words = speech
    level = 20 * np.log10(np.sqrt(np.mean(pcm.astype(float) ** 2)) / 32768)
    quiet = scaled(pcm, speech_db - level).astype(float) + room_tone(len(pcm) / SAMPLE_RATE, level_db=-65, seed=3)
    audio = np.concatenate([room_tone(180, level_db=-65), np.clip(quiet, -32768, 32767).astype(np.int16)])
    for limits in (LIMITS, WHISPER):
        pieces = cut_with(audio, limits)
        assert all(p.span.end > 179 * SAMPLE_RATE for p in sent(pieces))
        assert words_not_sent(pieces, words, 180 * SAMPLE_RATE) == []


def test_a_quiet_speaker_after_a_loud_one_is_still_sent(speech: tuple[np.ndarray, list]) -> None:
    """The same words 25 dB quieter after a loud speaker, over the same -70 dBFS room: every
    quiet word is sent, though the loud speaker's pause threshold lies above them."""
    pcm, words = speech
    floor = room_tone(2 * len(pcm) / SAMPLE_RATE, level_db=-70, seed=4).astype(float)
    voices = np.concatenate([scaled(pcm, 0), scaled(pcm, -25)]).astype(float)
    audio = np.clip(voices + floor, -32768, 32767).astype(np.int16)
    for limits in (LIMITS, PieceLimits(target_seconds=6, max_seconds=10)):
        pieces = cut_with(audio, limits)
        assert words_not_sent(pieces, words, 0) == [] and words_not_sent(pieces, words, len(pcm)) == []


def test_the_plan_and_its_silence_do_not_depend_on_the_decoder_blocks(speech: tuple[np.ndarray, list]) -> None:
    """Muted opening, room tone, speech, a long pause, speech, with a shrinking schedule: the
    same spans and the same silent pieces for every way of chunking the stream."""
    pcm, _ = speech
    audio = np.concatenate([np.zeros(40 * SAMPLE_RATE, dtype=np.int16), room_tone(50, level_db=-60), pcm, room_tone(30, level_db=-48, seed=5), pcm])
    limits = PieceLimits(target_seconds=30, max_seconds=45, min_target_seconds=8).scheduled(total_seconds=len(audio) / SAMPLE_RATE, parallelism=3)
    reference = [(p.span, p.silent) for p in cut_with(audio, limits)]
    assert any(silent for _, silent in reference) and not all(silent for _, silent in reference)
    for block in (1000, 4093, 320 * 7, 160_000):
        assert [(p.span, p.silent) for p in cut_with(audio, limits, block)] == reference


def groups_of(pieces: list) -> list[list]:
    """The requests a plan makes: each piece with sound, with those stitched to it."""
    groups: list[list] = []
    for piece in sent(pieces):
        if piece.joins and groups:
            groups[-1].append(piece)
        else:
            groups.append([piece])
    return groups


def test_speech_on_either_side_of_a_long_silence_goes_in_one_request(speech: tuple[np.ndarray, list]) -> None:
    """Ten seconds of speech, 20 muted seconds, the rest of the minute, in 30-45 s windows: the
    first request carries the ten seconds and the speech after the silence up to the window's
    end, the silence left out but for half a second on either side (before this, the ten
    seconds went alone); the pieces stay apart, each with its own span, and every word is sent.
    A job journaled by the second rules (no stitching) re-plans to requests as before."""
    pcm, words = speech
    pause = next(end for (_, _, end), (_, start, _) in zip(words, words[1:], strict=False) if end > 10 and start - end > 0.3)
    first = pcm[: round((pause + 0.15) * SAMPLE_RATE)]
    audio = np.concatenate([first, np.zeros(20 * SAMPLE_RATE, dtype=np.int16), pcm])
    pieces = cut_with(audio, LIMITS)
    group = groups_of(pieces)[0]
    assert len(group) == 2 and not group[0].joins and group[1].joins
    assert group[0].span.end <= len(first) + SAMPLE_RATE // 2 + 320
    assert group[1].span.start >= len(first) + 19 * SAMPLE_RATE
    assert LIMITS.min_seconds <= sum(p.span.seconds for p in group) <= LIMITS.max_seconds
    assert any(p.silent and group[0].span.end <= p.span.start < group[1].span.start for p in pieces)
    assert words_not_sent(pieces, words[: len([w for w in words if w[2] <= pause])], 0) == []
    assert words_not_sent(pieces, words, len(first) + 20 * SAMPLE_RATE) == []
    second_rules = PieceLimits.from_dict({**LIMITS.as_dict(), "plan_rules": 2})
    before = groups_of(cut_with(audio, second_rules))
    assert len(before[0]) == 1 and before[0][0].span.end == group[0].span.end
    assert before[1][0].span.start == group[1].span.start and not before[1][0].joins


def test_a_stitched_request_stays_within_the_window_and_silences_no_longer_decide_the_count(speech: tuple[np.ndarray, list]) -> None:
    """Twenty s of speech then 12 muted s, eight times over, in 30-45 s windows: no request
    carries more than 45 s, and there are fewer requests than pieces with sound (the silences
    no longer cut a window short)."""
    pcm, _ = speech
    audio = np.concatenate([np.concatenate([pcm[: 20 * SAMPLE_RATE], np.zeros(12 * SAMPLE_RATE, dtype=np.int16)]) for _ in range(8)])
    pieces = cut_with(audio, LIMITS)
    groups = groups_of(pieces)
    assert all(sum(p.span.seconds for p in group) <= LIMITS.max_seconds for group in groups)
    assert len(groups) < len(sent(pieces))
    assert len(groups) < len(groups_of(cut_with(audio, PieceLimits.from_dict({**LIMITS.as_dict(), "plan_rules": 2}))))
