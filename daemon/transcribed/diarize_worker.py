"""A diarization worker process: loads the speaker models, then diarizes one recording fed on
stdin as it streams, or makes voiceprints of reference clips.

Run by diarize.py as `python -m transcribed.diarize_worker MODEL_DIR`, never by hand. ONNX
Runtime lives here, not in the daemon: a native crash costs this job's speaker labels, never the
daemon, and the event loop never waits on the models.

Protocol (stdin/stdout). Every request is a JSON line, some followed by raw samples:
  worker → daemon, once:  {"ready": true} or {"error": "..."}
  {"op": "voiceprint", "samples": N} + N int16    → {"voiceprint": [256 floats] | null, "speech": s}
  {"op": "known", "names": [...], "voiceprints": [[...], ...]}  (no reply; before any audio)
  {"op": "audio", "samples": N} + N int16          (no reply)
  {"op": "finish"}  → {"turns": [[start, end, label], ...], "speakers": [label, ...],
                       "cpu_seconds": s, "peak_rss_mib": m}
EOF on stdin ends the worker.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
import time
from pathlib import Path

import numpy as np

from transcribed.workers import read_exact, reply

NAME_THRESHOLD = 0.5  # cosine similarity a speaker's centroid needs to take a reference's name


def name_speakers(
    centroids: np.ndarray, names: list[str], voiceprints: np.ndarray, order: list[int]
) -> list[str]:
    """A label per speaker (centroid row): a reference's name where the voices match (one
    speaker per name, the best matches first), else `Speaker N` numbered in order of first
    appearance (`order` lists speaker rows by first appearance)."""
    from scipy.optimize import linear_sum_assignment

    labels: dict[int, str] = {}
    if len(names) and len(centroids):
        similarity = centroids @ voiceprints.T
        rows, cols = linear_sum_assignment(-similarity)
        for row, col in zip(rows, cols, strict=True):
            if similarity[row, col] >= NAME_THRESHOLD:
                labels[int(row)] = names[col]
    number = 0
    for row in order:
        if row not in labels:
            number += 1
            labels[row] = f"Speaker {number}"
    return [labels[row] for row in range(len(centroids))]


def peak_rss_mib() -> float:
    """This process's own high-water mark (VmHWM). Not getrusage's ru_maxrss, which Linux
    carries over from the parent across fork and exec: a big parent would be counted."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> int:
    # Ctrl-C in a terminal reaches the whole process group: the daemon drains and stops this
    # worker itself (it now runs beside the transcription), so it must not die of it first
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but protocol reaches stdout
    try:
        from transcribed.speaker_models import Diarizer, SpeakerModels

        models = SpeakerModels(Path(argv[1]))
    except Exception as exc:
        reply(stdout, {"error": f"could not load the speaker models from {argv[1:]}: {exc}"})
        return 1
    reply(stdout, {"ready": True})
    diarizer = Diarizer(models)
    names: list[str] = []
    voiceprints = np.zeros((0, 256), np.float32)
    while True:
        line = stdin.readline()
        if not line:
            return 0
        request = json.loads(line)
        op = request["op"]
        if op in ("audio", "voiceprint"):
            payload = read_exact(stdin, int(request["samples"]) * 2)
            if payload is None:
                return 0
            samples = np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0
            if op == "audio":
                diarizer.feed(samples)
                continue
            vector, speech = models.voiceprint(samples)
            reply(
                stdout,
                {"voiceprint": None if vector is None else vector.tolist(), "speech": speech},
            )
        elif op == "known":
            names = [str(name) for name in request["names"]]
            voiceprints = np.asarray(request["voiceprints"], np.float32).reshape(-1, 256)
        elif op == "finish":
            turns, centroids = diarizer.finish()
            order = list(dict.fromkeys(turn.speaker for turn in turns))
            labels = name_speakers(centroids, names, voiceprints, order)
            usage = resource.getrusage(resource.RUSAGE_SELF)
            reply(
                stdout,
                {
                    "turns": [[t.start, t.end, labels[t.speaker]] for t in turns],
                    "speakers": [labels[row] for row in order],
                    "cpu_seconds": usage.ru_utime + usage.ru_stime,
                    "peak_rss_mib": peak_rss_mib(),
                    "finished_at": time.time(),
                },
            )
            diarizer = Diarizer(models)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
