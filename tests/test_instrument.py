"""The timing instrument, and the daemon measured with it: a fake OpenAI server that knows every
word time of its corpus answers each piece with the true words, and the transcript's times,
words and cues are checked against the truth."""

from __future__ import annotations

import difflib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import trio

from openai_server import FakeOpenAI, ServerSettings
from speech_corpus import Corpus, build
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
