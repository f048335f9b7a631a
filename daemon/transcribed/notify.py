"""Per-job hooks: once a job is concluded, tell the metrics, run notify.command, POST the webhook.

The summary (one JSON object, the same for both hooks; documented in the README):

    {"source": "hearing.mp3", "job_id": "...", "outcome": "done" | "failed",
     "outputs": ["/…/outbox/hearing.txt", …], "error": null | "too_long", "reason": null | "…",
     "what_to_do": null | "…", "seconds": 812.4, "audio_seconds": 3600.0, "cost": 0.36,
     "finished_at": "2026-12-01T18:22:57Z", "profile": null | "spanish"}

A hook that fails, hangs past notify.timeout, or cannot be started is logged
(`notify.failed`) and changes nothing else: the job is concluded before the hooks run. The
command runs without a shell, with an environment holding only PATH and LANG (never the API
key), in its own session. The webhook is tried notify.webhook_attempts times with a growing
pause. Both run concurrently; the job worker waits for them (bounded by the timeouts), so
hooks never pile up faster than jobs finish.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import structlog
import trio

from transcribed import metrics
from transcribed.config import Config
from transcribed.journal import JobRecord
from transcribed.media import child_environment
from transcribed.progress import JobProgress

logger = structlog.get_logger()

WEBHOOK_FIRST_PAUSE = 1.0
OUTPUT_TAIL = 400


def job_report(
    record: JobRecord, progress: JobProgress, seconds: float, outbox: Path, finished_at: str
) -> dict[str, Any]:
    """The summary of a concluded job, from its record (the outcome) and progress (the figures)."""
    failed = record.state == "failed"
    error = record.error or {}
    return {
        "source": record.display_name,
        "job_id": record.job_id,
        "outcome": "failed" if failed else "done",
        "outputs": [] if failed else [str(outbox / name) for name in record.outputs or []],
        "error": error.get("error") if failed else None,
        "reason": error.get("reason") if failed else None,
        "what_to_do": error.get("what_to_do") if failed else None,
        "seconds": round(seconds, 2),
        "audio_seconds": None
        if progress.audio_seconds_total is None
        else round(progress.audio_seconds_total, 2),
        "cost": round(progress.spent_cost, 4),
        "finished_at": finished_at,
        "profile": record.profile,
    }


async def announce_job(
    config: Config, record: JobRecord, progress: JobProgress, seconds: float
) -> None:
    """The job boundary's one call once a job is concluded: count it, run the hooks."""
    finished_at = progress.finished_at or progress.updated_at
    summary = job_report(record, progress, seconds, config.folder("outbox"), finished_at)
    metrics.count_job(summary)
    await run_hooks(config, summary)


async def run_hooks(config: Config, summary: dict[str, Any]) -> None:
    """Run the configured hooks for one summary; never raises (but lets Cancelled through)."""
    notify = config.notify
    if not notify.command and not notify.webhook_url:
        return
    payload = json.dumps(summary, ensure_ascii=False).encode("utf-8")
    async with trio.open_nursery() as nursery:
        if notify.command:
            nursery.start_soon(run_command, list(notify.command), payload, notify.timeout, summary)
        if notify.webhook_url:
            nursery.start_soon(
                post_webhook,
                notify.webhook_url,
                payload,
                notify.timeout,
                notify.webhook_attempts,
                summary,
            )


def _tail(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "replace")[-OUTPUT_TAIL:].strip()


async def run_command(
    argv: list[str], payload: bytes, time_limit: float, summary: dict[str, Any]
) -> None:
    log = logger.bind(job_id=summary.get("job_id"), hook="command", command=argv[0])
    try:
        with trio.fail_after(time_limit):
            result = await trio.run_process(
                argv,
                stdin=payload,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=child_environment(),
                start_new_session=True,
            )
    except trio.TooSlowError:
        log.warning(
            "notify.failed", error=f"the command took longer than {time_limit:g} s and was killed"
        )
        return
    except OSError as exc:
        log.warning(
            "notify.failed", error=f"the command could not be started: {exc.strerror or exc}"
        )
        return
    if result.returncode != 0:
        log.warning(
            "notify.failed",
            error=f"the command exited with {result.returncode}",
            stderr=_tail(result.stderr),
        )
        return
    log.info("notify.sent")


async def post_webhook(
    url: str, payload: bytes, time_limit: float, attempts: int, summary: dict[str, Any]
) -> None:
    log = logger.bind(job_id=summary.get("job_id"), hook="webhook")
    pause = WEBHOOK_FIRST_PAUSE
    error = "not tried"
    async with httpx.AsyncClient(timeout=time_limit, follow_redirects=False) as client:
        for attempt in range(1, attempts + 1):
            try:
                with trio.fail_after(time_limit):
                    response = await client.post(
                        url, content=payload, headers={"content-type": "application/json"}
                    )
            except (httpx.HTTPError, trio.TooSlowError) as exc:
                error = f"{type(exc).__name__}"
            else:
                if 200 <= response.status_code < 300:
                    log.info("notify.sent", attempts=attempt)
                    return
                error = f"HTTP {response.status_code}"
            if attempt < attempts:
                log.info("notify.retrying", attempt=attempt, error=error)
                await trio.sleep(pause)
                pause *= 2
    log.warning("notify.failed", error=f"gave up after {attempts} attempts: {error}")
