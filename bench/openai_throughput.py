"""The OpenAI path at its limit, measured against the server's bound (not the daemon's own plan).

Run from the repository root (2 cores; about 15 minutes with the defaults):

    .venv/bin/python bench/openai_throughput.py [--hours 2] [--long-hours 10] [--json out.json]

The server is tests/openai_server.py in its own process on 127.0.0.1, as the issue describes
it: 16 requests in flight, 500 requests a minute (a bucket of 17), a service time of
0.8 s + audio seconds / 10 with a lognormal spread (sigma 0.3, mean 1), whisper-1. The client is
the real daemon, `transcribed run` in its own process (engine openai, 16 at once, 500 rpm,
speakers off: the API path alone), fed mp3 files (64 kbps, real corpus speech over a noise
floor, bench/corpus.py) through its inbox.

What no client can beat on that server: all of the audio's service time plus one 0.8 s request
overhead per slot, shared by 16 slots: bound = (audio / 10 + 16 × 0.8) / 16 (45.8 s for 2 h).
Jitter only makes it worse, so the bound is a floor even for a lucky run.

Printed, side by side in one run (the machine is shared: ratios, not absolutes):

1. Clean, one recording: drop to done / bound, drop → claim → first request, the piece plan
   (requests, lengths), the last round (how long the last 16 requests took to drain after the
   first of them ended: slots finishing together), peak PSS and RSS of the daemon's process
   tree (daemon + ffmpeg children), sampled every 0.1 s with psutil.
2. The fault mix on the same recording: one hang, 3 % trickling answers (when the server has
   them; each spread over --trickle-seconds, 10 s by default, a few bytes a second), 3 % resets mid-upload, 5 % billed 500s (the work done, billed, the answer lost),
   5 % each of 500/503, 502 and 503 from a proxy, and a 60 s 429 storm starting 10 s after the
   drop: done / clean, pieces answered twice, billed requests beyond one per piece (a billed 500
   is the server's; anything more would be the client's re-billing), outputs byte-identical.
3. Three recordings at once: peak PSS/RSS of the process tree.
4. A long recording (--long-hours): peak PSS/RSS, against the 2-hour run (flat memory means
   within 10 %).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from corpus import build  # noqa: E402
from openai_server import FAULTS  # noqa: E402

SERVICE_BASE = 0.8
SERVICE_PER_SECOND = 0.1
JITTER = 0.3
RPM = 500.0
CONCURRENCY = 16
MIB = 1 << 20
SUFFIXES = (".txt", ".srt", ".vtt", ".json")


def bound_seconds(audio_seconds: float) -> float:
    return (audio_seconds * SERVICE_PER_SECOND + CONCURRENCY * SERVICE_BASE) / CONCURRENCY


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
        request = urllib.request.Request(self.url.removesuffix("/v1") + path, data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


# ---------------------------------------------------------------- the client: `transcribed run`


class Sampler(threading.Thread):
    """Peak PSS and RSS of a process and all its descendants, every 0.1 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak_pss = self.peak_rss = 0
        self.peak_processes = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pss = rss = count = 0
            try:
                for process in [self.root, *self.root.children(recursive=True)]:
                    try:
                        info = process.memory_full_info()
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    pss, rss, count = pss + info.pss, rss + info.rss, count + 1
            except psutil.NoSuchProcess:
                return
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.peak_processes = max(self.peak_processes, count)
            self.done.wait(0.1)


def run_daemon_on(root: Path, url: str, sources: list[Path], *, during: Any = None) -> dict[str, Any]:
    """Start `transcribed run` on root, drop the sources at once, wait until each is done or
    failed; times (wall clock) and the process tree's peak memory."""
    for name in ("inbox", "outbox", "work", "done", "failed"):
        (root / name).mkdir(parents=True, exist_ok=True)
    flags = {
        "--root": root, "--engine": "openai", "--openai-base-url": url, "--speakers": "off",
        "--openai-requests-per-minute": RPM, "--openai-max-concurrent-requests": CONCURRENCY,
        "--openai-max-cost-per-file": 100, "--job-workers": 4, "--settle-interval": 0.2,
        "--rescan-interval": 0.5, "--log-level": os.environ.get("BENCH_LOG_LEVEL", "warning"), "--web-listen": "",
    }  # fmt: skip
    command = [str(ROOT / ".venv" / "bin" / "transcribed"), "run", *[str(x) for pair in flags.items() for x in pair]]
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "TRANSCRIBED"))}
    log = (root / "daemon.log").open("wb")
    daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    sampler = Sampler(daemon.pid)
    sampler.start()
    try:
        time.sleep(2.0)  # started and idle: what is measured is the work
        for source in sources:
            shutil.copy(source, root / "inbox" / f".{source.name}")
        dropped = time.time()
        for source in sources:
            os.rename(root / "inbox" / f".{source.name}", root / "inbox" / source.name)
        claimed: dict[str, float] = {}
        states: dict[str, dict[str, Any]] = {}
        hook_done = during is None
        while len(states) < len(sources):
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited ({daemon.returncode}); see {root / 'daemon.log'}")
            for source in sources:
                path = root / "outbox" / f"{source.stem}.progress.json"
                if source.stem not in claimed and path.exists():
                    claimed[source.stem] = time.time()
                if source.stem in states or not path.exists():
                    continue
                try:
                    state = json.loads(path.read_text())
                except json.JSONDecodeError:
                    continue
                if state["state"] in ("done", "failed"):
                    states[source.stem] = {**state, "done_at": time.time()}
            if not hook_done and time.time() - dropped >= during[0]:
                during[1]()
                hook_done = True
            time.sleep(0.02)
        finished = max(s["done_at"] for s in states.values())
    finally:
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        sampler.done.set()
        sampler.join()
        log.close()
    return {
        "dropped": dropped, "claimed": min(claimed.values()), "seconds": finished - dropped, "states": states,
        "peak_pss_mib": round(sampler.peak_pss / MIB, 1), "peak_rss_mib": round(sampler.peak_rss / MIB, 1),
        "peak_processes": sampler.peak_processes,
    }  # fmt: skip


def outputs_of(root: Path, stems: list[str]) -> dict[str, bytes]:
    return {f"{stem}{suffix}": (root / "outbox" / f"{stem}{suffix}").read_bytes() for stem in stems for suffix in SUFFIXES}


# ---------------------------------------------------------------- the runs


def recording(folder: Path, name: str, hours: float, seed: int) -> Path:
    path = folder / f"{name}.mp3"
    print(f"building {path.name} ({hours:g} h of corpus speech, mp3)...", file=sys.stderr)
    build(path, hours * 3600, seed=seed)
    return path


def last_round(stats: dict[str, Any]) -> float:
    """Seconds from the end of the 16th-last answer to the end of the last: how long the final
    round of requests trails (slots finishing together make it short)."""
    times = sorted(stats["answer_times"])
    return times[-1] - times[-CONCURRENCY] if len(times) >= CONCURRENCY else 0.0


def slot_use(stats: dict[str, Any], start: float, end: float) -> dict[str, float]:
    """Where the slot-seconds between the drop and done went, from the server's in-flight log:
    the service itself (jitter included), the rest of the time requests were in flight
    (uploads, answers on the wire, 429s), and idle slots before every slot was first busy
    (the start), after the last moment all were busy (the last round) and in between."""
    log = [(t, n) for t, n in stats["in_flight_log"] if start <= t <= end]
    full = [t for t, n in log if n >= CONCURRENCY]
    first_full, last_full = (full[0], full[-1]) if full else (end, end)

    def idle(a: float, b: float) -> float:
        """Slot-seconds idle within [a, b]: nothing is in flight before the drop."""
        total, level, at = 0.0, 0, start
        for t, n in [*log, (end, 0)]:
            lo, hi = max(at, a), min(t, b)
            if hi > lo:
                total += (CONCURRENCY - min(level, CONCURRENCY)) * (hi - lo)
            level, at = n, t
        return total

    idle_start, idle_mid, idle_end = idle(start, first_full), idle(first_full, last_full), idle(last_full, end)
    total = CONCURRENCY * (end - start)
    busy = total - idle_start - idle_mid - idle_end
    return {
        "service": round(stats["service_seconds"], 1), "in_flight_not_serving": round(busy - stats["service_seconds"], 1),
        "idle_start": round(idle_start, 1), "idle_middle": round(idle_mid, 1), "idle_last_round": round(idle_end, 1),
        "all_busy_after": round(first_full - start, 2), "all_busy_until_end": round(end - last_full, 2),
    }  # fmt: skip


def clean_run(server: Server, folder: Path, name: str, sources: list[Path]) -> dict[str, Any]:
    server.call("/_control", {"reset": True, "fault_rates": {}})
    print(f"{name}: {len(sources)} recording(s)...", file=sys.stderr)
    result = run_daemon_on(folder / name, server.url, sources)
    stats = server.call("/_stats")
    result["server"] = stats
    result["first_request_after_drop"] = stats["first_request_at"] - result["dropped"]
    result["first_request_after_claim"] = stats["first_request_at"] - result["claimed"]
    return result


def fault_mix(args: argparse.Namespace, server: Server, folder: Path, main_source: Path, seed: int, clean: dict[str, Any], reference: dict[str, bytes]) -> dict[str, Any]:
    """The fault mix on the clean run's recording, with the faults drawn from `seed`."""
    rates = {"reset": 0.03, "billed_error": 0.05, "server_error": 0.05, "bad_gateway": 0.05, "unavailable": 0.05}
    if "trickle" in FAULTS:
        rates["trickle"] = 0.03
    if args.no_random_faults:
        rates = {}
    script = [None] * (args.hang_at - 1) + ["hang"] if args.hang_at else []
    server.call("/_control", {"reset": True, "fault_rates": rates, "seed": seed, "script": script})
    print(f"the fault mix (seed {seed})...", file=sys.stderr)
    storm = (10.0, lambda: server.call("/_control", {"storm_seconds": args.storm_seconds})) if args.storm_seconds else None
    faulty = run_daemon_on(folder / f"faults-{seed}", server.url, [main_source], during=storm)
    stats = server.call("/_stats")
    fstate = faulty["states"]["hearing"]
    pieces = fstate["pieces"]["total"]
    result = {
        "rates": rates, "trickle_seconds": args.trickle_seconds, "storm_seconds": args.storm_seconds, "hang_at": args.hang_at, "seconds": round(faulty["seconds"], 2), "over_clean": round(faulty["seconds"] / clean["seconds"], 3),
        "state": fstate["state"], "identical": fstate["state"] == "done" and outputs_of(folder / f"faults-{seed}", ["hearing"]) == reference,
        "requests": stats["requests"], "injected": stats["injected"], "retries": fstate["retries"], "pieces": pieces,
        "answered_twice": sum(1 for n in stats["answered"].values() if n > 1),
        "billed_requests": stats["billed_requests"], "billed_errors": stats["injected"].get("billed_error", 0),
        "pieces_sent": len(stats["answered"]),
        "rebilled_by_client": stats["billed_requests"] - len(stats["answered"]) - stats["injected"].get("billed_error", 0),
        "peak_pss_mib": faulty["peak_pss_mib"], "spent": fstate["cost"]["spent"],
        "slots": slot_use(stats, faulty["dropped"], faulty["dropped"] + faulty["seconds"]),
    }  # fmt: skip
    if storm is not None:
        # how soon after the storm every slot was busy again, and the last answer before it
        storm_end = faulty["dropped"] + storm[0] + args.storm_seconds
        refilled = [t for t, n in stats["in_flight_log"] if t >= storm_end and n >= CONCURRENCY]
        answered = [t for t in stats["answer_times"] if t <= storm_end]
        result["storm"] = {
            "all_busy_after_its_end": round(refilled[0] - storm_end, 2) if refilled else None,
            "last_answer_before_its_end": round(max(answered) - storm_end, 2) if answered else None,
            "done_after_its_end": round(faulty["dropped"] + faulty["seconds"] - storm_end, 2),
        }
    return result


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    report: dict[str, Any] = {}
    main_source = recording(folder, "hearing", args.hours, seed=7)
    audio = float(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(main_source)], capture_output=True, text=True, check=True).stdout)
    settings = {
        "requests_per_minute": RPM, "burst": CONCURRENCY + 1, "max_concurrent": CONCURRENCY,
        "service_base": SERVICE_BASE, "service_per_second": SERVICE_PER_SECOND, "service_jitter": JITTER,
        "rate_limit_wait": 2.0, "slow_seconds": 5.0, "seed": 3, "trickle_seconds": args.trickle_seconds, "trickle_interval": 1.0,
    }  # fmt: skip
    server = Server(folder, settings)
    try:
        clean = clean_run(server, folder, "clean", [main_source])
        state = clean["states"]["hearing"]
        report["clean"] = {
            "audio_seconds": audio, "bound": round(bound_seconds(audio), 2), "seconds": round(clean["seconds"], 2),
            "over_bound": round(clean["seconds"] / bound_seconds(audio), 3),
            "claim_after_drop": round(clean["claimed"] - clean["dropped"], 2),
            "first_request_after_drop": round(clean["first_request_after_drop"], 2),
            "first_request_after_claim": round(clean["first_request_after_claim"], 2),
            "requests": clean["server"]["requests"], "pieces": state["pieces"]["total"],
            "answered_twice": sum(1 for n in clean["server"]["answered"].values() if n > 1),
            "limit_violations": clean["server"]["limit_violations"], "state": state["state"],
            "peak_pss_mib": clean["peak_pss_mib"], "peak_rss_mib": clean["peak_rss_mib"], "peak_processes": clean["peak_processes"],
            "spent": state["cost"]["spent"],
            "last_round": round(last_round(clean["server"]), 2),
            "slots": slot_use(clean["server"], clean["dropped"], clean["dropped"] + clean["seconds"]),
            "answer_to_done": round(clean["dropped"] + clean["seconds"] - max(clean["server"]["answer_times"]), 2),
        }  # fmt: skip
        reference = outputs_of(folder / "clean", ["hearing"])

        # 2. the fault mix, once per fault seed (where the faults land changes with it)
        runs = [fault_mix(args, server, folder, main_source, seed, clean, reference) for seed in args.fault_seeds]
        report["faults"] = runs[0]
        report["fault_runs"] = [{"seed": seed, "seconds": r["seconds"], "over_clean": r["over_clean"], "identical": r["identical"], "answered_twice": r["answered_twice"], "rebilled_by_client": r["rebilled_by_client"], "injected": r["injected"]} for seed, r in zip(args.fault_seeds, runs, strict=True)]  # fmt: skip

        if args.faults_only:
            return report
        # 3. three at once
        others = [main_source, *(recording(folder, f"session{n}", args.hours, seed=20 + n) for n in range(2))]
        three = clean_run(server, folder, "three", others)
        report["three"] = {
            "seconds": round(three["seconds"], 2), "bound": round(bound_seconds(3 * audio), 2),
            "over_bound": round(three["seconds"] / bound_seconds(3 * audio), 3),
            "states": sorted({s["state"] for s in three["states"].values()}),
            "peak_pss_mib": three["peak_pss_mib"], "peak_rss_mib": three["peak_rss_mib"], "peak_processes": three["peak_processes"],
        }  # fmt: skip

        # 4. a long recording
        if args.long_hours:
            long_source = recording(folder, "long", args.long_hours, seed=9)
            long = clean_run(server, folder, "long", [long_source])
            long_audio = args.long_hours * 3600
            report["long"] = {
                "hours": args.long_hours, "seconds": round(long["seconds"], 2), "bound": round(bound_seconds(long_audio), 2),
                "over_bound": round(long["seconds"] / bound_seconds(long_audio), 3), "state": long["states"]["long"]["state"],
                "peak_pss_mib": long["peak_pss_mib"], "peak_rss_mib": long["peak_rss_mib"],
                "pss_over_2h": round(long["peak_pss_mib"] / clean["peak_pss_mib"], 3),
            }  # fmt: skip
    finally:
        server.stop()
    return report


def show(report: dict[str, Any]) -> None:
    if "three" not in report:
        report = {**report, "three": None}
    c = report["clean"]
    print(f"\nserver: {CONCURRENCY} in flight, {RPM:g} rpm, {SERVICE_BASE} s + audio/{1 / SERVICE_PER_SECOND:g} (lognormal sigma {JITTER}); whisper-1; daemon as its own process")
    print(f"\n1. clean, {c['audio_seconds'] / 3600:.2f} h: {c['state']}, {c['pieces']} pieces, {c['requests']} requests, {c['limit_violations']} refused for a limit, {c['answered_twice']} answered twice")
    print(f"   drop to done        {c['seconds']:>8.1f} s   bound {c['bound']:.1f} s   ratio {c['over_bound']:.3f}   (done means <= 1.15)")
    print(f"   drop -> claim       {c['claim_after_drop']:>8.2f} s   (settle interval 0.2 s)")
    print(f"   last round          {c['last_round']:>8.2f} s   (the last {CONCURRENCY} answers, first to last); last answer -> done {c['answer_to_done']:.2f} s (merge, outputs)")
    print(f"   claim -> 1st request{c['first_request_after_claim']:>8.2f} s   (done means <= 1 s)")
    u = c["slots"]
    print(f"   slot-seconds        {CONCURRENCY} x {c['seconds']:.1f} = {CONCURRENCY * c['seconds']:.0f}: service {u['service']:.0f} (the bound's {CONCURRENCY * c['bound']:.0f} without jitter), in flight but not served {u['in_flight_not_serving']:.0f}, idle: start {u['idle_start']:.0f} (all {CONCURRENCY} busy {u['all_busy_after']:.2f} s after the drop), middle {u['idle_middle']:.0f}, last round {u['idle_last_round']:.0f} ({u['all_busy_until_end']:.2f} s)")
    print(f"   peak, process tree  PSS {c['peak_pss_mib']:.0f} MiB   RSS {c['peak_rss_mib']:.0f} MiB   ({c['peak_processes']} processes at most)   (done means PSS <= 150 MiB)")
    f = report["faults"]
    hang = f"the {f['hang_at']}th request hangs" if f["hang_at"] else "no hang"
    storm = f"a {f['storm_seconds']:g} s 429 storm at 10 s" if f["storm_seconds"] else "no storm"
    print(f"\n2. fault mix {f['rates']} (trickles over {f['trickle_seconds']:g} s), {hang}, {storm}:")
    print(f"   {f['state']}, identical to clean: {f['identical']}; {f['seconds']:.1f} s = {f['over_clean']:.2f} x clean (done means <= 2)")
    print(f"   requests {f['requests']}, retries {f['retries']}, injected {f['injected']}")
    print(f"   answered twice {f['answered_twice']}; billed {f['billed_requests']} = {f['pieces_sent']} pieces sent + {f['billed_errors']} billed 500s + {f['rebilled_by_client']} re-billed by the client")
    print(f"   peak PSS {f['peak_pss_mib']:.0f} MiB; spent ${f['spent']}")
    u = f["slots"]
    print(f"   slot-seconds: service {u['service']:.0f}, in flight but not served {u['in_flight_not_serving']:.0f}, idle: start {u['idle_start']:.0f}, middle {u['idle_middle']:.0f}, last round {u['idle_last_round']:.0f} ({u['all_busy_until_end']:.2f} s)")
    if "storm" in f:
        st = f["storm"]
        print(f"   the storm's end: last answer before it {st['last_answer_before_its_end']} s, every slot busy again {st['all_busy_after_its_end']} s after it, done {st['done_after_its_end']} s after it")
    if len(report.get("fault_runs", [])) > 1:
        print("   by fault seed: " + ", ".join(f"{r['seed']}: {r['seconds']:.1f} s = {r['over_clean']:.2f} x (identical {r['identical']}, answered twice {r['answered_twice']}, re-billed {r['rebilled_by_client']})" for r in report["fault_runs"]))
    t = report["three"]
    if t is None:
        return
    print(f"\n3. three recordings at once: {t['states']}, {t['seconds']:.1f} s (bound {t['bound']:.1f} s, ratio {t['over_bound']:.3f}); peak PSS {t['peak_pss_mib']:.0f} MiB, RSS {t['peak_rss_mib']:.0f} MiB (done means PSS <= 250 MiB)")
    if "long" in report:
        lo = report["long"]
        print(f"\n4. {lo['hours']:g} h: {lo['state']}, {lo['seconds']:.1f} s (bound {lo['bound']:.1f} s, ratio {lo['over_bound']:.3f}); peak PSS {lo['peak_pss_mib']:.0f} MiB = {lo['pss_over_2h']:.2f} x the 2 h run's (flat means within 10 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--long-hours", type=float, default=10.0, help="0 skips the long run")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (the daemon's logs, outputs)")
    parser.add_argument("--trickle-seconds", type=float, default=10.0, help="how long a trickling answer takes to arrive (a few bytes a second)")
    parser.add_argument("--storm-seconds", type=float, default=60.0, help="the 429 storm's length (0: none)")
    parser.add_argument("--hang-at", type=int, default=31, help="which request hangs (0: none)")
    parser.add_argument("--no-random-faults", action="store_true", help="the fault mix without its random faults: the storm and the hang alone, to see what each costs")
    parser.add_argument("--faults-only", action="store_true", help="the clean run and the fault mix only")
    parser.add_argument("--fault-seeds", type=lambda text: [int(x) for x in text.split(",")], default=[11], help="run the fault mix once per seed, e.g. 11,12,13 (the first is shown in full)")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = run(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="openai-bench-") as folder:
            report = run(args, Path(folder))
    print(json.dumps(report, indent=1), file=sys.stderr)
    show(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
