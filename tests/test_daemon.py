"""The daemon in-process on real files and real ffmpeg, with a fake engine: intake, outputs,
bad files, name collisions, resume and poison files."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from conftest import (
    FakeEngine,
    finished,
    jobs_in,
    make_config,
    progress,
    running,
    wait_for,
    wait_until,
)
from transcribed.errors import PermanentError, RetryableError
from transcribed.journal import JobRecord, Journal


async def test_a_dropped_recording_becomes_four_transcripts_and_moves_to_done(tmp_path: Path, media: Callable[..., Path], fake_engine: FakeEngine) -> None:
    """An mp3 dropped into the inbox ends as txt/srt/vtt/json in the outbox, the source in done/,
    a final progress file, and an empty work/."""
    config = make_config(tmp_path)
    async with running(config, fake_engine):
        shutil.copy(media("hearing.mp3"), tmp_path / "inbox" / "hearing.mp3")
        state = await finished(tmp_path, "hearing")
    assert state["state"] == "done" and state["percent"] == 100.0
    assert state["pieces"]["done"] == state["pieces"]["total"] >= 1
    assert 9.5 < state["audio_seconds"]["total"] < 10.5
    for suffix in (".txt", ".srt", ".vtt", ".json"):
        assert (tmp_path / "outbox" / f"hearing{suffix}").is_file()
    document = json.loads((tmp_path / "outbox" / "hearing.json").read_text())
    assert document["segments"] and document["source"] == "hearing.mp3"
    assert os.listdir(tmp_path / "done") == ["hearing.mp3"]
    assert os.listdir(tmp_path / "inbox") == [] and jobs_in(tmp_path / "work") == []


async def test_files_present_before_start_are_processed(tmp_path: Path, media: Callable[..., Path], fake_engine: FakeEngine) -> None:
    """A file dropped while the daemon was down is found by the start-up scan."""
    config = make_config(tmp_path)
    (tmp_path / "inbox").mkdir()
    shutil.copy(media("early.flac"), tmp_path / "inbox" / "early.flac")
    async with running(config, fake_engine):
        assert (await finished(tmp_path, "early"))["state"] == "done"


@pytest.mark.parametrize("name", ["talk.wav", "talk.m4a", "talk.ogg", "talk.opus", "talk.mp4", "talk.mkv", "talk.webm"])
async def test_every_supported_format_is_transcribed(tmp_path: Path, media: Callable[..., Path], fake_engine: FakeEngine, name: str) -> None:
    """Audio and video containers alike decode to about ten seconds of audio."""
    config = make_config(tmp_path)
    async with running(config, fake_engine):
        shutil.copy(media(name), tmp_path / "inbox" / name)
        state = await finished(tmp_path, "talk")
    assert state["state"] == "done"
    assert 9.5 < state["audio_seconds"]["total"] < 10.6


def truncated_mp3(media: Callable[..., Path], size: int) -> bytes:
    return media("whole.mp3").read_bytes()[:size]


BAD_FILES: dict[str, tuple[Callable[[Callable[..., Path]], bytes], str]] = {
    "empty.mp3": (lambda media: b"", "empty"),
    "noise.mp3": (lambda media: os.urandom(50_000), "not_media"),
    "notes.txt": (lambda media: b"Minutes of the meeting.\n" * 100, "not_media"),
    "stub.mp3": (lambda media: truncated_mp3(media, 300), "not_media"),
    "silent-video.mp4": (None, "no_audio"),  # type: ignore[dict-item]
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
async def test_bad_files_go_to_failed_with_a_clear_error_and_the_daemon_goes_on(
    tmp_path: Path, media: Callable[..., Path], fake_engine: FakeEngine, name: str
) -> None:
    """Each kind of unusable file ends in failed/ with NAME.error.json saying what is wrong and
    what to do, and a good file dropped after it is still transcribed."""
    from conftest import ffmpeg

    config = make_config(tmp_path)
    build, code = BAD_FILES[name]
    staging = tmp_path / "staging"
    staging.mkdir()
    if build is None:
        ffmpeg("-f", "lavfi", "-i", "color=c=red:s=64x48:r=5:d=3", "-c:v", "libx264", "-preset", "ultrafast", str(staging / name))
    else:
        (staging / name).write_bytes(build(media))
    stem = name.rsplit(".", 1)[0]
    async with running(config, fake_engine):
        os.rename(staging / name, tmp_path / "inbox" / name)
        error_file = await wait_for(tmp_path / "failed" / f"{stem}.error.json")
        explanation = json.loads(error_file.read_text())
        shutil.copy(media("after.mp3"), tmp_path / "inbox" / "after.mp3")
        assert (await finished(tmp_path, "after"))["state"] == "done"
    assert explanation["error"] == code
    assert explanation["reason"] and explanation["what_to_do"]
    assert explanation["source"] == name
    assert (tmp_path / "failed" / name).exists()
    assert progress(tmp_path, stem)["state"] == "failed"
    assert jobs_in(tmp_path / "work") == []


async def test_files_still_being_written_are_left_alone(tmp_path: Path, media: Callable[..., Path], fake_engine: FakeEngine) -> None:
    """Dotfiles and *.part names are ignored; the rename that publishes them makes them count."""
    config = make_config(tmp_path)
    async with running(config, fake_engine):
        shutil.copy(media("later.mp3"), tmp_path / "inbox" / "later.mp3.part")
        shutil.copy(media("hidden.mp3"), tmp_path / "inbox" / ".hidden.mp3")
        await trio.sleep(1.0)
        assert sorted(os.listdir(tmp_path / "inbox")) == [".hidden.mp3", "later.mp3.part"]
        os.rename(tmp_path / "inbox" / "later.mp3.part", tmp_path / "inbox" / "later.mp3")
        assert (await finished(tmp_path, "later"))["state"] == "done"
    assert os.listdir(tmp_path / "inbox") == [".hidden.mp3"]


async def test_a_second_file_with_the_same_name_never_overwrites_the_first(tmp_path: Path, media: Callable[..., Path], fake_engine: FakeEngine) -> None:
    """The same name dropped twice gives NAME and NAME-2 transcripts; both sources are kept."""
    config = make_config(tmp_path)
    async with running(config, fake_engine):
        shutil.copy(media("same.mp3"), tmp_path / "inbox" / "same.mp3")
        await finished(tmp_path, "same")
        first = (tmp_path / "outbox" / "same.json").read_text()
        shutil.copy(media("same.wav"), tmp_path / "inbox" / "same.mp3")
        await finished(tmp_path, "same-2")
    assert (tmp_path / "outbox" / "same.json").read_text() == first
    assert sorted(os.listdir(tmp_path / "done")) == ["same-2.mp3", "same.mp3"]


async def test_a_resumed_job_sends_only_unfinished_pieces_and_matches_a_clean_run(
    tmp_path: Path, media: Callable[..., Path]
) -> None:
    """A job whose first pieces are journaled (as after a crash) sends only the rest, and its
    transcript is identical to an uninterrupted run."""
    source = media("long.mp3", media("two.wav", __import__("conftest").TWO_CITIES))
    clean_engine = FakeEngine()
    clean_root = tmp_path / "clean"
    async with running(make_config(clean_root), clean_engine):
        shutil.copy(source, clean_root / "inbox" / "long.mp3")
        await finished(clean_root, "long")
    total = clean_engine.calls
    assert total >= 4

    # Interrupt a run: the engine answers two pieces, then hangs; stopping with no drain time
    # leaves the job in work/ with what was journaled.
    crashed = tmp_path / "crashed"
    hanging_engine = FakeEngine()
    hanging_engine.hang_after = 2
    async with running(make_config(crashed, drain_timeout=0), hanging_engine):
        shutil.copy(source, crashed / "inbox" / "long.mp3")
        await wait_until(lambda: len(list((crashed / "work").glob("*/pieces/*.json"))) >= 2)
    journaled = len(list((crashed / "work").glob("*/pieces/*.json")))
    assert journaled == 2 and not (crashed / "outbox" / "long.txt").exists()

    resumed_engine = FakeEngine()
    async with running(make_config(crashed), resumed_engine):
        await finished(crashed, "long")
    assert resumed_engine.calls == total - journaled
    for suffix in (".txt", ".srt", ".vtt"):
        assert (crashed / "outbox" / f"long{suffix}").read_text() == (clean_root / "outbox" / f"long{suffix}").read_text()
    assert jobs_in(crashed / "work") == []


async def test_a_poison_file_goes_to_failed_after_max_attempts(tmp_path: Path, media: Callable[..., Path], fake_engine: FakeEngine) -> None:
    """A job that already took the daemon down max_attempts times is not tried again."""
    config = make_config(tmp_path, max_attempts=2)
    journal = Journal(tmp_path / "work" / "20260101T000000-abcdef")
    journal.save(JobRecord(job_id="20260101T000000-abcdef", display_name="bad.mp3", name_b64="YmFkLm1wMw==", stem="bad", source_file="source.mp3", claimed_at="2026-01-01T00:00:00Z", attempts=2))
    shutil.copy(media("bad.mp3"), journal.folder / "source.mp3")
    async with running(config, fake_engine):
        explanation = json.loads((await wait_for(tmp_path / "failed" / "bad.error.json")).read_text())
    assert explanation["error"] == "poison"
    assert fake_engine.calls == 0
    assert (tmp_path / "failed" / "bad.mp3").exists()


async def test_retryable_engine_errors_are_retried_and_permanent_ones_fail_the_job(
    tmp_path: Path, media: Callable[..., Path], fake_engine: FakeEngine
) -> None:
    """A transient error costs a retry and the job completes; a permanent one fails it at once."""
    fake_engine.fail = {1: RetryableError("busy")}
    config = make_config(tmp_path, job_workers=1)
    async with running(config, fake_engine):
        shutil.copy(media("first.mp3"), tmp_path / "inbox" / "first.mp3")
        state = await finished(tmp_path, "first")
        assert state["state"] == "done" and state["retries"] == 1
        fake_engine.fail = {fake_engine.calls + 1: PermanentError("the engine refused this piece")}
        shutil.copy(media("second.mp3"), tmp_path / "inbox" / "second.mp3")
        explanation = json.loads((await wait_for(tmp_path / "failed" / "second.error.json")).read_text())
    assert "refused" in explanation["reason"]
