"""Hostile and strange inbox entries: each ends as a correct transcript or in failed/ with a clear
NAME.error.json; the daemon never crashes, hangs, reads outside the inbox, or lets ffmpeg reach
the network. The daemon runs in-process on real ffmpeg with the fake engine."""

from __future__ import annotations

import gc
import json
import os
import shutil
import socket
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import trio
from conftest import (
    BECKETT,
    FakeEngine,
    ffmpeg,
    finished,
    jobs_in,
    make_config,
    progress,
    running,
    wait_for,
    wait_until,
)


def explanation(root: Path, stem: str) -> dict:
    return json.loads((root / "failed" / f"{stem}.error.json").read_text())


async def then_a_good_file_still_works(root: Path, media: Callable[..., Path]) -> None:
    shutil.copy(media("good.mp3"), root / "inbox" / "good.mp3")
    assert (await finished(root, "good"))["state"] == "done"


async def test_an_hls_playlist_named_mp3_never_makes_ffmpeg_connect(tmp_path: Path, media: Callable[..., Path], fake_engine: FakeEngine) -> None:
    """A playlist pointing at a loopback URL the test watches is refused before any connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:{port}/x.mp3\n#EXT-X-ENDLIST\n"
    root = tmp_path
    config = make_config(root)
    async with running(config, fake_engine):
        (root / "inbox" / "evil.mp3").write_text(playlist)
        await wait_for(root / "failed" / "evil.error.json")
        await then_a_good_file_still_works(root, media)
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()
    assert explanation(root, "evil")["error"] == "not_media"


async def test_an_hls_playlist_pointing_at_a_local_file_reads_nothing(tmp_path: Path, fake_engine: FakeEngine) -> None:
    """A playlist naming a file outside the inbox is refused as not media; the file is not read
    into any output."""
    secret = tmp_path / "secret.wav"
    shutil.copy(BECKETT, secret)
    root = tmp_path / "root"
    config = make_config(root)
    async with running(config, fake_engine):
        (root / "inbox" / "local.mp3").write_text(f"#EXTM3U\n#EXTINF:10,\nfile://{secret}\n#EXT-X-ENDLIST\n")
        await wait_for(root / "failed" / "local.error.json")
    assert explanation(root, "local")["error"] == "not_media"
    assert fake_engine.calls == 0 and secret.exists()


def lying_m4a(target: Path, claimed_seconds: int) -> Path:
    """A 1 s AAC .m4a whose mvhd and mdhd boxes claim `claimed_seconds`."""
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(target))
    data = bytearray(target.read_bytes())
    for box in (b"mvhd", b"mdhd"):
        at = data.find(box)
        while at != -1:
            version = data[at + 4]
            assert version == 0
            timescale = struct.unpack(">I", data[at + 16 : at + 20])[0]
            data[at + 20 : at + 24] = struct.pack(">I", timescale * claimed_seconds)
            at = data.find(box, at + 4)
    target.write_bytes(bytes(data))
    return target


async def test_a_header_claiming_ten_hours_is_judged_by_what_decodes(tmp_path: Path, fake_engine: FakeEngine) -> None:
    """A 1 s file whose header claims 10 h is transcribed as the 1 s it is."""
    staging = tmp_path / "staging"
    staging.mkdir()
    source = lying_m4a(staging / "liar.m4a", 36_000)
    root = tmp_path / "root"
    async with running(make_config(root), fake_engine):
        os.rename(source, root / "inbox" / "liar.m4a")
        state = await finished(root, "liar")
    assert state["state"] == "done"
    assert state["audio_seconds"]["total"] < 1.5
    assert json.loads((root / "outbox" / "liar.json").read_text())["audio_seconds"] < 1.5


@pytest.mark.slow
async def test_a_real_ten_hour_file_of_a_few_megabytes_meets_the_duration_limit(tmp_path: Path, fake_engine: FakeEngine) -> None:
    """Ten hours of near-silence compress to a few MB; decoding stops at the limit and the file
    is refused as too long (it would cost ten hours of transcription)."""
    staging = tmp_path / "staging"
    staging.mkdir()
    source = staging / "marathon.opus"
    ffmpeg("-f", "lavfi", "-i", "anoisesrc=a=0.0005:r=8000:d=36000", "-ac", "1", "-c:a", "libopus", "-b:a", "6k", "-application", "voip", str(source))
    assert source.stat().st_size < 40_000_000
    root = tmp_path / "root"
    async with running(make_config(root, max_audio_seconds=1800), fake_engine):
        os.rename(source, root / "inbox" / "marathon.opus")
        with trio.fail_after(120):
            await wait_for(root / "failed" / "marathon.error.json")
    assert explanation(root, "marathon")["error"] == "too_long"


@pytest.mark.parametrize("kind", ["symlink", "fifo", "hardlink", "directory"])
async def test_entries_that_are_not_plain_files_go_to_failed_unopened(
    tmp_path: Path, media: Callable[..., Path], fake_engine: FakeEngine, kind: str
) -> None:
    """Symbolic links, named pipes, hard-linked files and folders are moved to failed/ (never
    followed or opened) with an explanation, and the daemon goes on."""
    outside = tmp_path / "outside.mp3"
    shutil.copy(media("outside.mp3"), outside)
    original = outside.read_bytes()
    root = tmp_path / "root"
    async with running(make_config(root), fake_engine):
        entry = root / "inbox" / "odd.mp3"
        if kind == "symlink":
            entry.symlink_to(outside)
        elif kind == "fifo":
            os.mkfifo(entry)
        elif kind == "hardlink":
            os.link(outside, entry)
        else:
            entry.mkdir()
            (entry / "inside.mp3").write_bytes(outside.read_bytes())
        await wait_for(root / "failed" / "odd.error.json")
        await then_a_good_file_still_works(root, media)
    expected = {"symlink": "symlink", "fifo": "special", "hardlink": "hardlink", "directory": "directory"}[kind]
    info = explanation(root, "odd")
    assert info["error"] == expected and info["reason"] and info["what_to_do"]
    assert os.path.lexists(root / "failed" / "odd.mp3")
    assert outside.read_bytes() == original  # the file outside the inbox is where it was
    assert fake_engine.calls == 1  # only the good file reached the engine


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        (b"-rf.mp3", "-rf.mp3"),
        (b"line\nbreak.mp3", "line\\nbreak.mp3"),
        (b"\x1b[31mred\x1b[0m.mp3", "\\x1b[31mred\\x1b[0m.mp3"),
        (b"caf\xe9.mp3", "caf\\xe9.mp3"),
    ],
)
async def test_hostile_names_are_transcribed_under_safe_names(
    tmp_path: Path, media: Callable[..., Path], fake_engine: FakeEngine, name: bytes, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Names with a leading dash, a newline, ANSI escapes or invalid UTF-8 are transcribed; the
    outputs get a printable name, and the progress file and the log show the name escaped."""
    root = tmp_path / "root"
    async with running(make_config(root), fake_engine):
        data = media("named.mp3").read_bytes()
        fd = os.open(os.path.join(os.fsencode(root / "inbox"), name), os.O_WRONLY | os.O_CREAT)
        os.write(fd, data)
        os.close(fd)
        outputs = [p.name for p in (root / "outbox").glob("*.json") if not p.name.endswith(".progress.json")]
        await wait_until(lambda: any(p.name.endswith(".json") and not p.name.endswith(".progress.json") for p in (root / "outbox").iterdir()))
        outputs = [p.name for p in (root / "outbox").iterdir() if p.suffix == ".txt"]
    assert len(outputs) == 1
    made = outputs[0][: -len(".txt")]
    assert made.isprintable() and not made.startswith(("-", "."))
    state = progress(root, made)
    assert state["state"] == "done"
    assert state["source"] == shown
    logged = capsys.readouterr().out
    assert shown in logged and "\x1b" not in logged and "line\nbreak" not in logged


async def test_a_slow_writer_is_waited_for(tmp_path: Path, media: Callable[..., Path], fake_engine: FakeEngine) -> None:
    """A file written a quarter at a time (under its final name) is taken only when complete."""
    data = media("slow.mp3").read_bytes()
    root = tmp_path / "root"
    async with running(make_config(root, settle_interval=0.6), fake_engine):
        target = root / "inbox" / "slow.mp3"
        with target.open("wb") as handle:
            for i in range(4):
                handle.write(data[i * len(data) // 4 : (i + 1) * len(data) // 4])
                handle.flush()
                await trio.sleep(0.3)
        state = await finished(root, "slow")
    assert state["state"] == "done" and state["audio_seconds"]["total"] > 9.5


async def test_a_preallocating_writer_is_waited_for(tmp_path: Path, media: Callable[..., Path], fake_engine: FakeEngine) -> None:
    """A writer that sets the final size first and fills it in later is judged by mtime too."""
    data = media("prealloc.mp3").read_bytes()
    root = tmp_path / "root"
    async with running(make_config(root, settle_interval=0.6), fake_engine):
        target = root / "inbox" / "prealloc.mp3"
        with target.open("wb") as handle:
            handle.truncate(len(data))
            handle.flush()
            for i in range(4):
                await trio.sleep(0.3)
                handle.seek(i * len(data) // 4)
                handle.write(data[i * len(data) // 4 : (i + 1) * len(data) // 4])
                handle.flush()
        state = await finished(root, "prealloc")
    assert state["state"] == "done" and state["audio_seconds"]["total"] > 9.5


async def test_a_full_disk_pauses_intake_and_jobs_until_space_returns(tmp_path: Path, media: Callable[..., Path]) -> None:
    """Below min_free_space_mb nothing is claimed and a running job waits (state waiting,
    reason disk) before it writes; when space returns both go on and nothing is lost."""
    space = {"free": 10 << 30}
    engine = FakeEngine()
    engine.delay = 0.5
    root = tmp_path / "root"
    config = make_config(root, min_free_space_mb=100, job_workers=1)
    async with running(config, engine, free_space=lambda path: space["free"]):
        shutil.copy(media("running.mp3"), root / "inbox" / "running.mp3")
        await wait_until(lambda: (root / "outbox" / "running.progress.json").exists() and engine.calls >= 1)
        space["free"] = 1 << 20
        await wait_until(lambda: progress(root, "running")["state"] == "waiting")
        assert "disk" in progress(root, "running")["waiting_reason"]
        shutil.copy(media("queued.mp3"), root / "inbox" / "queued.mp3")
        await trio.sleep(1.5)
        assert os.listdir(root / "inbox") == ["queued.mp3"]
        space["free"] = 10 << 30
        assert (await finished(root, "running"))["state"] == "done"
        assert (await finished(root, "queued"))["state"] == "done"


@pytest.mark.slow
async def test_five_hundred_files_at_once_leave_memory_and_open_files_flat(tmp_path: Path, fake_engine: FakeEngine) -> None:
    """A burst of 500 short recordings is transcribed in full; the daemon's open files come back
    to where they were, and what it still holds afterwards (every Python allocation, traced)
    grows by a few KiB a job at most: a piece's samples kept per job would be 24 MiB. Resident
    memory is only a backstop: the allocator keeps freed pages as it likes (the same burst
    ends 20-60 MiB up, in steps that go down as well as up, before and after any change)."""
    staging = tmp_path / "staging"
    staging.mkdir()
    seed = staging / "seed.wav"
    ffmpeg("-i", str(BECKETT), "-t", "1.5", "-ac", "1", "-ar", "16000", str(seed))
    for i in range(500):
        shutil.copy(seed, staging / f"clip-{i:03d}.wav")
    root = tmp_path / "root"
    me = psutil.Process()
    async with running(make_config(root, job_workers=4, rescan_interval=1), fake_engine):
        # a first file pays the one-time costs (the .docx writer's imports and its thread's
        # arena), so what is measured below is what the burst itself adds
        shutil.copy(seed, root / "inbox" / "warm-up.wav")
        with trio.fail_after(120):
            while not (root / "outbox" / "warm-up.txt").exists():
                await trio.sleep(0.2)
        await trio.sleep(1.0)
        tracemalloc.start()
        try:
            gc.collect()
            files_before, memory_before = me.num_fds(), me.memory_info().rss
            traced_before = tracemalloc.get_traced_memory()[0]
            for i in range(500):
                os.rename(staging / f"clip-{i:03d}.wav", root / "inbox" / f"clip-{i:03d}.wav")
            with trio.fail_after(600):
                while len(list((root / "outbox").glob("clip-*.txt"))) < 500:
                    await trio.sleep(0.5)
            await trio.sleep(1.0)
            gc.collect()
            files_after, memory_after = me.num_fds(), me.memory_info().rss
            traced_after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    assert len(os.listdir(root / "done")) == 501 and jobs_in(root / "work") == []
    assert files_after <= files_before + 2
    assert traced_after - traced_before < 8 << 20
    assert memory_after - memory_before < 160 << 20
    print(f"500-file burst: open files {files_before} -> {files_after}, traced {(traced_after - traced_before) >> 10} KiB more, RSS {memory_before >> 20} -> {memory_after >> 20} MiB")
