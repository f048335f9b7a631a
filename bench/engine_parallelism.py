"""Threads or processes for the embedded Moonshine engine, measured side by side in one run.

Run from the repository root with the project's venv (2 cores expected; takes ~20 minutes):

    .venv/bin/python bench/engine_parallelism.py                 # everything
    .venv/bin/python bench/engine_parallelism.py --minutes 2 --no-env --no-lengths   # quick
    .venv/bin/python bench/engine_parallelism.py --configs A,C2 --json /tmp/result.json

Three studies, each configuration in a fresh subprocess (no cross-contamination of the
environment, of the native library's state or of the allocator):

1. Parallelism. The same real speech (the two_cities.wav and beckett.wav samples shipped in
   moonshine_voice, resampled to 16 kHz int16, repeated to --minutes of audio and cut into ~30 s
   pieces at pauses by the daemon's own PieceCutter) through:
     A   one in-process Transcriber, ONNX default threading, pieces one after another
     B   two in-process Transcribers on two threads (trio.to_thread), MOONSHINE_ORT_SINGLE_THREAD=1
     Cn  the daemon's engine: open_embedded_engine(EmbeddedConfig(workers=n)), n pieces in flight
     +thp  the same with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (for C, passed to the workers by
           wrapping the engine's child_environment in the bench subprocess only)
   For each: wall time, real-time factor (wall / audio seconds), CPU user+sys of the whole process
   tree during the transcription phase, peak RSS (and PSS) of the process tree sampled by psutil
   from outside, and whether the transcripts equal those of the first configuration.
2. Allocator settings. One real worker process (transcribed.engines.moonshine_worker, single
   threaded, as the engine starts it) per glibc malloc setting, on the same few pieces: user and
   system CPU, minor page faults, peak RSS (VmHWM), identical transcripts or not.
3. Memory against piece length. One real worker per length (10, 20, 30, 45, 60 s): RSS after
   loading, peak RSS while transcribing, RSS left after the piece, speed.

Transcripts are compared with the first configuration's. Expect differences whenever pieces are
spread over several transcribers (B, C2, C3): a Moonshine Transcriber keeps state from one call
to the next (the same piece transcribed again after another one comes back with other
timestamps and sometimes other words), so a piece's result depends on which pieces its worker
saw before. A and C1 see the same sequence and agree exactly.

MOONSHINE_ORT_SINGLE_THREAD is read by libmoonshine when a model is loaded (setting it after the
load leaves the ONNX thread pools in place: 4 threads instead of 2 in the process), so it is set
in each subprocess's environment before anything loads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))

SAMPLE_RATE = 16_000
ASSETS = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
ASSETS = ASSETS / "site-packages" / "moonshine_voice" / "assets"
SOURCES = ("two_cities.wav", "beckett.wav")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

CONFIGS = {
    "A": "1 Transcriber in-process, ORT default threads, sequential",
    "B": "2 Transcribers on 2 Python threads, ORT single-threaded",
    "C1": "daemon engine, 1 worker process",
    "C2": "daemon engine, 2 worker processes",
    "C3": "daemon engine, 3 worker processes",
    "B+thp": "B with GLIBC_TUNABLES=glibc.malloc.hugetlb=1",
    "C2+thp": "C2 with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 for the workers",
}
THP = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}

ENV_VARIANTS: dict[str, dict[str, str]] = {
    "baseline": {},
    "ARENA_MAX=2": {"MALLOC_ARENA_MAX": "2"},
    "MMAP_THRESHOLD=32M+TRIM=1G": {
        "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
        "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    },
    "MMAP_MAX=0+TRIM=1G": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)},
    "hugetlb=1 (THP)": THP,
    "MMAP_MAX=0+TRIM=1G+hugetlb=1": {
        "MALLOC_MMAP_MAX_": "0",
        "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
    },
}

LENGTHS = (10, 20, 30, 45, 60)


# ---------------------------------------------------------------------------------------------
# audio


def decode(path: Path) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-ac", "1", "-ar", str(SAMPLE_RATE),
         "-f", "s16le", "-"],
        capture_output=True, check=True,
    ).stdout
    return np.frombuffer(raw, dtype="<i2").copy()


def speech_loop() -> np.ndarray:
    """The two samples back to back with a short pause after each: one ~73 s cycle."""
    pause = np.zeros(SAMPLE_RATE * 6 // 10, dtype=np.int16)
    parts = []
    for name in SOURCES:
        parts += [decode(ASSETS / name), pause]
    return np.concatenate(parts)


def make_pieces(total_seconds: float, target: float = 30.0, maximum: float = 45.0) -> list[np.ndarray]:
    from transcribed.cutting import PieceCutter
    from transcribed.planning import PieceLimits

    cycle = speech_loop()
    repeats = int(np.ceil(total_seconds * SAMPLE_RATE / len(cycle)))
    audio = np.tile(cycle, repeats)[: int(total_seconds * SAMPLE_RATE)]
    cutter = PieceCutter(PieceLimits(target_seconds=target, max_seconds=maximum))
    pieces = []
    for start in range(0, len(audio), SAMPLE_RATE):
        pieces += cutter.feed(audio[start : start + SAMPLE_RATE])
    pieces += cutter.finish()
    return [piece.audio for piece in pieces if not piece.silent]


def save_pieces(pieces: list[np.ndarray], path: Path) -> None:
    np.savez(path, *pieces)


def load_pieces(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


# ---------------------------------------------------------------------------------------------
# /proc helpers


def proc_stat(pid: int) -> dict[str, float]:
    """utime, stime (s) and minor/major faults of one process (all its threads)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): minflt=10, majflt=12, utime=14, stime=15
    return {
        "user": int(fields[11]) / CLK_TCK,
        "sys": int(fields[12]) / CLK_TCK,
        "minflt": int(fields[7]),
        "majflt": int(fields[9]),
    }


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def tree_pids(root: int) -> list[int]:
    import psutil

    try:
        process = psutil.Process(root)
        return [root] + [child.pid for child in process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_stat(root: int) -> dict[str, float]:
    total = {"user": 0.0, "sys": 0.0, "minflt": 0, "majflt": 0}
    for pid in tree_pids(root):
        try:
            stat = proc_stat(pid)
        except OSError:
            continue
        for key in total:
            total[key] += stat[key]
    return total


def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in after}


class TreeSampler:
    """Peak summed RSS and PSS of a process tree, sampled from another process."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0
            pids = tree_pids(self.root)
            for pid in pids:
                try:
                    with open(f"/proc/{pid}/smaps_rollup") as handle:
                        for line in handle:
                            if line.startswith("Rss:"):
                                rss += int(line.split()[1]) << 10
                            elif line.startswith("Pss:"):
                                pss += int(line.split()[1]) << 10
                except OSError:
                    pass
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, len(pids))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MALLOC_", "MOONSHINE_", "GLIBC_TUNABLES", "OMP_"))
    }
    env["PYTHONPATH"] = str(ROOT / "daemon")
    env.update(extra)
    return env


def as_segments(lines: list[list[Any]]) -> list[list[Any]]:
    """Worker lines [start, duration, text] as [start, end, text], computed as Segment does."""
    return [[float(start), float(start) + float(duration), text] for start, duration, text in lines]


# ---------------------------------------------------------------------------------------------
# study 1, child side: one configuration


def child_main(config: str, pieces_path: Path, out_path: Path) -> None:
    import trio

    from transcribed.engines.embedded import default_model_dir
    from transcribed.engines.moonshine_worker import _transcribe

    pieces = load_pieces(pieces_path)
    model_dir = str(default_model_dir())
    me = os.getpid()
    result: dict[str, Any] = {"config": config}
    config = config.split("+")[0]
    if "GLIBC_TUNABLES" in os.environ:
        # bench only: the engine gives its workers a minimal environment; pass the tunable on
        import transcribed.engines.embedded as embedded

        minimal = embedded.child_environment
        embedded.child_environment = lambda: minimal() | {  # type: ignore[assignment]
            "GLIBC_TUNABLES": os.environ["GLIBC_TUNABLES"]
        }
    results: list[Any] = [None] * len(pieces)

    async def fan_out(functions: list[Any]) -> None:
        send, receive = trio.open_memory_channel[tuple[int, np.ndarray]](len(pieces))
        for index, piece in enumerate(pieces):
            send.send_nowait((index, piece))
        send.close()

        async def drain(function: Any) -> None:
            async for index, piece in receive:
                results[index] = await function(piece)

        async with trio.open_nursery() as nursery:
            for function in functions:
                nursery.start_soon(drain, function)

    load_started = time.perf_counter()
    if config in ("A", "B"):
        from moonshine_voice.moonshine_api import ModelArch
        from moonshine_voice.transcriber import Transcriber

        count = 1 if config == "A" else 2
        transcribers = [Transcriber(model_dir, ModelArch.BASE) for _ in range(count)]
        result["load_s"] = time.perf_counter() - load_started
        result["threads"] = len(os.listdir("/proc/self/task"))
        before, started = tree_stat(me), time.perf_counter()
        if config == "A":
            for index, piece in enumerate(pieces):
                results[index] = as_segments(_transcribe(transcribers[0], piece))
        else:

            def threaded(transcriber: Any) -> Any:
                async def run(piece: np.ndarray) -> Any:
                    lines = await trio.to_thread.run_sync(_transcribe, transcriber, piece)
                    return as_segments(lines)

                return run

            trio.run(fan_out, [threaded(t) for t in transcribers])
        result["wall_s"] = time.perf_counter() - started
        result["cpu"] = diff(tree_stat(me), before)
    else:
        from transcribed.config import EmbeddedConfig
        from transcribed.engines.embedded import open_embedded_engine
        from transcribed.engines.base import transcribe_audio

        async def pooled() -> None:
            async with open_embedded_engine(EmbeddedConfig(workers=int(config[1:]))) as engine:
                result["load_s"] = time.perf_counter() - load_started
                result["threads"] = sum(
                    len(os.listdir(f"/proc/{pid}/task")) for pid in tree_pids(me)
                )

                async def run(piece: np.ndarray) -> Any:
                    piece_result = await transcribe_audio(engine, piece)
                    return [[s.start, s.end, s.text] for s in piece_result.segments]

                before, started = tree_stat(me), time.perf_counter()
                await fan_out([run] * engine.capacity)
                result["wall_s"] = time.perf_counter() - started
                result["cpu"] = diff(tree_stat(me), before)

        trio.run(pooled)
    result["results"] = results
    out_path.write_text(json.dumps(result))


def run_config(config: str, pieces_path: Path, workdir: Path) -> dict[str, Any]:
    out = workdir / f"{config}.json"
    extra = {"MOONSHINE_ORT_SINGLE_THREAD": "1"} if config.startswith("B") else {}
    env = clean_env(**extra, **(THP if config.endswith("+thp") else {}))
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", config, "--pieces", str(pieces_path), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    sampler = TreeSampler(process.pid)
    try:
        _, stderr = process.communicate()
    finally:
        sampler.stop()
        if process.poll() is None:
            process.kill()  # interrupted: do not leave the configuration running
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"configuration {config} failed:\n{stderr.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    result["peak_rss"], result["peak_pss"] = sampler.peak_rss, sampler.peak_pss
    result["processes"] = sampler.peak_procs
    return result


# ---------------------------------------------------------------------------------------------
# studies 2 and 3: drive one real worker process


def drive_worker(pieces: list[np.ndarray], extra_env: dict[str, str]) -> dict[str, Any]:
    """Start `python -m transcribed.engines.moonshine_worker` exactly as the engine does (its
    minimal environment plus MOONSHINE_ORT_SINGLE_THREAD=1, plus `extra_env`), send the pieces
    one by one, and measure it from outside through /proc."""
    from transcribed.engines.embedded import default_model_dir
    from transcribed.media import child_environment

    env = child_environment() | {"MOONSHINE_ORT_SINGLE_THREAD": "1"} | extra_env
    env["PYTHONPATH"] = str(ROOT / "daemon")
    process = subprocess.Popen(
        [sys.executable, "-m", "transcribed.engines.moonshine_worker", str(default_model_dir())],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )
    assert process.stdin is not None and process.stdout is not None
    ready = json.loads(process.stdout.readline())
    if "error" in ready:
        raise RuntimeError(ready["error"])
    pid = process.pid
    out: dict[str, Any] = {"rss_loaded": status_kib(pid, "VmRSS") << 10, "pieces": []}
    before, started = proc_stat(pid), time.perf_counter()
    for piece in pieces:
        process.stdin.write(len(piece).to_bytes(8, "little") + piece.astype("<i2").tobytes())
        process.stdin.flush()
        reply = json.loads(process.stdout.readline())
        if "error" in reply:
            raise RuntimeError(reply["error"])
        out["pieces"].append({"lines": as_segments(reply["lines"]), "rss": reply["rss"]})
    out["wall_s"] = time.perf_counter() - started
    out["cpu"] = diff(proc_stat(pid), before)
    out["peak_rss"] = status_kib(pid, "VmHWM") << 10
    process.stdin.close()
    process.wait()
    return out


# ---------------------------------------------------------------------------------------------
# reporting


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f}"


def transcripts_equal(a: list[Any], b: list[Any]) -> tuple[bool, bool, int]:
    """(texts identical, timestamps identical too, pieces whose text differs)"""
    texts_a = [" ".join(seg[2] for seg in piece) for piece in a]
    texts_b = [" ".join(seg[2] for seg in piece) for piece in b]
    differing = sum(x != y for x, y in zip(texts_a, texts_b, strict=True))
    return differing == 0, a == b, differing


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="audio for study 1")
    parser.add_argument("--configs", default="A,B,C2,C1,C3,C2+thp",
                        help="comma list of " + ",".join(CONFIGS))
    parser.add_argument("--env-seconds", type=float, default=45.0, help="audio per study 2 run")
    parser.add_argument("--no-parallel", action="store_true", help="skip study 1")
    parser.add_argument("--no-env", action="store_true", help="skip study 2 (allocator)")
    parser.add_argument("--no-lengths", action="store_true", help="skip study 3 (piece length)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--pieces", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.pieces, args.out)
        return

    print(f"{os.cpu_count()} CPUs, affinity {len(os.sched_getaffinity(0))}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    everything: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        workdir = Path(tmp)

        # -- study 1 ---------------------------------------------------------------------------
        if not args.no_parallel:
            pieces = make_pieces(args.minutes * 60)
            audio_s = sum(len(p) for p in pieces) / SAMPLE_RATE
            lengths = [len(p) / SAMPLE_RATE for p in pieces]
            print(f"\n[1] {len(pieces)} pieces, {audio_s:.0f} s of audio "
                  f"(pieces {min(lengths):.1f}-{max(lengths):.1f} s)", flush=True)
            pieces_path = workdir / "pieces.npz"
            save_pieces(pieces, pieces_path)
            runs = []
            for config in args.configs.split(","):
                print(f"    running {config}: {CONFIGS[config]} ...", flush=True)
                runs.append(run_config(config, pieces_path, workdir))
            reference = runs[0]["results"]
            rows = []
            for run in runs:
                cpu = run["cpu"]
                same_text, same_exact, differing = transcripts_equal(reference, run["results"])
                rows.append([
                    f"{run['config']:6} {CONFIGS[run['config']]}",
                    f"{run['load_s']:.1f}", f"{run['wall_s']:.1f}",
                    f"{run['wall_s'] / audio_s:.3f}",
                    f"{cpu['user']:.1f}", f"{cpu['sys']:.1f}", f"{cpu['user'] + cpu['sys']:.1f}",
                    f"{(cpu['user'] + cpu['sys']) / run['wall_s']:.2f}",
                    f"{cpu['minflt'] / 1e6:.1f}",
                    mib(run["peak_rss"]), mib(run["peak_pss"]), str(run["processes"]),
                    "yes" if same_exact else ("text" if same_text else f"no ({differing})"),
                ])
            print()
            print(table(["configuration", "load s", "wall s", "RTF", "user s", "sys s", "cpu s",
                         "cores", "Mflt", "peak RSS MiB", "PSS MiB", "procs", f"same as {runs[0]['config']}"],
                        rows))
            everything["parallel"] = {"audio_s": audio_s, "pieces": len(pieces), "runs": runs}
            by = {run["config"]: run for run in runs}
            if "B" in by and "C2" in by:
                b, c = by["B"], by["C2"]
                print(f"\n    two threads vs two processes: wall {b['wall_s']:.1f} s vs "
                      f"{c['wall_s']:.1f} s ({(b['wall_s'] / c['wall_s'] - 1) * 100:+.0f}%), "
                      f"peak RSS {mib(b['peak_rss'])} vs {mib(c['peak_rss'])} MiB")

        # -- study 2 ---------------------------------------------------------------------------
        if not args.no_env:
            sample = make_pieces(args.env_seconds)
            sample_s = sum(len(p) for p in sample) / SAMPLE_RATE
            print(f"\n[2] allocator settings: one worker (single-threaded ORT), {len(sample)} "
                  f"pieces, {sample_s:.0f} s of audio", flush=True)
            variants = {}
            for name, extra in ENV_VARIANTS.items():
                print(f"    running {name} ...", flush=True)
                variants[name] = drive_worker(sample, extra)
            base = variants["baseline"]
            base_lines = [p["lines"] for p in base["pieces"]]
            rows = []
            for name, run in variants.items():
                cpu = run["cpu"]
                same_text, same_exact, _ = transcripts_equal(base_lines, [p["lines"] for p in run["pieces"]])
                total = cpu["user"] + cpu["sys"]
                rows.append([
                    name, f"{run['wall_s']:.1f}", f"{cpu['user']:.1f}", f"{cpu['sys']:.1f}",
                    f"{total:.1f}", f"{total / (base['cpu']['user'] + base['cpu']['sys']) * 100:.0f}%",
                    f"{cpu['minflt'] / 1e6:.2f}", mib(run["rss_loaded"]), mib(run["peak_rss"]),
                    mib(run["pieces"][-1]["rss"]),
                    "yes" if same_exact else ("text" if same_text else "NO"),
                ])
            print()
            print(table(["setting", "wall s", "user s", "sys s", "cpu s", "vs base", "Mflt",
                         "loaded MiB", "peak MiB", "after MiB", "same"], rows))
            everything["allocator"] = {"audio_s": sample_s, "variants": variants}

        # -- study 3 ---------------------------------------------------------------------------
        if not args.no_lengths:
            cycle = speech_loop()
            loop = np.tile(cycle, 2)
            print("\n[3] one worker per piece length (single-threaded ORT, default allocator)",
                  flush=True)
            rows, lengths_out = [], {}
            for seconds in LENGTHS:
                print(f"    running {seconds} s ...", flush=True)
                run = drive_worker([loop[: seconds * SAMPLE_RATE]], {})
                lengths_out[seconds] = run
                cpu = run["cpu"]
                rows.append([
                    f"{seconds} s", f"{run['wall_s']:.1f}", f"{run['wall_s'] / seconds:.3f}",
                    f"{(cpu['user'] + cpu['sys']) / seconds:.2f}", f"{cpu['sys'] / seconds:.2f}",
                    mib(run["rss_loaded"]), mib(run["peak_rss"]),
                    mib(run["peak_rss"] - run["rss_loaded"]), mib(run["pieces"][0]["rss"]),
                ])
            print()
            print(table(["piece", "wall s", "RTF", "cpu s/audio s", "sys s/audio s", "loaded MiB",
                         "peak MiB", "peak-loaded", "after MiB"], rows))
            everything["lengths"] = lengths_out

    if "parallel" in everything:
        runs = {run["config"]: run for run in everything["parallel"]["runs"]}
        best = min(runs.values(), key=lambda run: run["wall_s"])
        print(f"\nConclusion: fastest is {best['config']} ({CONFIGS[best['config']]}), RTF "
              f"{best['wall_s'] / everything['parallel']['audio_s']:.3f}; "
              + ", ".join(f"{k} {v['wall_s'] / best['wall_s']:.2f}x" for k, v in runs.items())
              + " of its wall time.")
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
