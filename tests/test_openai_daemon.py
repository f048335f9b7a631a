"""The daemon with the OpenAI engine against a real OpenAI-like server on 127.0.0.1: faults
heal to identical transcripts, permanent errors fail at once, quota waits, cost, limits."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from conftest import TWO_CITIES, make_config
from openai_server import RETRYABLE_FAULTS, FakeOpenAI, ServerSettings
from transcribed.app import run_daemon
from transcribed.config import Config
from transcribed.engines.openai import open_openai_engine

KEY = "sk-proj-CANARYkey0123456789abcdefWXYZ"
WAIT = 60


@asynccontextmanager
async def serving(settings: ServerSettings | None = None) -> AsyncIterator[tuple[FakeOpenAI, str]]:
    server = FakeOpenAI(settings or ServerSettings(api_key=KEY))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        yield server, url
        nursery.cancel_scope.cancel()


def openai_config(root: Path, url: str, **flags: object) -> Config:
    base: dict[str, object] = {
        "engine": "openai", "openai.base_url": url, "openai.piece_target_seconds": 8,
        "openai.piece_max_seconds": 12, "openai.retry_delay": 0.05, "openai.request_timeout": 3,
    }  # fmt: skip
    base.update(flags)
    return make_config(root, **base)


@asynccontextmanager
async def daemon(config: Config, api_key: str | None = KEY) -> AsyncIterator[None]:
    @asynccontextmanager
    async def factory(config: Config) -> AsyncIterator[object]:
        async with open_openai_engine(config.openai, api_key=api_key) as engine:
            yield engine

    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_daemon(config, engine_factory=factory, install_signal_handlers=False, shutdown=shutdown, task_status=task_status))
        try:
            yield
        finally:
            shutdown.set()


def progress(root: Path, stem: str) -> dict:
    return json.loads((root / "outbox" / f"{stem}.progress.json").read_text())


async def wait_until(check: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT):
        while not check():
            await trio.sleep(0.05)


async def finished(root: Path, stem: str) -> dict:
    path = root / "outbox" / f"{stem}.progress.json"
    await wait_until(lambda: path.exists() and json.loads(path.read_text())["state"] in ("done", "failed"))
    return progress(root, stem)


def drop(root: Path, source: Path, name: str) -> None:
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    shutil.copy(source, root / "inbox" / name)


async def transcribe_once(root: Path, url: str, source: Path, **flags: object) -> dict:
    async with daemon(openai_config(root, url, **flags)):
        drop(root, source, "hearing.mp3")
        return await finished(root, "hearing")


async def test_a_recording_is_transcribed_with_its_cost_reported(tmp_path: Path, media: Callable[..., Path]) -> None:
    """A dropped recording is cut into pieces, each sent once with the key; the transcript has
    the server's words, and estimated and spent cost (whisper-1's price) appear in progress."""
    source = media("hearing.mp3", TWO_CITIES)
    async with serving() as (server, url):
        state = await transcribe_once(tmp_path, url, source)
    assert state["state"] == "done" and state["pieces"]["done"] >= 3 and state["retries"] == 0
    seconds = state["audio_seconds"]["total"]
    assert state["cost"]["estimated"] == state["cost"]["spent"] == round(0.006 * seconds / 60, 4) > 0
    assert set(server.stats.answered.values()) == {1} and server.stats.limit_violations == 0
    assert set(server.stats.authorization) == {f"Bearer {KEY}"}
    assert "w" in (tmp_path / "outbox" / "hearing.txt").read_text()


async def test_every_retryable_fault_heals_to_the_fault_free_transcript(tmp_path: Path, media: Callable[..., Path]) -> None:
    """429 with a wait, 500/503, a reset mid-upload, a close after the whole body, a hang and a
    slow answer each cost a retry; the transcript is byte-identical to a fault-free run's, and
    no piece is answered twice."""
    source = media("hearing.mp3", TWO_CITIES)
    async with serving() as (server, url):
        await transcribe_once(tmp_path / "clean", url, source)
        server.reset()
        server.settings.slow_seconds = 0.3
        server.script.extend(RETRYABLE_FAULTS)
        state = await transcribe_once(tmp_path / "faulty", url, source)
    assert state["state"] == "done"
    assert dict(server.stats.injected) == dict.fromkeys(RETRYABLE_FAULTS, 1)
    assert state["retries"] == len(RETRYABLE_FAULTS) - 1  # a slow answer is still an answer
    assert set(server.stats.answered.values()) == {1}
    for suffix in (".txt", ".srt", ".vtt", ".json"):
        assert (tmp_path / "faulty" / "outbox" / f"hearing{suffix}").read_bytes() == (tmp_path / "clean" / "outbox" / f"hearing{suffix}").read_bytes()


async def test_a_permanent_error_fails_the_job_at_once(tmp_path: Path, media: Callable[..., Path]) -> None:
    """A 400 is not retried: the job fails with NAME.error.json in the server's words."""
    async with serving() as (server, url):
        server.script.append("bad_request")
        state = await transcribe_once(tmp_path, url, media("hearing.mp3"), **{"openai.max_concurrent_requests": 1})
    explanation = json.loads((tmp_path / "failed" / "hearing.error.json").read_text())
    assert state["state"] == "failed" and state["retries"] == 0
    assert "HTTP 400" in explanation["reason"] and "corrupted or unsupported" in explanation["reason"]
    assert explanation["what_to_do"] and server.stats.requests == 1
    assert (tmp_path / "failed" / "hearing.mp3").exists()


async def test_a_refused_key_pauses_the_service_and_is_never_echoed(tmp_path: Path, media: Callable[..., Path]) -> None:
    """The server's 401 echoes part of the key. A refused key is the service's fault: the job
    waits (reason key) with its source kept, nothing goes to failed/, no file holds any part of
    the key; restarted with the right key, the same job finishes."""
    async with serving(ServerSettings(api_key="sk-the-right-one-000000000000")) as (_, url):
        config = openai_config(tmp_path, url, drain_timeout=1)
        async with daemon(config):
            drop(tmp_path, media("hearing.mp3"), "hearing.mp3")
            path = tmp_path / "outbox" / "hearing.progress.json"
            await wait_until(lambda: path.exists() and progress(tmp_path, "hearing")["state"] == "waiting")
            state = progress(tmp_path, "hearing")
            assert state["waiting_reason"].startswith("key: the API key was refused")
            assert list((tmp_path / "work").glob("*/source.mp3"))
        assert not (tmp_path / "failed").exists() or not os.listdir(tmp_path / "failed")
        for path in [*tmp_path.rglob("*.json"), *tmp_path.rglob("*.txt")]:
            text = path.read_text(errors="replace")
            for fragment in (KEY, KEY[:8], KEY[-4:]):
                assert fragment not in text, path
        async with daemon(config, api_key="sk-the-right-one-000000000000"):
            state = await finished(tmp_path, "hearing")
    assert state["state"] == "done" and (tmp_path / "outbox" / "hearing.txt").exists()


async def test_an_exhausted_quota_makes_the_job_wait_and_then_finish(tmp_path: Path, media: Callable[..., Path]) -> None:
    """insufficient_quota stops spending: the job shows waiting (quota) with its source kept in
    work/, and after quota_retry_interval it goes on to done."""
    async with serving() as (server, url):
        server.script.append("quota")
        config = openai_config(tmp_path, url, **{"openai.quota_retry_interval": 1.5, "openai.max_concurrent_requests": 1})
        async with daemon(config):
            drop(tmp_path, media("hearing.mp3"), "hearing.mp3")
            path = tmp_path / "outbox" / "hearing.progress.json"
            await wait_until(lambda: path.exists() and progress(tmp_path, "hearing")["state"] == "waiting")
            assert progress(tmp_path, "hearing")["waiting_reason"].startswith("quota: ")
            assert list((tmp_path / "work").glob("*/source.mp3"))
            state = await finished(tmp_path, "hearing")
    assert state["state"] == "done" and server.stats.injected["quota"] == 1
    assert not (tmp_path / "failed" / "hearing.error.json").exists()


async def test_a_file_over_the_cost_cap_is_refused_before_anything_is_sent(tmp_path: Path, media: Callable[..., Path]) -> None:
    """With max_cost_per_file below the estimate, the file fails as too_expensive, unsent."""
    async with serving() as (server, url):
        state = await transcribe_once(tmp_path, url, media("hearing.mp3"), **{"openai.max_cost_per_file": 0.0001})
    explanation = json.loads((tmp_path / "failed" / "hearing.error.json").read_text())
    assert state["state"] == "failed" and explanation["error"] == "too_expensive"
    assert "$" in explanation["reason"] and server.stats.requests == 0


async def test_ten_files_dropped_at_once_stay_within_the_servers_limits(tmp_path: Path, media: Callable[..., Path]) -> None:
    """Ten recordings at once against a server allowing 60 rpm and 4 requests in flight: all
    finish, and the server never had to refuse one for a limit. (The server's bucket holds one
    request more than the client's burst of 4: the client spaces its permits exactly, and the
    time to encode and connect shifts each arrival by a few tens of milliseconds.)"""
    settings = ServerSettings(api_key=KEY, requests_per_minute=60, burst=5, max_concurrent=4, service_base=0.3)
    source = media("hearing.mp3")
    async with serving(settings) as (server, url):
        config = openai_config(tmp_path, url, job_workers=10, **{"openai.requests_per_minute": 60, "openai.max_concurrent_requests": 4, "openai.piece_target_seconds": 20, "openai.piece_max_seconds": 30})
        async with daemon(config):
            (tmp_path / "inbox").mkdir(exist_ok=True)
            for number in range(10):
                shutil.copy(source, tmp_path / "inbox" / f".copy{number}.mp3")
            for number in range(10):
                os.rename(tmp_path / "inbox" / f".copy{number}.mp3", tmp_path / "inbox" / f"hearing{number}.mp3")
            states = [await finished(tmp_path, f"hearing{number}") for number in range(10)]
    assert {s["state"] for s in states} == {"done"}
    assert server.stats.requests == 10 and server.stats.limit_violations == 0 and server.stats.max_in_flight <= 4


async def test_a_compatible_server_needs_no_key_and_its_errors_are_understood(tmp_path: Path, media: Callable[..., Path]) -> None:
    """Without a key no Authorization header is sent, and a FastAPI-style {"detail": ...}
    error reaches NAME.error.json in the server's words."""
    async with serving(ServerSettings(error_style="detail")) as (server, url):
        server.script.append("bad_request")
        async with daemon(openai_config(tmp_path, url), api_key=None):
            drop(tmp_path, media("hearing.mp3"), "hearing.mp3")
            await finished(tmp_path, "hearing")
    explanation = json.loads((tmp_path / "failed" / "hearing.error.json").read_text())
    assert "corrupted or unsupported" in explanation["reason"]
    assert set(server.stats.authorization) == {None}


async def test_a_retired_model_pauses_the_service_until_it_answers_again(tmp_path: Path, media: Callable[..., Path]) -> None:
    """404 model_not_found (whisper-1 retired): the job waits with reason model and a sentence
    saying what to set, nothing goes to failed/, and once the server answers the file is done."""
    async with serving() as (server, url):
        server.script.extend(["model_not_found"] * 3)
        config = openai_config(tmp_path, url, **{"openai.quota_retry_interval": 1.5, "openai.max_concurrent_requests": 1})
        async with daemon(config):
            drop(tmp_path, media("hearing.mp3"), "hearing.mp3")
            path = tmp_path / "outbox" / "hearing.progress.json"
            await wait_until(lambda: path.exists() and progress(tmp_path, "hearing")["state"] == "waiting")
            assert progress(tmp_path, "hearing")["waiting_reason"].startswith("model: the server does not offer this model")
            state = await finished(tmp_path, "hearing")
    assert state["state"] == "done" and not (tmp_path / "failed" / "hearing.error.json").exists()
    assert server.stats.injected["model_not_found"] >= 1


async def test_an_unreachable_server_pauses_the_service_and_fails_nothing(tmp_path: Path, media: Callable[..., Path]) -> None:
    """Connections reset on every attempt of a piece's whole retry budget: instead of failing
    the file, the service waits (reason unreachable) and resumes by itself."""
    async with serving() as (server, url):
        server.script.extend(["reset"] * 4)
        config = openai_config(tmp_path, url, **{"openai.max_attempts": 2, "openai.unreachable_retry_interval": 1, "openai.max_concurrent_requests": 1})
        async with daemon(config):
            drop(tmp_path, media("hearing.mp3"), "hearing.mp3")
            path = tmp_path / "outbox" / "hearing.progress.json"
            await wait_until(lambda: path.exists() and (progress(tmp_path, "hearing")["waiting_reason"] or "").startswith("unreachable"))
            state = await finished(tmp_path, "hearing")
    assert state["state"] == "done" and not (tmp_path / "failed" / "hearing.error.json").exists()


async def test_a_day_long_retry_after_is_cut_to_the_configured_ceiling(tmp_path: Path, media: Callable[..., Path]) -> None:
    """A 429 asking to wait 86400 s pauses requests for openai.max_retry_after only."""
    async with serving(ServerSettings(api_key=KEY, rate_limit_wait=86400)) as (server, url):
        server.script.append("rate_limit")
        started = trio.current_time()
        state = await transcribe_once(tmp_path, url, media("hearing.mp3"), **{"openai.max_retry_after": 1})
    assert state["state"] == "done" and trio.current_time() - started < 30
    assert server.stats.injected["rate_limit"] == 1


async def test_an_unusable_answer_costs_one_retry_and_a_second_makes_the_service_wait(tmp_path: Path, media: Callable[..., Path]) -> None:
    """A 200 whose JSON is cut in half is retried once; when the retry is cut too, the job
    waits (reason answers) with nothing failed and no third request, then finishes once the
    server answers again; both unusable answers are in the spent cost's upper bound."""
    async with serving() as (server, url):
        server.script.extend(["malformed", "malformed"])
        config = openai_config(tmp_path, url, **{"openai.quota_retry_interval": 1.5, "openai.max_concurrent_requests": 1})
        async with daemon(config):
            drop(tmp_path, media("hearing.mp3"), "hearing.mp3")
            path = tmp_path / "outbox" / "hearing.progress.json"
            await wait_until(lambda: path.exists() and progress(tmp_path, "hearing")["state"] == "waiting")
            assert progress(tmp_path, "hearing")["waiting_reason"].startswith("answers: the server answered")
            assert server.stats.requests == 2
            state = await finished(tmp_path, "hearing")
    assert state["state"] == "done" and state["retries"] == 1
    assert not (tmp_path / "failed" / "hearing.error.json").exists()
    assert state["cost"]["spent_upper_bound"] > state["cost"]["spent"] > 0


async def test_a_resumed_job_still_counts_the_doubtful_attempts_of_its_journaled_pieces(tmp_path: Path, media: Callable[..., Path]) -> None:
    """A piece whose first attempt was lost after its whole upload (maybe billed) is journaled;
    the quota then runs out and the daemon is stopped. Restarted, the job finishes, and its
    spent cost's upper bound still counts that lost attempt: the journal kept it with the piece."""
    async with serving() as (server, url):
        server.script.extend(["close_after_body", None, None, "quota"])  # piece 1 takes the slot before piece 0 retries
        config = openai_config(tmp_path, url, drain_timeout=1, **{"openai.max_concurrent_requests": 1, "openai.quota_retry_interval": 600})
        async with daemon(config):
            drop(tmp_path, media("hearing.mp3", TWO_CITIES), "hearing.mp3")
            path = tmp_path / "outbox" / "hearing.progress.json"
            await wait_until(lambda: path.exists() and progress(tmp_path, "hearing")["state"] == "waiting")
            first = progress(tmp_path, "hearing")
        assert first["waiting_reason"].startswith("quota: ") and first["pieces"]["done"] == 2
        doubtful = first["cost"]["spent_upper_bound"] - first["cost"]["spent"]
        assert doubtful > 0
        async with daemon(config):
            state = await finished(tmp_path, "hearing")
    assert state["state"] == "done" and state["pieces"]["done"] >= 3
    assert abs(state["cost"]["spent_upper_bound"] - state["cost"]["spent"] - doubtful) <= 0.0001


async def test_a_request_that_may_have_been_billed_counts_in_the_spent_upper_bound(tmp_path: Path, media: Callable[..., Path]) -> None:
    """A connection closed after the whole body was read may have been billed: the spent cost
    counts answered pieces only, its upper bound adds the lost attempt (the one piece's price
    again)."""
    async with serving() as (server, url):
        server.script.append("close_after_body")
        state = await transcribe_once(tmp_path, url, media("hearing.mp3"), **{"openai.max_concurrent_requests": 1})
    assert state["state"] == "done" and state["retries"] == 1
    cost = state["cost"]
    assert state["pieces"]["done"] == 1 and cost["spent"] > 0
    assert abs(cost["spent_upper_bound"] - 2 * cost["spent"]) <= 0.0001
