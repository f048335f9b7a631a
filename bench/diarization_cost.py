"""What labelling speakers costs a long recording, end to end, side by side in one run: the real
daemon's wall time and the peak memory of its whole process tree, with speakers off, with the
diarization after the merge (as it was), and with it beside the transcription (as it is).

The recording is bench/diarization.py's: seven real people in turns of 3-45 s (the
moonshine-voice wheel's reader, the pyannote-audio wheel's two, KDE KLettres' four from
Debian), encoded like a hearing recorder's file (MP3, 44.1 kHz mono 128 kb/s; cached in
--cache-dir). Its dense speech (and its Spanish, French and Lithuanian letters) cost the
English model more CPU than a hearing's (measured: 1.4 times), so `--recording reading` takes
bench/long_run.py's recording instead (bench/corpus.py: the moonshine wheel's English reading
with pauses), the one the daemon's transcription figures were measured on. Each variant is a fresh `transcribed run` subprocess on a fresh root, fed the
file through its inbox (copied as NAME.part, renamed); the wall time runs from the rename to
NAME.json appearing. The variants:

  off         speakers = off: the transcription alone
  after       speakers = on, the diarization after the merge: the daemon of --before (a
              commit before the pass ran beside the transcription, exported with git archive
              and run from the same venv and models)
  beside      speakers = on, this checkout: the diarization beside the transcription

Every 0.5 s the daemon and all its descendants (engine workers, the diarization worker,
ffmpeg) are sampled with psutil: the sum of their RSS and of their PSS (shared pages counted
once, so PSS is what the machine really holds), and each kind's own peak. The diarization
worker's own CPU seconds come from the daemon's `job.diarized` log line.

--rounds N runs the variants N times in rotating order (noise on a shared machine falls on all
of them alike); the table shows each run and the median per variant. The extra wall time is
(variant - off) / off of the medians.

    .venv/bin/python bench/diarization_cost.py --seconds 1200            # 20 min, embedded
    .venv/bin/python bench/diarization_cost.py --seconds 7200            # the 2-hour figures
    .venv/bin/python bench/diarization_cost.py --seconds 1200 --engine openai   # fake server

With --engine openai the transcription goes to tests/openai_server.py on 127.0.0.1 (service
time 0.8 s + audio/10 per piece, 16 at once, 500 requests a minute, as in
bench/openai_throughput.py): network-bound, so the diarization has a core to itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
from long_run import LogReader  # noqa: E402

MIB = 1 << 20
SAMPLE_EVERY = 0.5
MP3_ARGS = ["-ar", "44100", "-ac", "1", "-c:a", "libmp3lame", "-b:a", "128k"]
BEFORE = "070e23f"  # the last commit whose daemon diarized after the merge
VARIANTS = ("off", "after", "beside")


@dataclass
class Run:
    variant: str
    wall: float = 0.0
    peak_rss: int = 0
    peak_pss: int = 0
    peak_processes: int = 0
    peak_by_kind: dict[str, int] = field(default_factory=dict)  # RSS of each kind's largest
    cpu: float = 0.0  # CPU seconds of the whole tree while the job ran
    diarized: dict[str, float] = field(default_factory=dict)
    speakers: int = 0
    segments: int = 0
    error: str = ""


def reading(cache: Path, seconds: float, seed: int) -> Path:
    """bench/long_run.py's recording (bench/corpus.py: the moonshine wheel's real English
    reading, with pauses, over a noise floor) as an MP3: the one the 2-hour transcription
    figures were measured on."""
    import corpus
    import diarization
    import long_run

    corpus.ASSETS = diarization.moonshine_assets()
    return long_run.recording(cache, seconds, seed)[0]


def recording(cache: Path, seconds: float, seed: int) -> Path:
    """The seven-voice recording as an MP3, built once and cached."""
    path = cache / f"voices_{int(seconds)}s_seed{seed}.mp3"
    if not path.exists():
        import diarization

        print(f"building {path.name} ...", flush=True)
        started = time.monotonic()
        wav = cache / f"voices_{int(seconds)}s_seed{seed}.wav"
        diarization.build(seconds, seed, wav)
        partial = path.with_suffix(".part.mp3")
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), *MP3_ARGS, str(partial)],
            check=True,
        )
        wav.unlink()
        partial.rename(path)
        print(f"  built in {time.monotonic() - started:.0f} s", flush=True)
    return path


def export_before(commit: str, folder: Path) -> Path:
    """The daemon package as it was at `commit` (git archive of daemon/), for PYTHONPATH."""
    target = folder / f"daemon-{commit}"
    if not (target / "daemon" / "transcribed").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", commit, "daemon"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "daemon"


def kind_of(process: psutil.Process) -> str:
    try:
        line = " ".join(process.cmdline())
    except psutil.Error:
        return "?"
    if "diarize_worker" in line:
        return "diarization worker"
    if "moonshine_worker" in line:
        return "moonshine worker"
    if "ffmpeg" in line or "ffprobe" in line or "prlimit" in line:
        return "ffmpeg"
    if "transcribed" in line and " run " in f" {line} ":
        return "daemon"
    return "other"


def sample(daemon: psutil.Process, run: Run) -> None:
    try:
        family = [daemon, *daemon.children(recursive=True)]
    except psutil.Error:
        return
    rss = pss = count = 0
    for process in family:
        try:
            info = process.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        count += 1
        kind = kind_of(process)
        run.peak_by_kind[kind] = max(run.peak_by_kind.get(kind, 0), info.rss)
    run.peak_rss = max(run.peak_rss, rss)
    run.peak_pss = max(run.peak_pss, pss)
    run.peak_processes = max(run.peak_processes, count)


def tree_cpu(daemon: psutil.Process) -> float:
    """CPU seconds used so far by the daemon, its children that have exited (reaped: counted
    in its children_* times) and those still running (and theirs)."""
    try:
        times = daemon.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        children = daemon.children(recursive=True)
    except psutil.Error:
        return 0.0
    for child in children:
        try:
            own = child.cpu_times()
        except psutil.Error:
            continue
        total += own.user + own.system
    return total


def run_variant(
    variant: str, source: Path, *, pythonpath: Path, engine_flags: list[str], timeout: float
) -> Run:
    run = Run(variant)
    root = Path(tempfile.mkdtemp(prefix=f"transcribed-speakers-{variant}-"))
    for name in ("inbox", "outbox", "work", "done", "failed", "tmp"):
        (root / name).mkdir()
    env = os.environ | {"TMPDIR": str(root / "tmp"), "PYTHONPATH": str(pythonpath)}
    env.setdefault("OPENAI_API_KEY", "sk-bench-not-a-key")
    command = [
        sys.executable, "-m", "transcribed", "run", "--root", str(root),
        "--settle-interval", "0.5", "--log-format", "json", "--web-listen", "",
        "--speakers", "off" if variant == "off" else "on", *engine_flags,
    ]  # fmt: skip
    daemon = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=env, cwd=root,
    )  # fmt: skip
    logs = LogReader(daemon.stderr, root / "daemon.log")
    logs.start()
    process = psutil.Process(daemon.pid)
    out_json = root / "outbox" / f"{source.stem}.json"
    failed = root / "failed" / f"{source.stem}.error.json"
    try:
        if not logs.ready.wait(180):
            raise RuntimeError("the daemon did not log daemon.ready within 180 s")
        part = root / "inbox" / f"{source.stem}.part"
        shutil.copyfile(source, part)
        cpu_before = tree_cpu(process)
        part.rename(root / "inbox" / source.name)
        started = time.monotonic()
        cpu_seen = cpu_before
        while not out_json.exists():
            sample(process, run)
            cpu_seen = max(cpu_seen, tree_cpu(process))
            if failed.exists():
                raise RuntimeError(f"the job failed: {failed.read_text()}")
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited with status {daemon.returncode}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"no transcript after {timeout:.0f} s")
            time.sleep(SAMPLE_EVERY)
        run.wall = time.monotonic() - started
        run.cpu = max(cpu_seen, tree_cpu(process)) - cpu_before
        document = json.loads(out_json.read_text())
        run.speakers = len(document.get("speakers") or [])
        run.segments = len(document["segments"])
        for event in logs.events:
            if event.get("event") == "job.diarized":
                run.diarized = {k: float(event[k]) for k in ("seconds", "cpu_seconds", "peak_rss_mib")}
    except Exception as exc:  # report it and go on with the next variant
        run.error = str(exc)
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        logs.join(5)
        if run.error:
            print(f"  root kept: {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return run


class FakeServer:
    """tests/openai_server.py in its own process, as bench/openai_throughput.py runs it."""

    def __init__(self, folder: Path) -> None:
        port_file = folder / "server.url"
        settings = {
            "requests_per_minute": 500.0, "burst": 17, "max_concurrent": 16,
            "service_base": 0.8, "service_per_second": 0.1,
        }  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "openai_server.py"), "--port-file",
             str(port_file), "--settings", json.dumps(settings)],
            cwd=REPO / "tests",
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.05)
        self.url = port_file.read_text()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=1200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--engine", choices=("embedded", "openai"), default="embedded")
    parser.add_argument(
        "--recording",
        choices=("voices", "reading"),
        default="voices",
        help="seven real voices in turns (bench/diarization.py), or bench/long_run.py's English "
        "reading with pauses (bench/corpus.py)",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--before", default=BEFORE, help="commit of the 'after' variant")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "transcribed-bench"
    )
    args = parser.parse_args()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    variants = [v for v in args.variants.split(",") if v]
    build = recording if args.recording == "voices" else reading
    source = build(args.cache_dir, args.seconds, args.seed)
    paths = {
        "off": REPO / "daemon",
        "beside": REPO / "daemon",
        "after": export_before(args.before, args.cache_dir),
    }
    server = None
    engine_flags = ["--engine", args.engine]
    if args.engine == "openai":
        server = FakeServer(Path(tempfile.mkdtemp(prefix="fake-openai-")))
        engine_flags += [
            "--openai-base-url", server.url, "--openai-max-concurrent-requests", "16",
            "--openai-requests-per-minute", "500", "--openai-max-cost-per-file", "100",
            "--openai-retry-delay", "0.25",
        ]  # fmt: skip
    print(
        f"{source.name}: {args.seconds:.0f} s, engine {args.engine}, {os.cpu_count()} cores "
        "(shared: the load before each run says how much others used), "
        f"load {os.getloadavg()[0]:.1f}; 'after' is commit {args.before}",
        flush=True,
    )
    runs: list[Run] = []
    try:
        for round_number in range(args.rounds):
            order = variants[round_number % len(variants) :] + variants[: round_number % len(variants)]
            for variant in order:
                print(f"round {round_number + 1}: {variant} ...", flush=True)
                run = run_variant(
                    variant, source, pythonpath=paths[variant], engine_flags=engine_flags,
                    timeout=max(600.0, 1.5 * args.seconds),
                )  # fmt: skip
                runs.append(run)
                print(
                    f"  {run.error or f'wall {run.wall:.1f} s, CPU {run.cpu:.0f} s, peak PSS {run.peak_pss / MIB:.0f} MiB, RSS {run.peak_rss / MIB:.0f} MiB'}"
                    f"  (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
    finally:
        if server is not None:
            server.stop()
    report(runs, variants, args.seconds)
    return 1 if any(r.error for r in runs) else 0


def report(runs: list[Run], variants: list[str], seconds: float) -> None:
    print()
    header = (
        f"{'variant':>8} {'wall s':>8} {'x real':>7} {'CPU s':>7} {'peak PSS':>9} {'peak RSS':>9} {'procs':>5} "
        f"{'daemon':>7} {'moonshine':>9} {'diarizer':>8} {'ffmpeg':>7} {'pass s':>7} {'pass CPU':>8} "
        f"{'speakers':>8}"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        if run.error:
            print(f"{run.variant:>8}  FAILED: {run.error}")
            continue
        kinds = run.peak_by_kind
        print(
            f"{run.variant:>8} {run.wall:8.1f} {run.wall / seconds:7.4f} {run.cpu:7.0f} {run.peak_pss / MIB:8.0f}M "
            f"{run.peak_rss / MIB:8.0f}M {run.peak_processes:5d} "
            f"{kinds.get('daemon', 0) / MIB:6.0f}M {kinds.get('moonshine worker', 0) / MIB:8.0f}M "
            f"{kinds.get('diarization worker', 0) / MIB:7.0f}M {kinds.get('ffmpeg', 0) / MIB:6.0f}M "
            f"{run.diarized.get('seconds', 0):7.1f} {run.diarized.get('cpu_seconds', 0):8.1f} "
            f"{run.speakers:8d}"
        )
    medians = {
        v: statistics.median(r.wall for r in runs if r.variant == v and not r.error)
        for v in variants
        if any(r.variant == v and not r.error for r in runs)
    }
    print()
    for variant, wall in medians.items():
        extra = f", {100 * (wall / medians['off'] - 1):+.1f} % over off" if "off" in medians else ""
        peak = max(r.peak_pss for r in runs if r.variant == variant and not r.error)
        peak_rss = max(r.peak_rss for r in runs if r.variant == variant and not r.error)
        print(
            f"{variant:>8}: median wall {wall:.1f} s{extra}; peak PSS {peak / MIB:.0f} MiB, "
            f"RSS {peak_rss / MIB:.0f} MiB (goal 1536)"
        )


if __name__ == "__main__":
    sys.exit(main())
