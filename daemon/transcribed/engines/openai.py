"""The OpenAI-compatible HTTP engine: one piece → `POST {base_url}/audio/transcriptions`.

Called directly with httpx (no SDK). Each piece's PCM is encoded in memory once, before it
queues for a request slot (compact mp3 by LAME in-process by default, flac or wav through an
ffmpeg pipe; no temp files), sent as multipart form data with OpenAI's field names (array
fields as `name[]`), and the answer parsed by the format that was asked for.

Errors are classified once, here, at the transport edge (`classify_response`,
`classify_transport_error`): a status code or a transport exception becomes RetryableError,
PermanentError or a ServiceSuspended (quota, key, model), and nothing above this module looks
at HTTP again.

Nothing the server sends is trusted to be small or timely. An answer is streamed and read up
to a bound: a 200 to what its piece's length can need (`answer_limit`), an error to 64 KiB. A
200 over its bound, or not JSON, or without text, is an UnusableAnswerError: it was billed, so
the piece retries it once, and a second one suspends spending (AnswersUnusableError). A request
whose upload went out and whose answer then stays silent for longer than the latency model
allows (latency.py: learned from the answers so far; request_timeout stays the hard ceiling) is
abandoned and retried. Every attempt that sent its whole upload and got nothing usable back
(a hang, a reset after the body, a 5xx, an unusable 200) may have been billed: it is added to
the piece's `possibly_billed_cost`, the spent cost's upper bound.
Server messages are redacted before they go anywhere (a 401 from OpenAI echoes part of the
key), and a 401 or 403 is reported with a fixed sentence only.

The API key lives only in the client's default headers (httpx masks it in reprs); it is never
logged, put in an exception, or passed to a child process.
"""

from __future__ import annotations

import email.utils
import functools
import json
import math
import os
import re
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import structlog
import trio

from transcribed import metrics
from transcribed.config import OpenAIConfig, shown
from transcribed.engines.base import EngineTraits, PieceResult, PreparedPiece, Segment, Word
from transcribed.engines.latency import AnswerWatch, LatencyModel
from transcribed.engines.models import ModelSpec, check_options, model_spec
from transcribed.engines.mp3 import encode_mp3
from transcribed.errors import (
    AnswersUnusableError,
    ConfigError,
    EngineError,
    KeyRefusedError,
    ModelUnavailableError,
    PermanentError,
    QuotaExhaustedError,
    RetryableError,
    UnreachableError,
    UnusableAnswerError,
)
from transcribed.media import OWN_GROUP, child_environment
from transcribed.planning import SAMPLE_RATE, PieceLimits
from transcribed.retry import RetryPolicy
from transcribed.timing import time_text

logger = structlog.get_logger()

OPENAI_UPLOAD_LIMIT = 26_214_400
# room for the multipart envelope and the form fields (a long glossary prompt included)
_ENVELOPE_BYTES = 64 * 1024
CREDENTIAL_NAME = "openai_api_key"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
# What a 200 may hold: verbose_json with word times takes 206 bytes per second of audio on the
# fake server (2 words/s) and 342 on OpenAI's documented segment with its words at OpenAI's
# float precision (3.3 words/s); a Whisper repetition loop is capped at 224 tokens per 30 s
# window, ~650 bytes/s as verbose_json with words. 4 KiB/s is six times that, plus 64 KiB.
ANSWER_BASE_BYTES = 64 * 1024
ANSWER_BYTES_PER_SECOND = 4 * 1024
ERROR_BODY_LIMIT = 64 * 1024  # an error's message is a sentence; a proxy's page is cut here


# ---------------------------------------------------------------- upload formats


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadFormat:
    """How a piece is encoded for upload; `bytes_per_second` is an upper bound of its size.
    An mp3 is encoded in the daemon's process by LAME at `lame_bitrate` (engines/mp3.py);
    anything else by an ffmpeg child with `ffmpeg_args`."""

    suffix: str
    mime: str
    ffmpeg_args: tuple[str, ...]
    bytes_per_second: float
    lame_bitrate: int | None = None


def upload_format(name: str, bitrate: int = 32) -> UploadFormat:
    # -fflags +bitexact and no metadata: the same samples always give the same bytes
    if name == "mp3":
        return UploadFormat(
            suffix="mp3",
            mime="audio/mpeg",
            ffmpeg_args=(),
            bytes_per_second=bitrate * 1000 / 8 * 1.02,
            lame_bitrate=bitrate,
        )
    if name == "flac":
        # 16 kHz mono speech compresses to ~18 KB/s; noise can take it close to raw PCM
        return UploadFormat(
            suffix="flac",
            mime="audio/flac",
            ffmpeg_args=("-c:a", "flac", "-f", "flac"),
            bytes_per_second=SAMPLE_RATE * 2,
        )
    if name == "wav":
        return UploadFormat(
            suffix="wav",
            mime="audio/wav",
            ffmpeg_args=("-c:a", "pcm_s16le", "-f", "wav"),
            bytes_per_second=SAMPLE_RATE * 2,
        )
    raise ValueError(f"unknown upload format {name!r}")


async def encode_piece(
    audio: np.ndarray,
    fmt: UploadFormat,
    *,
    timeout: float = 120.0,  # noqa: ASYNC109 - a stuck encoder child is this function's own failure to report
    limiter: trio.CapacityLimiter | None = None,
) -> bytes:
    """16 kHz mono int16 samples → the upload's bytes (no files on disk).

    An mp3 is encoded by LAME in a worker thread (`limiter`: LAME holds the GIL, so more than
    one at a time only takes turns with the event loop), behind the LAME/Info header that
    tells a decoder to drop the encoder's 1105 priming samples (without it the server hears
    every piece 69 ms late; bench/timing.py). 16 ffmpeg children for 16 pieces at once
    peaked at ~230 MiB PSS, LAME in-process under 10 MiB, with half the CPU
    (bench/openai_encoder.py).
    flac and wav go through an ffmpeg child, pipe to pipe: they have no priming to declare.
    """
    if fmt.lame_bitrate is not None:
        encode = functools.partial(encode_mp3, bitrate=fmt.lame_bitrate, sample_rate=SAMPLE_RATE)
        try:
            return await trio.to_thread.run_sync(encode, audio, limiter=limiter)
        except ValueError as exc:
            raise PermanentError(f"LAME could not encode a piece for upload: {exc}") from None
    command = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1", "-y",
        "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", "pipe:0",
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
        *fmt.ffmpeg_args, "pipe:1",
    ]  # fmt: skip
    payload = np.ascontiguousarray(audio, dtype="<i2").tobytes()
    try:
        with trio.fail_after(timeout):
            result = await trio.run_process(
                command, stdin=payload, capture_stdout=True, capture_stderr=True, check=False,
                env=child_environment(), **OWN_GROUP,
            )  # fmt: skip
    except trio.TooSlowError:
        raise RetryableError("encoding a piece for upload took too long") from None
    if result.returncode != 0:
        detail = result.stderr.decode("utf-8", "replace").strip()[-300:]
        raise PermanentError(f"ffmpeg could not encode a piece for upload: {detail}")
    return bytes(result.stdout)


# ---------------------------------------------------------------- the API key


def load_api_key(config: OpenAIConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The API key: OPENAI_API_KEY, else the systemd credential, else api_key_file; None if none."""
    environ = os.environ if environ is None else environ
    key = environ.get("OPENAI_API_KEY", "").strip()
    if key:
        return key
    candidates: list[Path] = []
    if environ.get("CREDENTIALS_DIRECTORY"):
        candidates.append(Path(environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME)
    if config.api_key_file is not None:
        candidates.append(config.api_key_file)
    for path in candidates:
        try:
            key = path.read_text("utf-8").strip()
        except FileNotFoundError:
            if path == config.api_key_file:
                raise ConfigError(
                    f"openai.api_key_file: the file {shown(path)} does not exist",
                    hint="give the path of a file that holds the key (never the key itself)",
                ) from None
            continue
        except OSError as exc:
            raise ConfigError(
                f"the API key file {shown(path)} cannot be read: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(
                f"the API key file {shown(path)} is not text",
                hint="it must hold the key alone, on one line",
            ) from None
        if key and not _KEY_SHAPE.fullmatch(key):
            raise ConfigError(
                f"the API key file {shown(path)} does not hold a key alone on one line",
                hint="write only the key into it (no quotes, no 'OPENAI_API_KEY=', no other lines)",
            )
        if key:
            return key
    return None


# what may be sent in an Authorization header: printable ASCII, no spaces or quotes
_KEY_SHAPE = re.compile(r"[A-Za-z0-9_\-.:+/=~*]{8,512}")
_KEY_LIKE = re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_*.\-…]{3,}|\bBearer\s+\S+", re.IGNORECASE)


def redact(text: str, secret: str | None) -> str:
    """`text` with the key (whole, or any 4+ character stretch of its start or end) and anything
    key-shaped removed."""
    if secret:
        text = text.replace(secret, "[redacted]")
        for size in range(min(len(secret), 12), 3, -1):
            text = text.replace(secret[:size], "[redacted]").replace(secret[-size:], "[redacted]")
    return _KEY_LIKE.sub("[redacted]", text)


# ---------------------------------------------------------------- classification (pure)

QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "billing_hard_limit_reached",
        "billing_not_active",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
    }
)
_RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorBody:
    """An error answer, whatever shape the server gave it."""

    message: str
    type: str | None = None
    code: str | None = None
    param: str | None = None


def parse_error_body(body: bytes) -> ErrorBody:
    """OpenAI's {"error": {...}}, LocalAI's int codes, {"error": "..."}, {"detail": ...}, text."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return ErrorBody(message=_plain(text))
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            code = error.get("code")
            return ErrorBody(
                message=_plain(str(error.get("message") or error.get("detail") or "")),
                type=str(error["type"]) if error.get("type") else None,
                code=str(code) if code not in (None, "") else None,
                param=str(error["param"]) if error.get("param") else None,
            )
        if isinstance(error, str):
            return ErrorBody(message=_plain(error))
        detail = data.get("detail")
        if detail is not None:
            return ErrorBody(
                message=_plain(detail if isinstance(detail, str) else json.dumps(detail))
            )
    return ErrorBody(message=_plain(text))


def _plain(text: str) -> str:
    text = re.sub(r"<[^>]+>", " ", text)  # an HTML error page from a proxy
    return " ".join(text.split())[:300]


def parse_retry_after(
    headers: Mapping[str, str], *, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds the server asks us to wait: retry-after-ms, then Retry-After (seconds or date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            value = float(raw_ms) / 1000
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, moment.timestamp() - now())


def classify_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secret: str | None = None,
    now: Callable[[], float] = time.time,
) -> EngineError:
    """The error a non-2xx answer means. Pure: tested without any I/O."""
    error = parse_error_body(body)
    request_id = headers.get("x-request-id")
    where = f"HTTP {status}" + (f", request {request_id}" if request_id else "")
    kind = " ".join(filter(None, [error.type, error.code]))
    detail = redact(error.message, secret)
    said = f": {detail}" if detail else ""

    if status in (401, 403):
        if secret is None:
            return KeyRefusedError(
                f"the server refused the request without an API key ({where})",
                hint="set OPENAI_API_KEY or install the systemd credential openai_api_key; "
                "waiting jobs resume once it is set and the daemon restarted",
            )
        # OpenAI's 401 echoes part of the key: report a fixed sentence only
        return KeyRefusedError(
            f"the API key was refused ({where})",
            hint="check the key (OPENAI_API_KEY or the credential openai_api_key), its project and "
            "the model's access, then restart the daemon; the key itself is never printed",
        )
    if error.type == "insufficient_quota" or (error.code or "") in QUOTA_CODES:
        return QuotaExhaustedError(
            f"the account's quota or budget is exhausted ({where}, {error.code or error.type})",
            hint="add credit or raise the spend limit; waiting jobs resume by themselves",
        )
    if status == 404:
        # a retired or mistyped model, or a wrong base_url: the service's fault, never the file's
        return ModelUnavailableError(
            f"the server does not offer this model or endpoint ({where}"
            f"{', ' + kind if kind else ''}){said}",
            hint='check openai.model (a retired model: set openai.model = "gpt-transcribe") '
            "and openai.base_url, then restart the daemon",
        )
    should_retry = headers.get("x-should-retry", "").lower()
    retry_after = parse_retry_after(headers, now=now)
    if should_retry == "true" or (should_retry != "false" and status in _RETRYABLE_STATUS):
        reason = "rate limited" if status == 429 else "the server is busy or failed"
        # a gateway that cannot reach the server: the service is down, not this piece
        kind_of = UnreachableError if status in (502, 503, 504) else RetryableError
        return kind_of(
            f"{reason} ({where}{', ' + kind if kind else ''}){said}",
            retry_after=retry_after,
            status=status,
        )
    hints = {
        400: "the server refused this request or this audio",
        404: "check openai.model and openai.base_url",
        413: "the upload was too large: lower openai.upload_bitrate or openai.piece_max_seconds",
        415: 'the server cannot read the upload format: try openai.upload_format = "wav"',
        422: "the server refused a field of the request; check openai.language and openai.prompt",
    }
    return PermanentError(
        f"the transcription service refused a piece ({where}{', ' + kind if kind else ''}){said}",
        hint=hints.get(status, "see the service's documentation for this status"),
    )


def classify_transport_error(exc: Exception) -> EngineError:
    """A transport failure (no answer) as RetryableError, or PermanentError when it cannot heal."""
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return PermanentError(f"openai.base_url is not a usable URL ({type(exc).__name__})")
    if isinstance(exc, httpx.TimeoutException):
        return UnreachableError(f"the request timed out ({type(exc).__name__})")
    if isinstance(exc, trio.TooSlowError):
        return UnreachableError("the request took longer than openai.request_timeout")
    if _is_tls_failure(exc):
        return UnreachableError(
            f"the TLS handshake with the server failed ({_tls_detail(exc)})",
            hint="check openai.base_url's certificate (or the proxy in front of it) and the "
            "system's CA certificates",
        )
    return UnreachableError(f"the connection failed ({type(exc).__name__})")


def _is_tls_failure(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, ssl.SSLError):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _tls_detail(exc: BaseException) -> str:
    while exc is not None:
        if isinstance(exc, ssl.SSLError):
            return _plain(getattr(exc, "reason", None) or type(exc).__name__)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return "unknown"


# ---------------------------------------------------------------- answers


def answer_limit(seconds: float) -> int:
    """The most bytes a 200 for a piece of `seconds` may hold (decoded)."""
    return ANSWER_BASE_BYTES + math.ceil(max(0.0, seconds) * ANSWER_BYTES_PER_SECOND)


class BoundedBody:
    """An answer's body as it arrives, decoded (the client asks for no compression, but a proxy
    may gzip anyway: a small gzip chunk can inflate a thousandfold) and cut off past `limit`."""

    def __init__(self, content_encoding: str, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.over_limit = False
        encoding = content_encoding.strip().lower()
        # gzip, or zlib-wrapped deflate, told apart by their headers (wbits 32 + 15)
        self._inflater = None if encoding in ("", "identity") else zlib.decompressobj(47)
        self.unreadable = encoding not in ("", "identity", "gzip", "x-gzip", "deflate")

    def feed(self, chunk: bytes) -> bool:
        """Take a raw chunk; False once the body is known to be over its limit or unreadable."""
        if self.unreadable or self.over_limit:
            return False
        room = self.limit + 1 - len(self.data)
        try:
            data = chunk if self._inflater is None else self._inflater.decompress(chunk, room)
        except zlib.error:
            self.unreadable = True
            return False
        self.data += data[:room]
        inflating = self._inflater is not None and bool(self._inflater.unconsumed_tail)
        self.over_limit = len(self.data) > self.limit or inflating
        return not self.over_limit


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """What came back for one request, read within its bound."""

    status: int
    headers: httpx.Headers
    body: bytes
    complete: bool  # the whole body was read (not cut off at its bound, decodable)
    latency: float | None  # upload's last byte → answer's first byte, when both were seen


def parse_answer(body: bytes, *, timestamps: bool, seconds: float) -> list[Segment]:
    """Segments from a 200 answer (with the words' times where the server gave them);
    text-only answers become one segment spanning the piece."""
    try:
        data = json.loads(body)
    except ValueError:
        raise UnusableAnswerError("the server's answer was not JSON", status=200) from None
    if not isinstance(data, dict) or not isinstance(data.get("text", ""), str):
        raise UnusableAnswerError("the server's answer had no text", status=200)
    segments: list[Segment] = []
    if timestamps and isinstance(data.get("segments"), list):
        words = [w for w in data.get("words") or [] if isinstance(w, dict)]
        for item in data["segments"]:
            try:
                start, end, text = float(item["start"]), float(item["end"]), str(item["text"])
            except (KeyError, TypeError, ValueError):
                raise UnusableAnswerError(
                    "the server's answer had a malformed segment", status=200
                ) from None
            inside = [w for w in words if start <= _word_time(w) < end]
            timed = tuple(_words(inside, seconds))
            if timed:  # word times are tighter than Whisper's segment bounds
                start, end = timed[0].start, timed[-1].end
            if text.strip():
                segments.append(
                    Segment(
                        start=max(0.0, start),
                        end=min(seconds, max(start, end)),
                        text=text.strip(),
                        words=timed,
                    )
                )
        return segments
    text = str(data.get("text", "")).strip()
    return [Segment(start=0.0, end=seconds, text=text)] if text else []


def _words(items: list[dict[str, Any]], seconds: float) -> list[Word]:
    """OpenAI's {"word", "start", "end"} (LocalAI spells "text"), clipped to the piece."""
    words = []
    for item in items:
        try:
            start, end = float(item["start"]), float(item["end"])
        except (KeyError, TypeError, ValueError):
            continue
        text = str(item.get("word", item.get("text", ""))).strip()
        if text:
            start = min(max(0.0, start), seconds)
            words.append(Word(start=start, end=min(seconds, max(start, end)), text=text))
    return words


def _word_time(word: dict[str, Any]) -> float:
    try:
        return float(word["start"])
    except (KeyError, TypeError, ValueError):
        return -1.0


# ---------------------------------------------------------------- the engine


class OpenAIEngine:
    """Sends pieces to an OpenAI-compatible server; shared by every job of the daemon."""

    def __init__(
        self, config: OpenAIConfig, client: httpx.AsyncClient, *, api_key: str | None
    ) -> None:
        self.config = config
        self.spec: ModelSpec = model_spec(config.model, config.base_url)
        check_options(self.spec, config)
        self.response_format = (
            config.response_format
            if config.response_format != "auto"
            else self.spec.response_format
        )
        self.format = upload_format(config.upload_format, config.upload_bitrate)
        self.traits = EngineTraits(
            name="openai",
            model=config.model,
            limits=piece_limits(config, self.spec, self.format),
            capacity=config.max_concurrent_requests,
            retry=RetryPolicy(
                max_attempts=config.max_attempts,
                initial_delay=config.retry_delay,
                max_delay=config.retry_max_delay,
                retry_timeout=config.retry_timeout,
                unreachable_retry_interval=config.unreachable_retry_interval,
            ),
            requests_per_minute=config.requests_per_minute,
            price_per_minute=(
                config.price_per_minute
                if config.price_per_minute is not None
                else self.spec.price_per_minute or 0.0
            ),
            timestamps=self.response_format == "verbose_json",
        )
        self._client = client
        self._secret = api_key
        # shared by every request of every job: how long an answer may keep us waiting
        self.latency = LatencyModel(ceiling=config.request_timeout)
        self._encoding = trio.CapacityLimiter(1)  # one LAME thread: it holds the GIL

    def form_fields(self) -> dict[str, str | list[str]]:
        """The form fields besides `file`, spelled as OpenAI's schema spells them."""
        fields: dict[str, str | list[str]] = {
            "model": self.config.model,
            "response_format": self.response_format,
            "temperature": "0",
        }
        if self.config.language and not self.config.languages:
            fields["language"] = self.config.language
        if self.config.languages:
            fields["languages[]"] = list(self.config.languages)
        if self.config.keywords:
            fields["keywords[]"] = list(self.config.keywords)
        if self.config.prompt:
            fields["prompt"] = self.config.prompt
        if self.response_format == "verbose_json" and self.config.word_timestamps:
            fields["timestamp_granularities[]"] = ["segment", "word"]
        return fields

    async def prepare(self, audio: np.ndarray) -> PreparedPiece:
        """Encode the upload once. The samples are kept only while a text-only answer may need
        timing from them (the model table says whether it can)."""
        seconds = len(audio) / SAMPLE_RATE
        data = await encode_piece(audio, self.format, limiter=self._encoding)
        if len(data) + _ENVELOPE_BYTES > self.config.max_upload_bytes:
            raise PermanentError(
                f"a {seconds:.0f} s piece encoded to {len(data)} bytes, over the server's limit",
                hint="lower openai.upload_bitrate or openai.piece_max_seconds",
            )
        needs_audio = self.response_format != "verbose_json" or self.spec.may_refuse_verbose
        return PreparedPiece(seconds=seconds, payload=data, audio=audio if needs_audio else None)

    async def transcribe(self, piece: PreparedPiece) -> PieceResult:
        seconds = piece.seconds
        answer = await self._send(piece)
        if answer.status == 400 and self._refuses_verbose(answer.body):
            # a compatible server's model without timestamps: ask json from now on
            self.response_format = "json"
            logger.warning("engine.verbose_json_refused", model=self.config.model, now="json")
            answer = await self._send(piece)
        if answer.status >= 400 or answer.status < 200:
            raise classify_response(answer.status, answer.headers, answer.body, secret=self._secret)
        timed = self.response_format == "verbose_json"  # (a fallback may have changed it)
        try:
            if not answer.complete:
                raise UnusableAnswerError(
                    f"the server's answer was larger than {answer_limit(seconds)} bytes, more "
                    f"than a {seconds:.0f} s piece can need (or in an unreadable encoding)",
                    status=answer.status,
                )
            segments = parse_answer(answer.body, timestamps=timed, seconds=seconds)
        except UnusableAnswerError as error:
            raise self._unusable(piece, error) from None
        if answer.latency is not None:
            self.latency.learn(answer.latency, seconds)
        if not timed:  # text only: the daemon times it at the pauses it hears in the piece
            # ~0.5 s of CPU for a 120 s piece: off the event loop
            text = " ".join(s.text for s in segments)
            audio = piece.audio if piece.audio is not None else np.zeros(0, dtype=np.int16)
            segments = await trio.to_thread.run_sync(time_text, text, audio)
        return PieceResult(
            segments=segments,
            cost=self.traits.cost(seconds),
            possibly_billed_cost=piece.ledger.possibly_billed_cost,
        )

    async def _send(self, piece: PreparedPiece) -> Answer:
        """One request, its answer streamed and read within its bound, under the hard ceiling
        (request_timeout) and the learned watch for a silent answer."""
        files = {"file": (f"piece.{self.format.suffix}", piece.payload, self.format.mime)}
        watch: AnswerWatch | None = None

        async def trace(event: str, info: Mapping[str, Any]) -> None:
            # httpcore's own events: the upload's end arms the watch
            if watch is not None and event.endswith(".send_request_body.complete"):
                watch.body_sent()
            elif watch is not None and event.endswith(".receive_response_headers.complete"):
                watch.received()

        answer: Answer | None = None
        try:
            with (
                trio.fail_after(self.config.request_timeout),
                self.latency.watch(piece.seconds) as watch,
            ):
                async with self._client.stream(
                    "POST", "audio/transcriptions", data=self.form_fields(), files=files,
                    headers={"accept-encoding": "identity"}, extensions={"trace": trace},
                ) as response:  # fmt: skip
                    answer = await _read_answer(response, piece.seconds, watch)
        except (httpx.TransportError, trio.TooSlowError) as exc:
            self._unanswered(piece, watch)
            metrics.count_request(exc)
            raise classify_transport_error(exc) from exc
        if answer is None:  # the watch gave up on it
            assert watch is not None and watch.overdue
            self._unanswered(piece, watch)
            raise self._overdue(watch)
        metrics.count_request(answer.status)
        if answer.status >= 500:
            self._unanswered(piece, watch)
        return answer

    def _unanswered(self, piece: PreparedPiece, watch: AnswerWatch | None) -> None:
        """An attempt without a usable answer: if its whole upload went out, the server may
        have billed it."""
        if watch is not None and watch.sent_at is not None:
            piece.ledger.possibly_billed_cost += self.traits.cost(piece.seconds)

    def _overdue(self, watch: AnswerWatch) -> UnreachableError:
        """The error of a request the watch gave up on (a read timeout, for the metrics)."""
        patience = watch.patience()
        what = "no answer came" if watch.answer_at is None else "the answer stopped arriving"
        rate = self.latency.rate(watch.seconds)
        learned = f" (answers so far began within {rate:.3f} s per audio second)" if rate else ""
        timeout = httpx.ReadTimeout(f"{what} for {patience:.0f} s")
        metrics.count_request(timeout)
        error = UnreachableError(
            f"{what} for {patience:.0f} s after a {watch.seconds:.0f} s piece was sent"
            f"{learned}; abandoned and retried, it may have been billed"
        )
        error.__cause__ = timeout
        return error

    def _unusable(self, piece: PreparedPiece, error: UnusableAnswerError) -> EngineError:
        """A 200 that cannot be used was billed all the same: retry it once, then stop paying."""
        ledger = piece.ledger
        ledger.possibly_billed_cost += self.traits.cost(piece.seconds)
        ledger.unusable_answers += 1
        logger.warning(
            "engine.unusable_answer", reason=error.reason, seconds=round(piece.seconds, 1),
            times=ledger.unusable_answers,
        )  # fmt: skip
        if ledger.unusable_answers == 1:
            return error
        return AnswersUnusableError(
            f"the server answered a {piece.seconds:.0f} s piece with an unusable body again "
            f"after its one retry: {error.reason}",
            hint="the server at openai.base_url (or a proxy in front of it) is answering "
            "wrongly, and each answer is billed; fix it and restart the daemon, or jobs try "
            "again after openai.quota_retry_interval",
        )

    def _refuses_verbose(self, body: bytes) -> bool:
        """A 400 that refuses verbose_json, from a model the table does not know (once)."""
        if not self.spec.may_refuse_verbose or self.response_format != "verbose_json":
            return False
        if self.config.response_format != "auto":
            return False
        error = parse_error_body(body)
        said = f"{error.param or ''} {error.message}".lower()
        return "response_format" in said or "verbose_json" in said


async def _read_answer(response: httpx.Response, seconds: float, watch: AnswerWatch) -> Answer:
    """The answer's body, read as it arrives (each chunk is news for the watch) up to its bound:
    what a piece of `seconds` can need for a 2xx, ERROR_BODY_LIMIT for anything else."""
    status = response.status_code
    limit = answer_limit(seconds) if 200 <= status < 300 else ERROR_BODY_LIMIT
    if response.is_stream_consumed:  # built in memory (a mock transport's answer)
        body = BoundedBody("", limit)
        body.feed(response.content)
    else:
        body = BoundedBody(response.headers.get("content-encoding", ""), limit)
        async for chunk in response.aiter_raw():
            watch.received(body=True)
            if not body.feed(chunk):
                break  # leaving the stream's block closes the connection, the rest unread
    watch.received(body=True)
    return Answer(
        status=status, headers=response.headers, body=bytes(body.data),
        complete=not (body.over_limit or body.unreadable), latency=watch.latency,
    )  # fmt: skip


# ---------------------------------------------------------------- retirement

RETIREMENT_WARNING_DAYS = 30
MODELS_TIMEOUT = 10.0
_DAY = 86400.0


async def read_shutdown_date(client: httpx.AsyncClient, model: str) -> datetime | None:
    """The model's `shutdown_date` from `GET {base_url}/models`, when the server lists one
    (compatible servers often have no such endpoint: then None, and nothing is decided)."""
    try:
        with trio.move_on_after(MODELS_TIMEOUT):
            response = await client.get("models")
            if response.status_code == 200:
                return parse_shutdown_date(response.content, model)
    except httpx.HTTPError:
        pass
    return None


def parse_shutdown_date(body: bytes, model: str) -> datetime | None:
    """A model's shutdown date from a models listing: a date, an ISO time or epoch seconds."""
    try:
        data = json.loads(body)
        entries = data["data"] if isinstance(data, dict) else data
        entry = next(e for e in entries if isinstance(e, dict) and e.get("id") == model)
        raw = entry.get("shutdown_date")
    except (ValueError, KeyError, TypeError, StopIteration):
        return None
    if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):
        return datetime.fromtimestamp(raw, UTC)
    if isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None


def check_retirement(model: str, shutdown: datetime | None, *, now: datetime) -> None:
    """A model already shut down stops start-up (exit 78); one shutting down soon is warned of."""
    if shutdown is None:
        return
    days = (shutdown - now).total_seconds() / _DAY
    if days <= 0:
        raise ConfigError(
            f"the model {model} was retired on {shutdown:%Y-%m-%d}",
            hint='set openai.model = "gpt-transcribe" (or another current model) and restart',
        )
    if days <= RETIREMENT_WARNING_DAYS:
        logger.warning(
            "engine.model_retiring", model=model, shutdown_date=f"{shutdown:%Y-%m-%d}",
            days_left=math.floor(days),
            hint='switch before then: set openai.model = "gpt-transcribe"',
        )  # fmt: skip


async def _warn_daily(model: str, shutdown: datetime, now: Callable[[], datetime]) -> None:
    while True:
        await trio.sleep(_DAY)
        if (shutdown - now()).total_seconds() > 0:
            check_retirement(model, shutdown, now=now())


def piece_limits(config: OpenAIConfig, profile: ModelSpec, fmt: UploadFormat) -> PieceLimits:
    """Pieces short enough for the model's duration cap and the server's upload limit."""
    maximum = config.piece_max_seconds or profile.piece_max_seconds
    target = config.piece_target_seconds or min(profile.piece_target_seconds, maximum)
    fits = (config.max_upload_bytes - _ENVELOPE_BYTES) / fmt.bytes_per_second
    cap = min(fits, (profile.max_audio_seconds or math.inf) - 20.0)  # headroom for padding
    if maximum > cap:
        raise ConfigError(
            f"openai.piece_max_seconds {maximum:g} is over what one request may carry ({cap:.0f} s "
            f"for {config.model} as {config.upload_format})",
            hint="lower openai.piece_max_seconds, or use a more compact openai.upload_format",
        )
    target = min(target, maximum)
    # text-only models: overlapping pieces would repeat words; cut at the quietest moment instead
    overlap = 1.0 if profile.timestamps and config.response_format != "json" else 0.0
    return PieceLimits(target_seconds=target, max_seconds=maximum, overlap_seconds=overlap)


@asynccontextmanager
async def open_openai_engine(
    config: OpenAIConfig,
    *,
    api_key: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> AsyncIterator[OpenAIEngine]:
    """The engine with its HTTP client (pool ≥ the request cap), closed when the block ends."""
    base_url = config.base_url.rstrip("/") + "/"
    if api_key is None and base_url.startswith(DEFAULT_BASE_URL):
        raise ConfigError(
            "the openai engine needs an API key for api.openai.com",
            hint="set OPENAI_API_KEY, install the systemd credential openai_api_key, or set "
            "openai.api_key_file",
        )
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    connections = config.max_concurrent_requests + 4  # never the hidden limit
    client = httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(config.request_timeout, connect=config.connect_timeout),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        transport=transport,
        follow_redirects=False,
    )
    async with client:
        engine = OpenAIEngine(config, client, api_key=api_key)
        shutdown = await read_shutdown_date(client, config.model)
        check_retirement(config.model, shutdown, now=now())
        logger.info(
            "engine.ready", engine=engine.traits.name, model=engine.traits.model,
            base_url=base_url, key="set" if api_key else "none",
            pieces=engine.traits.limits.as_dict(),
        )  # fmt: skip
        async with trio.open_nursery() as nursery:
            if shutdown is not None:
                nursery.start_soon(_warn_daily, config.model, shutdown, now)
            yield engine
            nursery.cancel_scope.cancel()
