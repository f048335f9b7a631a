"""The timing instrument, and the daemon measured with it: a fake OpenAI server that knows every
word time of its corpus answers each piece with the true words, and the transcript's times,
words and cues are checked against the truth."""

from __future__ import annotations

import difflib
import json
import re
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
import trio

from openai_server import FakeOpenAI, ServerSettings
from speech_corpus import Corpus, build, words_path
from test_openai_daemon import KEY, daemon, finished, openai_config
from transcribed.subtitles import Cue, cue_problems

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (.ci/setup)")


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "hearing.wav"
    build(path, 150.0, seed=4)
    return path


def test_a_piece_is_located_to_the_sample_even_through_mp3(corpus_file: Path) -> None:
    """A 30 s piece cut anywhere is found at its exact sample; encoded to mp3 through a pipe it
    is found 1105 samples early (the encoder's priming), which the answer's times then show."""
    corpus = Corpus(corpus_file)
    for offset in (16_000 * 7 + 123, 16_000 * 100 + 5):
        piece = corpus.pcm[offset : offset + 30 * 16_000]
        assert corpus.locate(piece) == offset
        mp3 = subprocess.run(
            ["ffmpeg", "-v", "error", "-f", "s16le", "-ar", "16000", "-ac", "1", "-i", "pipe:0", "-c:a", "libmp3lame", "-b:a", "32k", "-f", "mp3", "pipe:1"],
            input=piece.tobytes(), capture_output=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        heard = np.frombuffer(subprocess.run(
            ["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", "16000", "pipe:1"],
            input=mp3, capture_output=True, check=True, timeout=60,
        ).stdout, dtype="<i2")  # fmt: skip
        assert corpus.locate(heard) == offset - 1105
    words = corpus.words_in(16_000 * 7, 30 * 16_000)
    centres = [(w.start + w.end) / 2 for w in corpus.words]
    assert len(words) == sum(1 for c in centres if 7 <= c < 37)


def mp3_round_trip(pcm: np.ndarray) -> np.ndarray:
    """The samples through an mp3 encode and decode, as the server hears an upload."""
    mp3 = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "s16le", "-ar", "16000", "-ac", "1", "-i", "pipe:0", "-c:a", "libmp3lame", "-b:a", "32k", "-f", "mp3", "pipe:1"],
        input=pcm.tobytes(), capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return np.frombuffer(subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", "16000", "pipe:1"],
        input=mp3, capture_output=True, check=True, timeout=60,
    ).stdout, dtype="<i2")  # fmt: skip


def test_a_stitched_upload_is_located_stretch_by_stretch(corpus_file: Path) -> None:
    """Three stretches of the corpus, each cut 0.35 s into a pause of 0.75 s or more (the
    daemon's seams keep 0.5 s of a long silence on either side), end to end through mp3: the server
    finds the three and answers with every true word at its place in the upload."""
    corpus = Corpus(corpus_file)
    words = corpus.words
    pauses = [(a.end, b.start) for a, b in zip(words, words[1:], strict=False) if b.start - a.end >= 0.75]
    assert len(pauses) >= 6
    chosen = [pauses[i] for i in np.linspace(0, len(pauses) - 1, 6).round().astype(int)]
    stretches = [(chosen[k][1] - 0.35, chosen[k + 1][0] + 0.35) for k in (0, 2, 4)]
    upload = np.concatenate([corpus.pcm[round(a * 16_000) : round(b * 16_000)] for a, b in stretches])
    heard = mp3_round_trip(upload)[1105:]  # (the priming, which the daemon's own uploads lack)
    found = corpus.stretches(heard)
    assert len(found) == 3
    truth, at = [], 0.0
    for a, b in stretches:
        truth += [(t, round(s + at, 3)) for t, s, _ in corpus.words_in(round(a * 16_000), round((b - a) * 16_000))]
        at += round((b - a) * 16_000) / 16_000
    answered = corpus.words_of(heard, found)
    assert [t for t, _, _ in answered] == [t for t, _ in truth]
    assert max(abs(s - t) for (_, s, _), (_, t) in zip(answered, truth, strict=True)) <= 0.005


def aligned(truth: list[tuple[str, float, float]], segments: list[dict]) -> tuple[list[float], list[float], int]:
    """Start/end errors of each segment against its first/last true word, and the count of
    words lost or added."""
    norm = [re.sub(r"[^a-z']", "", w.lower()) for w, _, _ in truth]
    tokens: list[str] = []
    bounds = []
    for segment in segments:
        words = segment["text"].split()
        bounds.append((len(tokens), len(tokens) + len(words) - 1))
        tokens.extend(words)
    matcher = difflib.SequenceMatcher(a=norm, b=[re.sub(r"[^a-z']", "", t.lower()) for t in tokens], autojunk=False)
    mapping = {}
    wrong = 0
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            mapping.update({b0 + k: a0 + k for k in range(a1 - a0)})
        else:
            wrong += (a1 - a0) + (b1 - b0)
    starts = [s["start"] - truth[mapping[a]][1] for s, (a, _) in zip(segments, bounds, strict=True) if a in mapping]
    ends = [s["end"] - truth[mapping[b]][2] for s, (_, b) in zip(segments, bounds, strict=True) if b in mapping]
    return starts, ends, wrong


def read_srt(path: Path) -> list[Cue]:
    cues = []
    for block in path.read_text().strip().split("\n\n"):
        lines = block.split("\n")
        start, end = (sum(float(x) * f for x, f in zip(t.replace(",", ".").split(":"), (3600, 60, 1), strict=True)) for t in lines[1].split(" --> "))
        cues.append(Cue(start=start, end=end, lines=tuple(lines[2:])))
    return cues


async def transcribe_corpus(tmp_path: Path, corpus_file: Path, model: str) -> tuple[dict, list[Cue]]:
    server = FakeOpenAI(ServerSettings(api_key=KEY), corpus=Corpus(corpus_file))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        config = openai_config(tmp_path, url, **{"openai.model": model, "openai.piece_target_seconds": 40, "openai.piece_max_seconds": 60, "openai.request_timeout": 30})
        async with daemon(config):
            shutil.copy(corpus_file, tmp_path / "inbox" / ".hearing.wav")
            (tmp_path / "inbox" / ".hearing.wav").rename(tmp_path / "inbox" / "hearing.wav")
            assert (await finished(tmp_path, "hearing"))["state"] == "done"
        nursery.cancel_scope.cancel()
    document = json.loads((tmp_path / "outbox" / "hearing.json").read_text())
    return document, read_srt(tmp_path / "outbox" / "hearing.srt")


@pytest.mark.slow
async def test_gpt_transcribe_is_timed_by_the_daemon_within_a_second(tmp_path: Path, corpus_file: Path) -> None:
    """A text-only model's transcript loses and doubles nothing, its segments start and end
    within 1 s of the true words (p95), and every cue keeps the subtitle rules."""
    truth = [(w.text, w.start, w.end) for w in Corpus(corpus_file).words]
    with trio.fail_after(120):
        document, cues = await transcribe_corpus(tmp_path, corpus_file, "gpt-transcribe")
    starts, ends, wrong = aligned(truth, document["segments"])
    assert wrong == 0
    assert np.percentile(np.abs(starts), 95) <= 1.0 and np.percentile(np.abs(ends), 95) <= 1.0
    assert len(document["segments"]) > 10  # timed at the pauses, not one line per piece
    assert all(problems == [] for problems in cue_problems(cues))


@pytest.mark.slow
async def test_whisper_times_arrive_without_the_encoders_delay(tmp_path: Path, corpus_file: Path) -> None:
    """whisper-1's server times (from the decoded upload) land within 10 ms on average."""
    truth = [(w.text, w.start, w.end) for w in Corpus(corpus_file).words]
    with trio.fail_after(120):
        document, cues = await transcribe_corpus(tmp_path, corpus_file, "whisper-1")
    starts, _, wrong = aligned(truth, document["segments"])
    assert wrong == 0 and abs(float(np.mean(starts))) <= 0.010
    assert all(problems == [] for problems in cue_problems(cues))


@pytest.mark.slow
async def test_speech_around_long_silences_is_stitched_and_timed_to_the_source(tmp_path: Path, corpus_file: Path) -> None:
    """The corpus with 15 muted seconds put into a pause every 25 s, on whisper-1: uploads carry
    speech from both sides of a silence (the server finds them stitched), and the transcript
    still has every word once, each segment starting at its true word's time (mean within
    10 ms, every one within 50 ms): the answer's times are mapped back to the source."""
    corpus = Corpus(corpus_file)
    words = corpus.words
    pauses = [a.end + 0.3 for a, b in zip(words, words[1:], strict=False) if b.start - a.end >= 0.6]
    cuts = sorted({min(pauses, key=lambda p: abs(p - at)) for at in (25.0, 50.0, 75.0, 100.0, 125.0)})
    silence = np.zeros(15 * 16_000, dtype="<i2")
    pieces, shifted, last = [], [], 0
    for k, cut in enumerate([*cuts, None]):
        end = len(corpus.pcm) if cut is None else round(cut * 16_000)
        pieces += [corpus.pcm[last:end]] + ([silence] if cut is not None else [])
        shifted += [[w.text, w.start + 15 * k, w.end + 15 * k] for w in words if last <= w.centre * 16_000 < end]
        last = end
    source = tmp_path / "sources" / "gaps.wav"
    source.parent.mkdir()
    with wave.open(str(source), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(16_000)
        writer.writeframes(np.concatenate(pieces).tobytes())
    words_path(source).write_text(json.dumps(shifted))
    truth = [tuple(w) for w in shifted]
    server = FakeOpenAI(ServerSettings(api_key=KEY), corpus=Corpus(source))
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            config = openai_config(tmp_path, url, **{"openai.model": "whisper-1", "openai.piece_target_seconds": 40, "openai.piece_max_seconds": 60, "openai.request_timeout": 30, "openai.max_concurrent_requests": 1})
            async with daemon(config):
                shutil.copy(source, tmp_path / "inbox" / ".gaps.wav")
                (tmp_path / "inbox" / ".gaps.wav").rename(tmp_path / "inbox" / "gaps.wav")
                assert (await finished(tmp_path, "gaps"))["state"] == "done"
            nursery.cancel_scope.cancel()
    assert server.stats.stitched >= 1
    document = json.loads((tmp_path / "outbox" / "gaps.json").read_text())
    starts, _, wrong = aligned(truth, document["segments"])
    assert wrong == 0
    assert abs(float(np.mean(starts))) <= 0.010 and max(abs(x) for x in starts) <= 0.050
