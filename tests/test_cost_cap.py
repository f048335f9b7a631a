"""The cost cap without a pre-pass: spending starts with the first piece, and the cap holds on
the decoded audio as it streams, whatever the header claims. In virtual time, with the
synthetic decoder (which can be given a header that lies) and a fake engine with a price."""

from __future__ import annotations

import json
from pathlib import Path

import trio
import trio.testing
from conftest import FakeEngine, SyntheticDecoder, make_config, no_events, running, synthetic_recording
from transcribed.planning import PieceLimits

VIRTUAL_WAIT = 3600.0
PRICE = 1.0  # dollars an audio minute: the figures below are minutes


def state_of(root: Path) -> dict:
    try:
        return json.loads((root / "outbox" / "hearing.progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


async def run_one(root: Path, engine: FakeEngine, decoder: SyntheticDecoder, *, cap: float) -> dict:
    config = make_config(root, **{"openai.max_cost_per_file": cap, "settle_interval": 0})
    async with running(config, engine, decoder=decoder, watcher=no_events):
        with trio.fail_after(VIRTUAL_WAIT):
            while state_of(root).get("state") not in ("done", "failed"):
                await trio.sleep(1)
    return state_of(root)


def priced_engine() -> FakeEngine:
    return FakeEngine(capacity=4, limits=PieceLimits(target_seconds=20, max_seconds=30), price_per_minute=PRICE)


async def test_an_honest_recording_is_decoded_once_and_costs_what_it_says(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """Under the cap, no pass counts the samples first: the decoder is opened once, and the
    estimate (from the header, then the decoded length) equals what was spent."""
    engine, decoder = priced_engine(), SyntheticDecoder()
    synthetic_recording(tmp_path / "inbox" / "hearing.mp3", 600)
    state = await run_one(tmp_path, engine, decoder, cap=20)
    assert state["state"] == "done"
    assert decoder.opened == 1
    assert state["cost"]["estimated"] == state["cost"]["spent"] == 10.0


async def test_a_header_that_understates_the_length_cannot_spend_past_the_cap(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """The header claims 1 minute; the audio runs 10. With a $3 cap the file ends too_expensive
    having sent at most 3 minutes, and the reason says so."""
    engine, decoder = priced_engine(), SyntheticDecoder()
    synthetic_recording(tmp_path / "inbox" / "hearing.mp3", 600, claims=60)
    state = await run_one(tmp_path, engine, decoder, cap=3)
    explanation = json.loads((tmp_path / "failed" / "hearing.error.json").read_text())
    assert state["state"] == "failed" and explanation["error"] == "too_expensive"
    assert 0 < engine.seconds_sent <= 180
    assert state["cost"]["spent"] <= 3.0
    assert "spent at most $" in explanation["reason"] and "over the limit of $3.00" in explanation["reason"]
    assert decoder.opened == 1  # the header claimed little: no counting pass


async def test_a_header_that_overstates_the_length_is_counted_not_believed(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """The header claims 100 minutes ($100); the audio runs 1 minute ($1), under the $3 cap:
    the samples are counted first (nothing sent), and the file is transcribed."""
    engine, decoder = priced_engine(), SyntheticDecoder()
    synthetic_recording(tmp_path / "inbox" / "hearing.mp3", 60, claims=6000)
    state = await run_one(tmp_path, engine, decoder, cap=3)
    assert state["state"] == "done" and state["cost"]["spent"] == 1.0
    assert decoder.opened == 2


async def test_a_recording_over_the_cap_by_its_header_and_its_audio_sends_nothing(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """Both header and audio say 10 minutes against a $3 cap: refused before any request."""
    engine, decoder = priced_engine(), SyntheticDecoder()
    synthetic_recording(tmp_path / "inbox" / "hearing.mp3", 600)
    state = await run_one(tmp_path, engine, decoder, cap=3)
    explanation = json.loads((tmp_path / "failed" / "hearing.error.json").read_text())
    assert state["state"] == "failed" and explanation["error"] == "too_expensive"
    assert engine.calls == 0 and "nothing was sent" in explanation["reason"]


async def test_a_free_engine_is_never_capped(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """An engine that costs nothing transcribes a recording the cap would refuse if it cost."""
    engine, decoder = FakeEngine(capacity=4, limits=PieceLimits(target_seconds=20, max_seconds=30)), SyntheticDecoder()
    synthetic_recording(tmp_path / "inbox" / "hearing.mp3", 600)
    state = await run_one(tmp_path, engine, decoder, cap=0.01)
    assert state["state"] == "done" and decoder.opened == 1
