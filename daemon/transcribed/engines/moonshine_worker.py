"""A Moonshine worker process: loads the model, then transcribes pieces sent on stdin.

Run by the embedded engine as `python -m transcribed.engines.moonshine_worker MODEL_DIR`, never
by hand; the engine sends each worker one piece (see EmbeddedEngine for why). The native
runtime lives here, not in the daemon: a crash or a leak in it costs one worker, and the
daemon's event loop never waits on native code.

Protocol (stdin/stdout, one request at a time):
  worker → daemon, once:  a JSON line {"ready": true} or {"error": "..."}
  daemon → worker:        8 bytes little-endian sample count N, then N int16 samples (16 kHz mono)
  worker → daemon:        a JSON line {"lines": [[start, duration, text], ...]}
                          or {"error": "..."}
EOF on stdin ends the worker.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from typing import Any

import numpy as np

from transcribed.planning import SAMPLE_RATE
from transcribed.workers import read_exact, reply


def _transcribe(transcriber: Any, audio: np.ndarray) -> list[list[Any]]:
    from moonshine_voice.errors import check_error
    from moonshine_voice.moonshine_api import TranscriptC

    samples = np.ascontiguousarray(audio, dtype=np.float32) / 32768.0
    if len(samples) == 0:
        return []
    # The public transcribe_without_streaming() copies the samples into a ctypes array one
    # Python float at a time (about 1 s per minute of audio); hand the C API the buffer instead.
    out = ctypes.POINTER(TranscriptC)()
    error = transcriber._lib.moonshine_transcribe_without_streaming(
        transcriber._handle,
        samples.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
        len(samples),
        SAMPLE_RATE,
        0,
        ctypes.byref(out),
    )
    check_error(error)
    transcript = transcriber._parse_transcript(out)
    return [
        [float(line.start_time), float(line.duration), line.text.strip()]
        for line in transcript.lines
        if line.text.strip()
    ]


def main(argv: list[str]) -> int:
    # Ctrl-C in a terminal reaches the whole process group: the daemon drains and stops its
    # workers itself, so a worker must not die of it mid-piece (or print a traceback).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # Nothing but protocol may reach stdout: the runtime's own prints go to stderr.
    sys.stdout = sys.stderr
    try:
        from moonshine_voice.moonshine_api import ModelArch
        from moonshine_voice.transcriber import Transcriber

        transcriber = Transcriber(argv[1], ModelArch.BASE)
    except Exception as exc:
        reply(stdout, {"error": f"could not load the Moonshine model from {argv[1:]}: {exc}"})
        return 1
    reply(stdout, {"ready": True})
    while True:
        header = read_exact(stdin, 8)
        if header is None:
            return 0
        count = int.from_bytes(header, "little")
        payload = read_exact(stdin, count * 2)
        if payload is None:
            return 0
        try:
            lines = _transcribe(transcriber, np.frombuffer(payload, dtype="<i2"))
        except Exception as exc:
            reply(stdout, {"error": f"{type(exc).__name__}: {exc}"})
            continue
        reply(stdout, {"lines": lines})


if __name__ == "__main__":
    sys.exit(main(sys.argv))
