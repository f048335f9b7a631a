"""Long recordings through the real daemon: wall time, real-time factor, peak memory, temp disk.

For each requested duration, builds an MP3 recording with corpus.py (44.1 kHz mono 128 kb/s,
like a hearing recorder's file; cached in --cache-dir), starts the real daemon as a
subprocess:

    transcribed run --root ROOT --settle-interval 0.5 --log-format json

waits for its `daemon.ready` log line, then drops the file into ROOT/inbox/ (copied in as
NAME.part, renamed to NAME.mp3) and waits for ROOT/outbox/NAME.json. Every 0.5 s it samples

* memory: the RSS summed over the daemon and all its children (engine workers, ffmpeg), and the
  PSS sum (shared pages counted once) for comparison;
* temp disk: the bytes allocated under ROOT/work/ (less the claimed source itself: same
  inode as the dropped file), under ROOT/tmp/ (the daemon's TMPDIR) and any outbox file that is
  not a finished output or a progress file.

Wall time runs from the rename into the inbox to the .json appearing; RTF = wall / audio
seconds. Also prints the word error rate of the transcript against the layout, as a sanity
check. Goals: peak RSS < 1.5 GiB, peak(longest) <= 1.10 x peak(shortest), temp disk < 50 MiB,
RTF <= 0.5.

Run (the 2-hour case takes ~30-40 min on 2 cores):
    .venv/bin/python bench/long_run.py                       # --durations 1200,7200
    .venv/bin/python bench/long_run.py --durations 120,300   # smoke check, ~3 min
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
from textnorm import wer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TRANSCRIBED = REPO / ".venv/bin/transcribed"
MP3_ARGS = ["-ar", "44100", "-ac", "1", "-c:a", "libmp3lame", "-b:a", "128k"]
SAMPLE_EVERY = 0.5
GIB = 1 << 30
MIB = 1 << 20


@dataclass
class Result:
    seconds: float
    audio_seconds: float = 0.0
    wall: float = 0.0
    peak_rss: int = 0
    peak_pss: int = 0
    peak_disk: int = 0
    peak_processes: int = 0
    file_mib: float = 0.0
    wer: float = float("nan")
    segments: int = 0
    summary: dict = field(default_factory=dict)
    error: str = ""

    @property
    def rtf(self) -> float:
        return self.wall / self.audio_seconds if self.audio_seconds else float("nan")


def recording(cache: Path, seconds: float, seed: int) -> tuple[Path, Path]:
    """The MP3 and its layout for this duration, built once and cached."""
    path = cache / f"hearing_{int(seconds)}s_seed{seed}.mp3"
    layout = corpus.default_layout_path(path)
    if not (path.exists() and layout.exists()):
        print(f"building {path.name} ...", flush=True)
        started = time.monotonic()
        partial = path.with_suffix(".part.mp3")
        corpus.build(partial, seconds, seed, layout_path=layout, ffmpeg_args=MP3_ARGS)
        partial.rename(path)
        print(f"  built in {time.monotonic() - started:.0f} s ({path.stat().st_size / MIB:.1f} MiB)", flush=True)
    return path, layout


def tree_memory(process: psutil.Process) -> tuple[int, int, int]:
    """(RSS sum, PSS sum, process count) of a process and all its descendants."""
    rss = pss = count = 0
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0
    for p in family:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        count += 1
    return rss, pss, count


def temp_bytes(root: Path, source_inode: int | None, finished: set[str]) -> int:
    """Disk allocated by the daemon's temporary files (see the module docstring)."""
    total = 0
    for folder in (root / "work", root / "tmp"):
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                if st.st_ino != source_inode:
                    total += st.st_blocks * 512
    for entry in os.scandir(root / "outbox"):
        if entry.name not in finished and not entry.name.endswith(".progress.json"):
            try:
                total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                pass
    return total


class LogReader(threading.Thread):
    """Reads the daemon's JSON log lines from stderr, keeps them in a file and remembers events."""

    def __init__(self, stream, log_path: Path) -> None:
        super().__init__(daemon=True)
        self._stream = stream
        self._log = log_path.open("w")
        self.events: list[dict] = []
        self.ready = threading.Event()

    def run(self) -> None:
        for raw in self._stream:
            line = raw.decode(errors="replace")
            self._log.write(line)
            self._log.flush()
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.events.append(event)
            if event.get("event") == "daemon.ready":
                self.ready.set()


def run_one(source: Path, layout_path: Path, seconds: float, keep: bool, timeout: float) -> Result:
    result = Result(seconds=seconds, file_mib=source.stat().st_size / MIB)
    root = Path(tempfile.mkdtemp(prefix=f"transcribed-long-{int(seconds)}-"))
    for name in ("inbox", "outbox", "work", "done", "failed", "tmp"):
        (root / name).mkdir()
    env = os.environ | {"TMPDIR": str(root / "tmp")}
    daemon = subprocess.Popen(
        [str(TRANSCRIBED), "run", "--root", str(root), "--settle-interval", "0.5", "--log-format", "json"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )
    logs = LogReader(daemon.stderr, root / "daemon.log")
    logs.start()
    proc = psutil.Process(daemon.pid)
    stem = source.stem
    outputs = {f"{stem}{s}" for s in (".txt", ".srt", ".vtt", ".json")}
    out_json = root / "outbox" / f"{stem}.json"
    error_json = root / "failed" / f"{stem}.error.json"
    try:
        if not logs.ready.wait(180):
            raise RuntimeError("the daemon did not log daemon.ready within 180 s")
        idle_rss, _, _ = tree_memory(proc)
        part = root / "inbox" / f"{stem}.part"
        shutil.copyfile(source, part)
        inode = part.stat().st_ino
        part.rename(root / "inbox" / source.name)
        started = time.monotonic()
        last_print = started
        while True:
            rss, pss, count = tree_memory(proc)
            result.peak_rss = max(result.peak_rss, rss)
            result.peak_pss = max(result.peak_pss, pss)
            result.peak_processes = max(result.peak_processes, count)
            result.peak_disk = max(result.peak_disk, temp_bytes(root, inode, outputs))
            now = time.monotonic()
            if out_json.exists():
                result.wall = now - started
                break
            if error_json.exists():
                raise RuntimeError(f"the job failed: {error_json.read_text()}")
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited with status {daemon.returncode}")
            if now - started > timeout:
                raise RuntimeError(f"no transcript after {timeout:.0f} s")
            if now - last_print >= 60:
                last_print = now
                progress = root / "outbox" / f"{stem}.progress.json"
                pct = ""
                try:
                    pct = f"{json.loads(progress.read_text()).get('percent', '?')} %"
                except (OSError, ValueError):
                    pass
                print(f"  {now - started:6.0f} s  {pct:>8}  rss {rss / MIB:6.0f} MiB  peak {result.peak_rss / MIB:6.0f} MiB",
                      flush=True)
            time.sleep(SAMPLE_EVERY)
        document = json.loads(out_json.read_text())
        result.audio_seconds = float(document["audio_seconds"])
        result.segments = len(document["segments"])
        reference = [u["text"] for u in corpus.load_layout(layout_path)]
        result.wer = wer(reference, [s["text"] for s in document["segments"]])
        finished = [e for e in logs.events if e.get("event") == "job.finished"]
        if finished:
            result.summary = {k: finished[-1].get(k) for k in ("pieces", "pieces_silent", "segments", "warnings")}
        result.summary["idle_rss_mib"] = round(idle_rss / MIB)
    except Exception as exc:  # noqa: BLE001 - report and go on to the next duration
        result.error = str(exc)
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        logs.join(5)
        if keep or result.error:
            print(f"  root kept: {root} (daemon log: {root / 'daemon.log'})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--durations", default="1200,7200", help="seconds, comma-separated (default 1200,7200)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "transcribed-bench")
    parser.add_argument("--keep", action="store_true", help="keep each daemon root (logs, outputs)")
    parser.add_argument("--timeout-rtf", type=float, default=2.0, help="give up after this x audio length")
    args = parser.parse_args(argv)
    durations = [float(d) for d in args.durations.split(",") if d.strip()]
    args.cache_dir.mkdir(parents=True, exist_ok=True)

    results = []
    for seconds in durations:
        source, layout = recording(args.cache_dir, seconds, args.seed)
        print(f"running the daemon on {source.name} ({seconds:.0f} s, {source.stat().st_size / MIB:.1f} MiB) ...",
              flush=True)
        result = run_one(source, layout, seconds, args.keep, timeout=max(300.0, args.timeout_rtf * seconds))
        results.append(result)
        if result.error:
            print(f"  FAILED: {result.error}", flush=True)
        else:
            print(f"  done: wall {result.wall:.0f} s, RTF {result.rtf:.3f}, peak RSS {result.peak_rss / MIB:.0f} MiB, "
                  f"peak temp disk {result.peak_disk / MIB:.2f} MiB, WER {100 * result.wer:.1f} %  {result.summary}",
                  flush=True)

    print()
    header = (f"{'recording':>10} {'MiB':>6} {'audio s':>8} {'wall s':>7} {'RTF':>6} {'peak RSS':>9} "
              f"{'peak PSS':>9} {'procs':>5} {'temp disk':>9} {'WER %':>6}")
    print(header)
    print("-" * len(header))
    for r in results:
        if r.error:
            print(f"{r.seconds:>9.0f}s  FAILED: {r.error}")
            continue
        print(f"{r.seconds:>9.0f}s {r.file_mib:6.1f} {r.audio_seconds:8.1f} {r.wall:7.1f} {r.rtf:6.3f} "
              f"{r.peak_rss / MIB:8.0f}M {r.peak_pss / MIB:8.0f}M {r.peak_processes:5d} {r.peak_disk / MIB:8.2f}M "
              f"{100 * r.wer:6.1f}")
    ok = [r for r in results if not r.error]
    verdicts = []
    if ok:
        peak = max(r.peak_rss for r in ok)
        verdicts.append(f"peak RSS {peak / MIB:.0f} MiB < 1536 MiB: {'PASS' if peak < 1.5 * GIB else 'FAIL'}")
        disk = max(r.peak_disk for r in ok)
        verdicts.append(f"peak temp disk {disk / MIB:.2f} MiB < 50 MiB: {'PASS' if disk < 50 * MIB else 'FAIL'}")
        rtf = max(r.rtf for r in ok)
        verdicts.append(f"worst RTF {rtf:.3f} <= 0.5: {'PASS' if rtf <= 0.5 else 'FAIL'}")
    if len(ok) >= 2:
        short, long_ = min(ok, key=lambda r: r.seconds), max(ok, key=lambda r: r.seconds)
        ratio = long_.peak_rss / short.peak_rss
        verdicts.append(f"peak RSS {long_.seconds:.0f}s / {short.seconds:.0f}s = {ratio:.3f} <= 1.10: "
                        f"{'PASS' if ratio <= 1.10 else 'FAIL'}  (PSS ratio {long_.peak_pss / short.peak_pss:.3f})")
    print()
    for line in verdicts:
        print(line)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
