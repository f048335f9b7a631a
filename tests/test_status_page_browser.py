"""The status page in a real headless Chromium, against a real daemon transcribing a real
recording: what a clerk sees while the job runs and after it is done. Screenshots are kept in
test-artifacts/ (status-page-running.png, status-page-done.png)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import CHROMIUM, Browser
from conftest import TWO_CITIES, make_media
from daemon_process import Daemon, FakeServer

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium is not installed (.ci/setup installs it)")]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
HOSTILE = "Sitzung <img src=x onerror=alert(1)> Ü & 'x' %2F.mp3"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FakeServer]:
    # about 0.15 s of service per second of audio, one request at a time: the 44 s recording
    # takes several seconds, long enough to watch
    running = FakeServer(tmp_path, service_per_second=0.15, max_concurrent=1)
    yield running
    running.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    running = Browser(tmp_path / "chromium-profile")
    yield running
    running.close()


def test_the_page_shows_a_running_job_the_queue_and_problems_live_then_the_transcripts(tmp_path: Path, server: FakeServer, browser: Browser) -> None:
    """While a job runs the page shows it with a moving bar, pieces, time left and cost, the
    file queued behind it and a rejected file with what to do, without being reloaded; then the
    finished job with working links to its transcripts. Names are shown as text, never as HTML."""
    root = tmp_path / "root"
    (root / "inbox").mkdir(parents=True)
    source = make_media(tmp_path / "source.mp3", TWO_CITIES)
    daemon = Daemon(root, server, "--job-workers", "2", "--openai-max-concurrent-requests", "1")
    try:
        browser.open(daemon.base + "/")
        browser.wait_for("document.body !== null && document.body.dataset.loaded === 'true'")
        assert browser.evaluate("document.querySelector('#running .empty').hidden") is False

        shutil.copy(source, tmp_path / "staging.mp3")
        os.rename(tmp_path / "staging.mp3", root / "inbox" / HOSTILE)
        (root / "inbox" / "notes.mp3").write_bytes(b"this is a text file, not a recording\n")
        # the running job's row appears and moves, with no reload
        first = browser.wait_for(
            "(() => { const r = document.querySelector('#running tbody tr');"
            " return r && r.querySelector('.percent').textContent !== '0.0 %' && r.cells[4].textContent !== '\u2013' ? r.querySelector('.percent').textContent : null })()"
        )
        browser.wait_for("document.querySelector('#problems').dataset.count === '1'")
        for name in ("second.mp3", "third.mp3", "fourth.mp3"):
            shutil.copy(source, tmp_path / "staging.mp3")
            os.rename(tmp_path / "staging.mp3", root / "inbox" / name)
        # two jobs run (two workers), the third is claimed and waits for a worker, the fourth
        # waits in the inbox
        queued = browser.wait_for(
            "(() => { const cells = r => [...r.cells].map(c => c.textContent);"
            " const claimed = [...document.querySelectorAll('#running tbody tr')].map(cells).filter(c => c[1].startsWith('queued'));"
            " const waiting = [...document.querySelectorAll('#inbox tbody tr')].map(cells);"
            " return claimed.length === 1 && waiting.length === 1 ? [claimed[0], waiting[0]] : null })()"
        )

        row = browser.evaluate(
            "(() => { const r = document.querySelector('#running tbody tr'); return {"
            " cells: [...r.cells].map(c => c.textContent), bar: r.querySelector('.fill').style.width,"
            " images: document.querySelectorAll('img').length } })()"
        )
        browser.screenshot(ARTIFACTS / "status-page-running.png")
        later = browser.wait_for(
            "(() => { const r = [...document.querySelectorAll('#running tbody tr')].find(r => r.cells[0].textContent === " + json.dumps(HOSTILE) + ");"
            " const p = r && r.querySelector('.percent').textContent; return p && p !== " + json.dumps(first) + " ? p : null })()"
        )
        problems = browser.evaluate("[...document.querySelectorAll('#problems tbody tr')].map(r => [...r.cells].map(c => c.textContent))")
        # then the finished job, with links that fetch the transcripts
        browser.wait_for("[...document.querySelectorAll('#done tbody tr')].some(r => r.cells[0].textContent.startsWith('Sitzung'))", timeout=120)
        links = browser.evaluate("[...document.querySelectorAll('#done tbody tr')].find(r => r.cells[0].textContent.startsWith('Sitzung')).querySelectorAll('a').length")
        fetched = browser.evaluate(
            "(async () => { const a = [...document.querySelectorAll('#done a')].find(a => a.title.startsWith('Sitzung') && a.title.endsWith('.txt'));"
            " const r = await fetch(a.href); return [r.status, await r.text(), a.title] })()"
        )
        browser.wait_for("document.querySelector('#done').dataset.count === '2'", timeout=120)
        browser.screenshot(ARTIFACTS / "status-page-done.png")
    finally:
        assert daemon.stop() == 0

    name, state, progress, pieces, left, cost = row["cells"]
    assert name == HOSTILE and row["images"] == 0  # the name is text: no <img> element was made
    assert state.startswith("transcribing")
    percent = float(progress.split()[0])
    assert 0 < percent < 100 and row["bar"] == f"{percent}%"
    done, total = pieces.split(",")[0].split(" of ")
    assert int(done) >= 1 and (total == "?" or int(done) < int(total))  # "?" until the cut is planned
    assert left != "\u2013"  # the en dash the page shows for "unknown"
    assert cost.startswith("$") and " of ~$" in cost
    assert float(later.split()[0]) > float(first.split()[0])  # the bar moved without a reload
    assert len(problems) == 1 and problems[0][0] == "notes.mp3"
    assert problems[0][1].startswith("rejected: this is not a recording")
    assert "drop an audio or video file" in problems[0][2]
    claimed, waiting = queued
    assert claimed[1] == "queued (claimed; waits for a free worker)"
    assert waiting[2] == "queued for a free worker" and waiting[1].endswith("KB")
    assert {claimed[0], waiting[0]} < {"second.mp3", "third.mp3", "fourth.mp3"}
    assert links == 5  # txt srt vtt docx json
    status_code, text, title = fetched
    transcript = root / "outbox" / title
    assert status_code == 200 and text == transcript.read_text("utf-8") and text.strip()
    assert (ARTIFACTS / "status-page-running.png").stat().st_size > 10_000
