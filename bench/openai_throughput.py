"""The OpenAI engine against an OpenAI-like server: concurrency, rate limit and retries, measured.

Run from the repository root (2 cores; about 10 minutes with the defaults):

    .venv/bin/python bench/openai_throughput.py [--scale 1] [--hours 2] [--json out.json]

The server is tests/openai_server.py in its own process on 127.0.0.1: it decodes each upload,
answers after a service time of 0.8 s + audio seconds / 10, allows 500 requests per minute
(a bucket of 17 requests refilled at 500/min: the client's burst of 16 plus one request of
network jitter) and 16 in flight, and refuses with 429 whatever breaks those limits. The client
is the real daemon (run_daemon, engine = "openai", whisper-1's piece plan, 16 requests at once,
500 rpm), fed real files through its inbox.

Time is scaled by --scale: the server's service times are multiplied by it and both sides'
request rate divided by it, so the whole scenario runs 1/scale times faster (0.5: twice as
fast) with the same shape. Everything the client itself does (decode, plan, encode, upload)
is not scaled, so a scale below 1 only makes the client look worse.

1. Throughput. One 2-hour corpus recording (bench/corpus.py: real speech over a noise floor).
   Its piece plan (the daemon's own planner, with whisper-1's limits) gives the ideal time:
   the schedule that the concurrency cap and rate limit allow with zero overhead (pieces in
   plan order, each as soon as a slot and a permit are free). The same file is then
   transcribed by the daemon twice in one run: with 16 requests in flight, and one at a time.
   Done means: concurrent ≤ 1.25 × ideal, and sequential / concurrent ≥ 10.
2. Faults. Three 10-minute recordings dropped at once, first fault-free, then once for each
   retryable fault at a rate of 20 % of requests (429 with a wait, 500/503, reset mid-upload,
   close after the whole body, hang, slow answer): every file must finish with outputs
   byte-identical to the fault-free run, and the server must never have answered one piece
   twice. Then a permanent error (400 on every request): each job must fail at once, with
   NAME.error.json, having sent one request.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from corpus import build  # noqa: E402
from openai_server import RETRYABLE_FAULTS  # noqa: E402

from transcribed.app import run_daemon  # noqa: E402
from transcribed.config import Config, load_config  # noqa: E402
from transcribed.cutting import PieceCutter  # noqa: E402
from transcribed.engines.models import model_spec  # noqa: E402
from transcribed.engines.openai import piece_limits, upload_format  # noqa: E402
from transcribed.logs import configure_logging  # noqa: E402
from transcribed.planning import SAMPLE_RATE  # noqa: E402

SERVICE_BASE = 0.8
SERVICE_PER_SECOND = 0.1
RPM = 500.0
CONCURRENCY = 16


# ---------------------------------------------------------------- the server, in its own process


class Server:
    def __init__(self, folder: Path, settings: dict[str, Any]) -> None:
        port_file = folder / "server.url"
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "openai_server.py"), "--port-file", str(port_file), "--settings", json.dumps(settings)],
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        self.url = port_file.read_text()

    def call(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(payload).encode() if payload is not None else None
        with urllib.request.urlopen(urllib.request.Request(self.url.removesuffix("/v1") + path, data=data, method="POST" if data else "GET"), timeout=10) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


# ---------------------------------------------------------------- the client: the real daemon


def client_config(root: Path, url: str, scale: float, **flags: Any) -> Config:
    base = {
        "root": str(root), "settle_interval": "0.1", "rescan_interval": "0.5", "log_level": "error",
        "job_workers": "4", "engine": "openai", "openai.base_url": url,
        "openai.requests_per_minute": str(RPM / scale), "openai.max_concurrent_requests": str(CONCURRENCY),
        "openai.retry_delay": "0.25", "openai.max_cost_per_file": "100",
        # a hang is noticed after three times the longest service time
        "openai.request_timeout": str(round(3 * scale * (SERVICE_BASE + SERVICE_PER_SECOND * 180) + 2, 1)),
    }  # fmt: skip
    base.update({k: str(v) for k, v in flags.items()})
    return load_config(environ={}, flags=base)


@asynccontextmanager
async def daemon(config: Config) -> AsyncIterator[None]:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_daemon(config, install_signal_handlers=False, shutdown=shutdown, task_status=task_status))
        try:
            yield
        finally:
            shutdown.set()


async def transcribe(config: Config, sources: list[Path]) -> tuple[float, list[dict[str, Any]]]:
    """Drop the sources at once; the seconds until every one is done or failed, and their
    final progress files."""
    inbox, outbox = config.folder("inbox"), config.folder("outbox")
    async with daemon(config):
        started = trio.current_time()
        for source in sources:
            shutil.copy(source, inbox / f".{source.name}")
        for source in sources:
            os.rename(inbox / f".{source.name}", inbox / source.name)
        states: list[dict[str, Any]] = []
        for source in sources:
            path = outbox / f"{source.stem}.progress.json"
            while True:
                if path.exists():
                    state = json.loads(path.read_text())
                    if state["state"] in ("done", "failed"):
                        states.append(state)
                        break
                await trio.sleep(0.05)
        return trio.current_time() - started, states


# ---------------------------------------------------------------- the ideal schedule


def piece_plan(path: Path) -> list[float]:
    """The audio seconds of each piece the daemon sends for this file (silent pieces are not
    sent), in plan order."""
    limits = piece_limits(load_config(environ={}).openai, model_spec("whisper-1", "https://api.openai.com/v1"), upload_format("mp3"))
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"], capture_output=True, check=True).stdout
    cutter = PieceCutter(limits)
    audio = np.frombuffer(pcm, dtype="<i2")
    pieces = []
    for start in range(0, len(audio), 1 << 16):
        pieces.extend(cutter.feed(audio[start : start + (1 << 16)]))
    pieces.extend(cutter.finish())
    return [len(p.audio) / SAMPLE_RATE for p in pieces if not p.silent]


def ideal_seconds(plan: list[float], *, slots: int, scale: float) -> float:
    """The makespan the limits allow with zero overhead: pieces in plan order, each starting as
    soon as a slot is free and a rate permit (GCRA, burst = slots) is due."""
    interval = 60.0 / (RPM / scale)
    tolerance = (slots - 1) * interval
    free = [0.0] * slots
    tat = -math.inf
    end = 0.0
    for seconds in plan:
        slot = min(range(slots), key=free.__getitem__)
        start = max(free[slot], tat - tolerance, 0.0)
        tat = max(tat, start) + interval
        free[slot] = start + scale * (SERVICE_BASE + SERVICE_PER_SECOND * seconds)
        end = max(end, free[slot])
    return end


# ---------------------------------------------------------------- the runs


def outputs_of(root: Path, stems: list[str]) -> dict[str, bytes]:
    return {f"{stem}{suffix}": (root / "outbox" / f"{stem}{suffix}").read_bytes() for stem in stems for suffix in (".txt", ".srt", ".vtt", ".json")}


async def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    scale = args.scale
    report: dict[str, Any] = {"scale": scale}
    print(f"building recordings ({args.hours:g} h and 3 × {args.fault_minutes:g} min of corpus speech)...", file=sys.stderr)
    long_source = folder / "hearing-2h.wav"
    await trio.to_thread.run_sync(lambda: build(long_source, args.hours * 3600, seed=7))
    short_sources = []
    for number in range(3):
        path = folder / f"session{number}.wav"
        await trio.to_thread.run_sync(lambda path=path, number=number: build(path, args.fault_minutes * 60, seed=20 + number))
        short_sources.append(path)
    plan = await trio.to_thread.run_sync(piece_plan, long_source)
    settings = {
        "requests_per_minute": RPM / scale, "burst": CONCURRENCY + 1, "max_concurrent": CONCURRENCY,
        "service_base": SERVICE_BASE, "service_per_second": SERVICE_PER_SECOND, "time_scale": scale,
        "rate_limit_wait": round(2 * scale, 3), "slow_seconds": round(5 * scale, 3),
    }  # fmt: skip
    server = Server(folder, settings)
    try:
        # 1. throughput
        ideal = ideal_seconds(plan, slots=CONCURRENCY, scale=scale)
        serial_ideal = sum(scale * (SERVICE_BASE + SERVICE_PER_SECOND * s) for s in plan)
        results = {}
        for name, slots in (("concurrent", CONCURRENCY), ("sequential", 1)):
            print(f"transcribing the {args.hours:g} h recording, {name}...", file=sys.stderr)
            server.call("/_control", {"reset": True})
            root = folder / name
            config = client_config(root, server.url, scale, **{"openai.max_concurrent_requests": slots})
            seconds, [state] = await transcribe(config, [long_source])
            stats = server.call("/_stats")
            assert state["state"] == "done", state
            results[name] = {"seconds": round(seconds, 2), "requests": stats["requests"], "limit_violations": stats["limit_violations"], "max_in_flight": stats["max_in_flight"], "retries": state["retries"], "cost": state["cost"]}
        identical = outputs_of(folder / "concurrent", ["hearing-2h"]) == outputs_of(folder / "sequential", ["hearing-2h"])
        report["throughput"] = {
            "audio_hours": args.hours, "pieces": len(plan), "piece_seconds": {"min": round(min(plan), 1), "mean": round(sum(plan) / len(plan), 1), "max": round(max(plan), 1)},
            "ideal_seconds": round(ideal, 2), "ideal_sequential_seconds": round(serial_ideal, 2), **results,
            "concurrent_over_ideal": round(results["concurrent"]["seconds"] / ideal, 3),
            "speedup_over_sequential": round(results["sequential"]["seconds"] / results["concurrent"]["seconds"], 2),
            "same_transcript": identical,
        }  # fmt: skip

        # 2. faults
        stems = [p.stem for p in short_sources]
        server.call("/_control", {"reset": True})
        print("fault-free run of the three short recordings...", file=sys.stderr)
        seconds, states = await transcribe(client_config(folder / "clean", server.url, scale), short_sources)
        assert {s["state"] for s in states} == {"done"}
        clean = outputs_of(folder / "clean", stems)
        faults = {"clean": {"seconds": round(seconds, 2), "requests": server.call("/_stats")["requests"]}}
        for kind in RETRYABLE_FAULTS:
            print(f"20 % {kind}...", file=sys.stderr)
            server.call("/_control", {"reset": True, "fault_rates": {kind: 0.2}, "seed": 11})
            seconds, states = await transcribe(client_config(folder / kind, server.url, scale), short_sources)
            stats = server.call("/_stats")
            done = all(s["state"] == "done" for s in states)
            faults[kind] = {
                "seconds": round(seconds, 2), "all_done": done, "requests": stats["requests"], "injected": stats["injected"].get(kind, 0),
                "retries": sum(s["retries"] for s in states), "identical": done and outputs_of(folder / kind, stems) == clean,
                "answered_twice": sum(1 for n in stats["answered"].values() if n > 1), "limit_violations": stats["limit_violations"],
            }  # fmt: skip
        print("permanent error (400 on every request)...", file=sys.stderr)
        server.call("/_control", {"reset": True, "fault_rates": {"bad_request": 1.0}})
        seconds, states = await transcribe(client_config(folder / "permanent", server.url, scale), short_sources)
        errors = [json.loads((folder / "permanent" / "failed" / f"{stem}.error.json").read_text()) for stem in stems]
        faults["permanent"] = {
            "seconds": round(seconds, 2), "all_failed": all(s["state"] == "failed" for s in states),
            "requests": server.call("/_stats")["requests"], "retries": sum(s["retries"] for s in states), "reason": errors[0]["reason"],
        }  # fmt: skip
        report["faults"] = faults
    finally:
        server.stop()
    return report


def show(report: dict[str, Any]) -> None:
    t = report["throughput"]
    print(f"\nTime scale {report['scale']:g} (service times ×{report['scale']:g}, rates ÷{report['scale']:g}; 1/scale faster than real)")
    print(f"\n1. A {t['audio_hours']:g} h recording, whisper-1 plan: {t['pieces']} pieces of {t['piece_seconds']['min']}–{t['piece_seconds']['max']} s (mean {t['piece_seconds']['mean']} s)")
    print(f"   server: {SERVICE_BASE} s + audio/{1 / SERVICE_PER_SECOND:g}, {RPM:g} rpm, {CONCURRENCY} in flight (all ×scale)\n")
    print(f"   {'':<28}{'concurrent (16)':>18}{'sequential (1)':>18}")
    print(f"   {'ideal for the plan':<28}{t['ideal_seconds']:>16.1f} s{t['ideal_sequential_seconds']:>16.1f} s")
    print(f"   {'measured':<28}{t['concurrent']['seconds']:>16.1f} s{t['sequential']['seconds']:>16.1f} s")
    print(f"   {'requests / 429 for limits':<28}{t['concurrent']['requests']:>11} / {t['concurrent']['limit_violations']:<4}{t['sequential']['requests']:>11} / {t['sequential']['limit_violations']:<4}")
    print(f"   {'most in flight at server':<28}{t['concurrent']['max_in_flight']:>18}{t['sequential']['max_in_flight']:>18}")
    print(f"\n   concurrent / ideal = {t['concurrent_over_ideal']:.3f}  (done means ≤ 1.25)")
    print(f"   sequential / concurrent = {t['speedup_over_sequential']:.1f}×  (done means ≥ 10)")
    print(f"   same transcript both ways: {t['same_transcript']}; cost spent ${t['concurrent']['cost']['spent']}")
    f = report["faults"]
    print(f"\n2. Three short recordings at once; 20 % of requests failing in each way ({f['clean']['requests']} requests fault-free, {f['clean']['seconds']} s)\n")
    print(f"   {'fault':<18}{'done':>6}{'identical':>11}{'injected':>10}{'retries':>9}{'requests':>10}{'answered 2×':>13}{'seconds':>9}")
    for kind in RETRYABLE_FAULTS:
        r = f[kind]
        print(f"   {kind:<18}{r['all_done']!s:>6}{r['identical']!s:>11}{r['injected']:>10}{r['retries']:>9}{r['requests']:>10}{r['answered_twice']:>13}{r['seconds']:>9}")
    p = f["permanent"]
    print(f"\n   permanent (400 on every request): all failed {p['all_failed']} in {p['seconds']} s, {p['requests']} requests, {p['retries']} retries")
    print(f"   NAME.error.json reason: {p['reason']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="time scale (1 = real time, the figure the issue asks for; 0.5 runs twice as fast but the client's own work is not scaled)")
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--fault-minutes", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    configure_logging(log_format="console", level="error")
    with tempfile.TemporaryDirectory(prefix="openai-bench-") as folder:
        report = trio.run(run, args, Path(folder))
    show(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
