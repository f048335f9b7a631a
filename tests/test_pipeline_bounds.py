"""What a job holds at once, whatever the recording's length: in virtual time, with the
synthetic decoder and a fake engine whose preparing (encoding) takes a while."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import trio
import trio.testing
from conftest import FakeEngine, SyntheticDecoder, make_config, no_events, running, synthetic_recording
from transcribed.engines.base import PreparedPiece
from transcribed.jobs import PREPARERS
from transcribed.planning import PieceLimits


class SlowToPrepare(FakeEngine):
    """Encoding a piece takes 5 s of (virtual) time; counts how many are encoded at once."""

    def __init__(self) -> None:
        super().__init__(capacity=8, limits=PieceLimits(target_seconds=6, max_seconds=10))
        self.preparing = 0
        self.most_preparing = 0

    async def prepare(self, audio: np.ndarray) -> PreparedPiece:
        self.preparing += 1
        self.most_preparing = max(self.most_preparing, self.preparing)
        try:
            await trio.sleep(5)
            return await super().prepare(audio)
        finally:
            self.preparing -= 1


def done(root: Path, stem: str) -> bool:
    try:
        return json.loads((root / "outbox" / f"{stem}.progress.json").read_text())["state"] == "done"
    except (FileNotFoundError, json.JSONDecodeError):
        return False


async def test_at_most_one_piece_per_core_is_encoded_at_once_across_jobs(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """Two 1-minute recordings, an engine taking 8 pieces at once: however many pieces the
    look-ahead allows, no more than PREPARERS hold their samples for encoding at any moment
    (across both jobs), and both recordings are transcribed whole."""
    engine = SlowToPrepare()
    for name in ("one", "two"):
        synthetic_recording(tmp_path / "inbox" / f"{name}.mp3", 60)
    config = make_config(tmp_path, job_workers=2, settle_interval=0)
    async with running(config, engine, decoder=SyntheticDecoder(), watcher=no_events):
        with trio.fail_after(3600):
            while not (done(tmp_path, "one") and done(tmp_path, "two")):
                await trio.sleep(1)
    assert engine.most_preparing == PREPARERS
    assert sum(engine.pieces_seen) >= 2 * 60 * 16_000
