"""A real OpenAI-like transcription server on 127.0.0.1, for the tests and the benchmarks.

It speaks HTTP/1.1 (h11 over Trio sockets) and behaves like `POST /v1/audio/transcriptions`:

* parses the multipart body and checks every field name against OpenAI's published schema
  (`CreateTranscriptionRequest`; array fields only as `name[]`), the model, the response format
  the model allows, and the file's extension;
* decodes the upload with ffmpeg to learn its true duration: gpt-4o models refuse more than
  1400 s, every model less than 0.1 s; bodies over 26,214,400 bytes get 413;
* enforces a requests-per-minute limit (a token bucket of `burst` requests refilled at rpm/60
  per second, as OpenAI's x-ratelimit-reset-requests describes) and a concurrency limit, with
  429s carrying retry-after-ms, Retry-After and x-ratelimit-* headers; every such refusal is
  counted as a limit violation by the client;
* answers a simulated service time (`service_base + service_per_second × audio seconds`,
  times `time_scale`) after the upload's last byte (its own decoding inside that time) with verbose_json or json whose text is derived from the upload's bytes
  (sha256), so transcripts compare across runs;
* injects faults on request: rate_limit (a 429 with a wait), server_error (500/503 after the
  body), reset (RST in the middle of the upload), close_after_body (the whole body read, then
  the connection closed without an answer), hang (the body read, no answer ever), slow (the
  answer comes `slow_seconds` late), quota (429 insufficient_quota), unauthorized (401 echoing
  part of the key, as OpenAI does), bad_request (400), billed_error (the whole service time,
  billed, then a 500), bad_gateway / unavailable (a proxy's 502 / 503 at once), and answers
  that cannot be trusted: trickle (the answer a few bytes every `trickle_interval` s over
  `trickle_seconds`), stall (the headers and half the answer, then nothing ever), oversized (a
  200 of `oversized_bytes` of JSON text, streamed, whatever the piece), oversized_error (a 500
  as large), malformed (a 200 whose JSON is cut in half). Faults come from a script (the next
  requests, in order) or at random with a rate per kind (seeded); a 429 storm
  (`{"storm_seconds": N}` to /_control) refuses every request for N seconds;
* spreads service times with a lognormal factor (`service_jitter`, mean 1) when asked, and
  counts what it billed and when the first request came;
* with a `corpus` (speech_corpus.Corpus, a recording whose every word time is known), locates
  each upload in it by cross-correlation and answers with the exact words whose centres fall
  in the piece, timed as the piece decodes: timed segments (to a sentence end or a 0.5 s
  pause) for whisper-1, bare text for gpt-transcribe and the gpt-4o models;
* counts, per upload sha256, the bodies fully received and the pieces answered 200, so a test
  can prove that no piece was sent again after it succeeded.

Error bodies come in OpenAI's shape, or FastAPI's {"detail": ...} (speaches) or
{"error": "..."} (whisper.cpp) with `error_style`.

Run alone for a benchmark: `python tests/openai_server.py --port-file F [options]`; then
GET /_stats gives the counters as JSON and POST /_control (JSON) changes faults and settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import numpy as np
import trio

from speech_corpus import Corpus

UPLOAD_LIMIT = 26_214_400
SCHEMA_FIELDS = frozenset(
    {
        "file", "model", "language", "prompt", "response_format", "temperature",
        "timestamp_granularities[]", "include[]", "stream", "chunking_strategy",
        "known_speaker_names[]", "known_speaker_references[]", "languages[]", "keywords[]",
    }
)  # fmt: skip
MODELS = {
    "whisper-1": {"formats": {"json", "text", "srt", "verbose_json", "vtt"}, "max_seconds": None},
    "gpt-4o-transcribe": {"formats": {"json", "text"}, "max_seconds": 1400.0},
    "gpt-4o-mini-transcribe": {"formats": {"json", "text"}, "max_seconds": 1400.0},
    "gpt-transcribe": {"formats": {"json", "text"}, "max_seconds": None},
}
MODEL_GONE = "whisper-1"
EXTENSIONS = {"flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm"}
FAULTS = (
    "rate_limit", "server_error", "reset", "close_after_body", "hang", "slow", "quota",
    "unauthorized", "bad_request", "model_not_found", "billed_error", "bad_gateway", "unavailable",
    "trickle", "stall", "oversized", "oversized_error", "malformed",
)  # fmt: skip
RETRYABLE_FAULTS = ("rate_limit", "server_error", "reset", "close_after_body", "hang", "slow")


@dataclass(slots=True, kw_only=True)
class ServerSettings:
    """How the server behaves; may be changed while it runs."""

    requests_per_minute: float | None = None
    burst: int | None = None  # bucket size; default: a full minute's worth
    max_concurrent: int | None = None
    service_base: float = 0.0
    service_per_second: float = 0.0
    time_scale: float = 1.0
    api_key: str | None = None  # when set, requests must carry it
    error_style: str = "openai"  # or "detail" (speaches) or "string" (whisper.cpp)
    fault_rates: dict[str, float] = field(default_factory=dict)
    seed: int = 1
    rate_limit_wait: float = 0.5  # what an injected 429 asks for
    slow_seconds: float = 2.0
    # the service time's spread: a lognormal factor of this sigma with mean 1 (0: none)
    service_jitter: float = 0.0
    trickle_seconds: float = 40.0
    trickle_interval: float = 1.0
    oversized_bytes: int = 100 * 1024 * 1024
    # GET /v1/models: a listing of these models with these shutdown dates (None: no such route)
    shutdown_dates: dict[str, Any] | None = None


@dataclass(slots=True)
class ServerStats:
    requests: int = 0
    bodies_received: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)
    limit_violations: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    authorization: list[str | None] = field(default_factory=list)
    forms: list[dict[str, list[str]]] = field(default_factory=list)
    first_request_at: float | None = None  # wall-clock time.time() of the first transcription request
    billed_seconds: float = 0.0  # audio seconds the server worked on and billed (answers, billed errors)
    billed_requests: int = 0
    answer_times: list[float] = field(default_factory=list)  # wall clock of each 200 answer
    # (wall clock, requests in flight) at every change: how busy the slots were, and when
    in_flight_log: list[tuple[float, int]] = field(default_factory=list)
    service_seconds: float = 0.0  # the service times (jitter included) of the billed requests
    stitched: int = 0  # uploads located (with a corpus) as more than one stretch of it

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "first_request_at": self.first_request_at,
            "billed_seconds": round(self.billed_seconds, 3),
            "billed_requests": self.billed_requests,
            "answer_times": self.answer_times,
            "in_flight_log": self.in_flight_log,
            "service_seconds": round(self.service_seconds, 3),
            "stitched": self.stitched,
            "bodies_received": dict(self.bodies_received),
            "answered": dict(self.answered),
            "limit_violations": self.limit_violations,
            "injected": dict(self.injected),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
        }


class _Reject(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}


class _Drop(Exception):
    """Stop talking on this connection without an answer."""


@dataclass(frozen=True, slots=True)
class _Streamed:
    """An answer sent in parts as they come (never held whole): `length` bytes in all."""

    length: int
    parts: AsyncIterator[bytes]


class FakeOpenAI:
    """The server; `await nursery.start(server.serve)` returns its base URL."""

    def __init__(self, settings: ServerSettings | None = None, *, corpus: Corpus | None = None) -> None:
        self.settings = settings or ServerSettings()
        # with a corpus, each upload is located in it and answered with its true words
        self.corpus = corpus
        self.stats = ServerStats()
        self.script: deque[str | None] = deque()
        self._random = random.Random(self.settings.seed)
        self._tokens: float | None = None
        self._refilled_at = 0.0
        self._request_number = 0
        self._storm_until = -math.inf  # trio time until which every request gets a 429

    # -------------------------------------------------------------- control

    def reset(self) -> None:
        self.stats = ServerStats()
        self.script.clear()
        self._storm_until = -math.inf
        self._random = random.Random(self.settings.seed)
        self._tokens = None

    def control(self, changes: dict[str, Any]) -> None:
        if changes.pop("reset", False):
            self.reset()
        self.script.extend(changes.pop("script", []))  # faults for the next requests, in order
        if "storm_seconds" in changes:  # a 429 storm: every request refused for this long, from now
            self._storm_until = trio.current_time() + float(changes.pop("storm_seconds"))
        for name, value in changes.items():
            if not hasattr(self.settings, name):
                raise KeyError(name)
            setattr(self.settings, name, value)
        if "seed" in changes:
            self._random = random.Random(self.settings.seed)

    async def serve(self, *, port: int = 0, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        bound = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._connection, listeners)
            task_status.started(f"http://127.0.0.1:{bound}/v1")

    # -------------------------------------------------------------- HTTP plumbing

    async def _connection(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                request = await self._next(stream, connection)
                if not isinstance(request, h11.Request):
                    return
                keep = await self._exchange(stream, connection, request)
                if not keep or connection.our_state is not h11.DONE:
                    return
                try:
                    connection.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except (_Drop, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
            return
        finally:
            with trio.move_on_after(1, shield=True):
                await stream.aclose()

    async def _next(self, stream: trio.SocketStream, connection: h11.Connection) -> Any:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(1 << 16)
                connection.receive_data(data)
                continue
            return event

    async def _read_body(self, stream: trio.SocketStream, connection: h11.Connection, *, limit: int, reset_at: int | None = None) -> bytes:
        body = bytearray()
        while True:
            event = await self._next(stream, connection)
            if isinstance(event, h11.Data):
                body.extend(event.data)
                if reset_at is not None and len(body) >= reset_at:
                    _reset(stream)
                    raise _Drop
                if len(body) > limit:
                    raise _Reject(413, f"413: Maximum content size limit ({UPLOAD_LIMIT}) exceeded ({len(body)} bytes read)", type_="server_error")
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise _Drop

    async def _send(self, stream: trio.SocketStream, connection: h11.Connection, status: int, body: bytes | _Streamed, headers: dict[str, str], *, close: bool = False) -> None:
        self.stats.statuses[status] += 1
        length = body.length if isinstance(body, _Streamed) else len(body)
        pairs = [("content-type", "application/json"), ("content-length", str(length)), *headers.items()]
        if close:
            pairs.append(("connection", "close"))
        await stream.send_all(connection.send(h11.Response(status_code=status, headers=pairs)))
        if isinstance(body, _Streamed):
            async for part in body.parts:
                await stream.send_all(connection.send(h11.Data(data=part)))
        else:
            await stream.send_all(connection.send(h11.Data(data=body)))
        await stream.send_all(connection.send(h11.EndOfMessage()))

    # -------------------------------------------------------------- one request

    async def _exchange(self, stream: trio.SocketStream, connection: h11.Connection, request: h11.Request) -> bool:
        target = request.target.decode()
        if target == "/_stats":
            await self._read_body(stream, connection, limit=1 << 20)
            await self._send(stream, connection, 200, json.dumps(self.stats.as_dict()).encode(), {})
            return True
        if target == "/_control":
            self.control(json.loads(await self._read_body(stream, connection, limit=1 << 20) or b"{}"))
            await self._send(stream, connection, 200, b"{}", {})
            return True
        if target == "/v1/models":  # not counted: only transcriptions are
            await self._read_body(stream, connection, limit=1 << 20)
            if self.settings.shutdown_dates is None:
                await self._send(stream, connection, 404, b'{"detail": "Not Found"}', {})
                return True
            listing = {"object": "list", "data": [{"id": model, "object": "model", "shutdown_date": date} for model, date in self.settings.shutdown_dates.items()]}
            await self._send(stream, connection, 200, json.dumps(listing).encode(), {})
            return True
        self.stats.requests += 1
        if self.stats.first_request_at is None:
            self.stats.first_request_at = time.time()
        self.stats.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        self.stats.in_flight_log.append((time.time(), self.stats.in_flight))
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        self._request_number += 1
        request_id = f"req_{self._request_number:06d}"
        finished = False

        def finish() -> None:
            # the request ends as its answer goes out: a client may send its next one the
            # moment the answer arrives
            nonlocal finished
            if not finished:
                finished = True
                self.stats.in_flight -= 1
                self.stats.in_flight_log.append((time.time(), self.stats.in_flight))

        try:
            try:
                status, body, extra = await self._transcription(stream, connection, request, headers)
            except _Reject as reject:
                status, body, extra = reject.status, self._error_body(reject), reject.headers
                finish()
                if connection.their_state is not h11.DONE:
                    # an early answer: send it, then read (and drop) the rest of the upload so
                    # the client sees the answer rather than a reset, and close
                    await self._send(stream, connection, status, body, {"x-request-id": request_id, **extra}, close=True)
                    with trio.move_on_after(10):
                        try:
                            await self._read_body(stream, connection, limit=4 * UPLOAD_LIMIT)
                        except (_Reject, _Drop):
                            pass
                    return False
            finish()
            await self._send(stream, connection, status, body, {"x-request-id": request_id, **extra})
            return True
        finally:
            finish()

    def _fault(self) -> str | None:
        if self.script:
            return self.script.popleft()
        for kind in FAULTS:
            rate = self.settings.fault_rates.get(kind, 0.0)
            if rate and self._random.random() < rate:
                return kind
        return None

    def _take_token(self) -> float | None:
        """None if a request may start now, else the seconds until one may."""
        rpm = self.settings.requests_per_minute
        if not rpm:
            return None
        rate = rpm / 60.0
        capacity = float(self.settings.burst or rpm)
        now = trio.current_time()
        if self._tokens is None:
            self._tokens, self._refilled_at = capacity, now
        self._tokens = min(capacity, self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tokens) / rate

    def _limit_headers(self) -> dict[str, str]:
        rpm = self.settings.requests_per_minute
        if not rpm:
            return {}
        remaining = max(0, math.floor(self._tokens or 0.0))
        capacity = self.settings.burst or rpm
        reset = (capacity - (self._tokens or 0.0)) / (rpm / 60.0)
        return {
            "x-ratelimit-limit-requests": str(int(rpm)),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": f"{max(0, round(reset * 1000))}ms",
        }

    async def _transcription(self, stream: trio.SocketStream, connection: h11.Connection, request: h11.Request, headers: dict[str, str]) -> tuple[int, bytes | _Streamed, dict[str, str]]:
        settings = self.settings
        self.stats.authorization.append(headers.get("authorization"))
        if request.method != b"POST" or request.target.decode() != "/v1/audio/transcriptions":
            await self._read_body(stream, connection, limit=UPLOAD_LIMIT)
            raise _Reject(404, f"Invalid URL ({request.method.decode()} {request.target.decode()})")
        if settings.api_key is not None:
            given = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if given != settings.api_key:
                await self._read_body(stream, connection, limit=UPLOAD_LIMIT)
                raise _Reject(401, _incorrect_key(given), type_="invalid_request_error", code="invalid_api_key")
        # limits are checked when the request arrives, before its body is read
        if settings.max_concurrent and self.stats.in_flight > settings.max_concurrent:
            self.stats.limit_violations += 1
            raise _Reject(429, "Too many concurrent requests", type_="requests", code="rate_limit_exceeded", headers={"retry-after-ms": "500", "retry-after": "1", **self._limit_headers()})
        storm = self._storm_until - trio.current_time()
        if storm > 0:
            self.stats.injected["storm"] += 1
            wait = min(storm, 5.0)
            raise _Reject(429, "Rate limit reached for requests.", type_="requests", code="rate_limit_exceeded", headers={"retry-after-ms": str(math.ceil(wait * 1000)), "retry-after": str(math.ceil(wait))})
        wait = self._take_token()
        if wait is not None:
            self.stats.limit_violations += 1
            raise _Reject(429, f"Rate limit reached for requests. Limit {settings.requests_per_minute:g} / min. Please try again in {wait:.3f}s.", type_="requests", code="rate_limit_exceeded", headers={"retry-after-ms": str(math.ceil(wait * 1000)), "retry-after": str(math.ceil(wait)), **self._limit_headers()})
        fault = self._fault()
        if fault is not None:
            self.stats.injected[fault] += 1
        if fault == "rate_limit":
            wait = settings.rate_limit_wait
            raise _Reject(429, "Rate limit reached for requests.", type_="requests", code="rate_limit_exceeded", headers={"retry-after-ms": str(round(wait * 1000)), "retry-after": str(math.ceil(wait)), **self._limit_headers()})
        if fault == "quota":
            raise _Reject(429, "You exceeded your current quota, please check your plan and billing details.", type_="insufficient_quota", code="insufficient_quota")
        if fault == "model_not_found":
            raise _Reject(404, f"The model `{MODEL_GONE}` has been deprecated, learn more here: https://platform.openai.com/docs/deprecations", code="model_not_found")
        if fault == "unauthorized":
            raise _Reject(401, _incorrect_key(headers.get("authorization", "").removeprefix("Bearer ").strip()), code="invalid_api_key")
        length = int(headers.get("content-length", "0") or 0)
        body = await self._read_body(stream, connection, limit=UPLOAD_LIMIT, reset_at=max(1, length // 2) if fault == "reset" else None)
        received = trio.current_time()
        digest, form, upload = _parse_form(headers.get("content-type", ""), body)
        self.stats.bodies_received[digest] += 1
        self.stats.forms.append(form)
        if fault == "close_after_body":
            raise _Drop
        if fault == "hang":
            await _wait_for_close(stream)
            raise _Drop
        if fault == "server_error":
            status = 500 if self.stats.injected[fault] % 2 else 503
            raise _Reject(status, "The server had an error while processing your request. Sorry about that!", type_="server_error")
        if fault in ("bad_gateway", "unavailable"):  # a proxy's refusal: the model never saw it
            status = 502 if fault == "bad_gateway" else 503
            raise _Reject(status, f"{status}: the upstream server is not available", type_="server_error")
        if fault == "bad_request":
            raise _Reject(400, "Audio file might be corrupted or unsupported", code="invalid_value", param="file")
        answer, seconds = await self._answer(form, upload)
        delay = settings.time_scale * (settings.service_base + settings.service_per_second * seconds)
        if settings.service_jitter:
            sigma = settings.service_jitter
            delay *= self._random.lognormvariate(-sigma * sigma / 2, sigma)
        if fault == "slow":
            delay += settings.slow_seconds
        # the service time runs from the upload's last byte: this server's own work on it (an
        # ffmpeg child decoding it, locating it in the corpus) is part of that time, not added
        # to it, so on a loaded machine the server still answers as the model says
        await trio.sleep_until(received + delay)
        self.stats.billed_seconds += seconds
        self.stats.billed_requests += 1
        self.stats.service_seconds += delay
        if fault == "billed_error":  # the work was done (and billed), then the answer was lost
            raise _Reject(500, "The server had an error while processing your request. Sorry about that!", type_="server_error")
        extra = {"openai-processing-ms": str(round(delay * 1000)), **self._limit_headers()}
        encoded = json.dumps(answer).encode()
        if fault == "oversized":
            return 200, _oversized(settings.oversized_bytes), extra
        if fault == "oversized_error":
            return 500, _oversized(settings.oversized_bytes), extra
        if fault == "malformed":
            return 200, encoded[: len(encoded) // 2], extra
        if fault == "stall":
            return 200, _Streamed(len(encoded), _stalled(stream, encoded)), extra
        self.stats.answered[digest] += 1
        self.stats.answer_times.append(time.time())
        if fault == "trickle":
            return 200, _Streamed(len(encoded), _trickled(encoded, settings.trickle_seconds, settings.trickle_interval)), extra
        return 200, encoded, extra

    async def _answer(self, form: dict[str, list[str]], upload: tuple[str, str, bytes] | None) -> tuple[dict[str, Any], float]:
        for name in form:
            if name not in SCHEMA_FIELDS:
                raise _Reject(400, f"Unrecognized request argument supplied: {name}", param=name)
        if upload is None:
            raise _Reject(400, "you must provide a file", param="file")
        model = (form.get("model") or [""])[0]
        if model not in MODELS:
            raise _Reject(404, f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found")
        response_format = (form.get("response_format") or ["json"])[0]
        if response_format not in MODELS[model]["formats"]:
            raise _Reject(400, f"response_format '{response_format}' is not compatible with model '{model}'. Use 'json' or 'text' instead.", code="unsupported_value", param="response_format")
        granularities = form.get("timestamp_granularities[]", [])
        if granularities and (response_format != "verbose_json" or not set(granularities) <= {"word", "segment"}):
            raise _Reject(400, "timestamp_granularities requires response_format verbose_json", code="invalid_value", param="timestamp_granularities")
        filename, _, data = upload
        if filename.rsplit(".", 1)[-1].lower() not in EXTENSIONS:
            raise _Reject(400, f"Unsupported file format {filename.rsplit('.', 1)[-1]}", code="unsupported_value", param="file")
        pcm = await _decoded(data)
        seconds = None if pcm is None else len(pcm) / 16000
        if pcm is None or seconds is None:
            raise _Reject(400, "Audio file might be corrupted or unsupported", code="invalid_value", param="file")
        if seconds < 0.1:
            raise _Reject(400, f"audio duration {seconds} seconds is shorter than 0.1 seconds which is the minimum for this model", code="invalid_value")
        cap = MODELS[model]["max_seconds"]
        if cap is not None and seconds > cap:
            raise _Reject(400, f"audio duration {seconds:.2f} seconds is longer than {cap:g} seconds which is the maximum for this model", code="invalid_value")
        if self.corpus is not None:
            stretches = self.corpus.stretches(pcm)
            self.stats.stitched += len(stretches) > 1
            words = self.corpus.words_of(pcm, stretches)
        else:
            words = _words_for(data, seconds)
        text = " ".join(word for word, _, _ in words)
        if response_format != "verbose_json":
            return {"text": text, "usage": {"type": "duration", "seconds": math.ceil(seconds)}}, seconds
        segments = []
        for chunk in _segment_words(words, by_sentence=self.corpus is not None):
            segments.append({"id": len(segments), "seek": 0, "start": chunk[0][1], "end": chunk[-1][2], "text": " " + " ".join(w for w, _, _ in chunk), "tokens": [], "temperature": 0.0, "avg_logprob": -0.2, "compression_ratio": 1.2, "no_speech_prob": 0.01})
        answer: dict[str, Any] = {"task": "transcribe", "language": "english", "duration": seconds, "text": text, "segments": segments, "usage": {"type": "duration", "seconds": math.ceil(seconds)}}
        if "word" in granularities:
            answer["words"] = [{"word": w, "start": s, "end": e} for w, s, e in words]
        return answer, seconds

    def _error_body(self, reject: _Reject) -> bytes:
        if self.settings.error_style == "detail":
            return json.dumps({"detail": reject.message}).encode()
        if self.settings.error_style == "string":
            return json.dumps({"error": reject.message}).encode()
        return json.dumps({"error": {"message": reject.message, "type": reject.type, "param": reject.param, "code": reject.code}}).encode()


def _incorrect_key(given: str) -> str:
    if not given:
        return "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth."
    shown = given if len(given) < 8 else given[:3] + "*" * 10 + given[-4:]
    return f"Incorrect API key provided: {shown}. You can find your API key at https://platform.openai.com/account/api-keys."


def _reset(stream: trio.SocketStream) -> None:
    """Abort the connection with an RST (SO_LINGER 0), as a crashing proxy would."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def _wait_for_close(stream: trio.SocketStream) -> None:
    while await stream.receive_some(1 << 16):
        pass


def _oversized(size: int) -> _Streamed:
    """`size` bytes of one JSON object with a huge text, from one reused 64 KiB block."""
    head, tail = b'{"text": "', b'"}'
    block = b"word " * (65536 // 5)

    async def parts() -> AsyncIterator[bytes]:
        yield head
        left = size - len(head) - len(tail)
        while left > 0:
            yield block[:left] if left < len(block) else block
            left -= len(block)
        yield tail

    return _Streamed(size, parts())


async def _trickled(body: bytes, seconds: float, interval: float) -> AsyncIterator[bytes]:
    """The answer in equal parts, one every `interval` s, over `seconds` in all."""
    count = max(1, min(len(body), round(seconds / interval)))
    for number in range(count):
        if number:
            await trio.sleep(interval)
        yield body[number * len(body) // count : (number + 1) * len(body) // count]


async def _stalled(stream: trio.SocketStream, body: bytes) -> AsyncIterator[bytes]:
    """Half the answer, then nothing until the client gives up and closes."""
    yield body[: len(body) // 2]
    await _wait_for_close(stream)
    raise _Drop


def _parse_form(content_type: str, body: bytes) -> tuple[str, dict[str, list[str]], tuple[str, str, bytes] | None]:
    """(sha256 of the file part, text fields, (filename, content type, data) of the file)."""
    boundary = None
    for part in content_type.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "boundary":
            boundary = value.strip('"')
    if not content_type.startswith("multipart/form-data") or not boundary:
        raise _Reject(400, "expected multipart/form-data with a boundary")
    form: dict[str, list[str]] = {}
    upload: tuple[str, str, bytes] | None = None
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        data = data.removesuffix(b"\r\n")
        meta = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            meta[name.strip().lower()] = value.strip()
        disposition = dict(
            (k.strip(), v.strip().strip('"')) for k, _, v in (p.partition("=") for p in meta.get("content-disposition", "").split(";")[1:])
        )
        field_name = disposition.get("name", "")
        if "filename" in disposition:
            upload = (disposition["filename"], meta.get("content-type", ""), data)
            form.setdefault(field_name, []).append(f"<file {disposition['filename']}>")
        else:
            form.setdefault(field_name, []).append(data.decode("utf-8"))
    digest = hashlib.sha256(upload[2]).hexdigest() if upload else ""
    return digest, form, upload


async def _decoded(data: bytes) -> np.ndarray | None:
    """The upload as 16 kHz mono samples, as a server's ffmpeg decodes it."""
    result = await trio.run_process(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", "16000", "pipe:1"],
        stdin=data, capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    if result.returncode != 0 or not result.stdout:
        return None
    return np.frombuffer(result.stdout, dtype="<i2")


def _segment_words(words: list[tuple[str, float, float]], *, by_sentence: bool) -> list[list[tuple[str, float, float]]]:
    """Whisper-like segments: five words each, or (corpus) up to a sentence end or a pause of
    0.5 s, at most 30 words."""
    if not by_sentence:
        return [words[i : i + 5] for i in range(0, len(words), 5)]
    chunks: list[list[tuple[str, float, float]]] = []
    for word in words:
        if chunks and not (chunks[-1][-1][0].endswith((".", "?", "!")) or word[1] - chunks[-1][-1][2] >= 0.5 or len(chunks[-1]) >= 30):
            chunks[-1].append(word)
        else:
            chunks.append([word])
    return chunks


def _words_for(data: bytes, seconds: float) -> list[tuple[str, float, float]]:
    """Words derived from the upload's bytes, one every 0.5 s, with times inside the audio."""
    digest = hashlib.sha256(data).hexdigest()
    count = max(1, int(seconds / 0.5))
    words = []
    for number in range(count):
        start = round(number * seconds / count, 3)
        end = round(min(seconds, start + 0.4 * seconds / count), 3)
        words.append((f"w{digest[(number * 5) % 60 : (number * 5) % 60 + 5]}{number}", start, end))
    return words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--settings", default="{}", help="ServerSettings fields as JSON")
    parser.add_argument("--corpus", type=Path, help="a speech_corpus.py recording to answer from")
    args = parser.parse_args()
    corpus = Corpus(args.corpus) if args.corpus else None
    server = FakeOpenAI(ServerSettings(**json.loads(args.settings)), corpus=corpus)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            args.port_file.write_text(url)

    trio.run(run)


if __name__ == "__main__":
    main()
