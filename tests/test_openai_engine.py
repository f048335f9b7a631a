"""The OpenAI-compatible engine at its edge: request bodies, answers, error classification and
the API key, with httpx.MockTransport (no network) and pure functions."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import email.utils
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import trio
from conftest import BECKETT
from transcribed.config import OpenAIConfig, load_config
from transcribed.engines.base import transcribe_audio
from transcribed.engines.openai import (
    OPENAI_UPLOAD_LIMIT,
    classify_response,
    classify_transport_error,
    encode_piece,
    load_api_key,
    open_openai_engine,
    parse_retry_after,
    redact,
    upload_format,
)
from transcribed.errors import (
    ConfigError,
    KeyRefusedError,
    ModelUnavailableError,
    PermanentError,
    QuotaExhaustedError,
    RetryableError,
    UnreachableError,
)

KEY = "sk-proj-CANARYkey0123456789abcdefWXYZ"
WAIT = 30


def speech() -> np.ndarray:
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(BECKETT), "-f", "s16le", "-ac", "1", "-ar", "16000", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(pcm, dtype="<i2")


def parse_multipart(request: httpx.Request) -> tuple[list[tuple[str, str]], dict[str, tuple[str, str, bytes]]]:
    """(text fields in order, file parts by name) of a multipart request."""
    boundary = request.headers["content-type"].split("boundary=")[1].encode()
    fields: list[tuple[str, str]] = []
    files: dict[str, tuple[str, str, bytes]] = {}
    for part in request.content.split(b"--" + boundary)[1:-1]:
        head, _, data = part.strip(b"\r\n").partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        disposition = dict(p.strip().split("=", 1) for p in lines[0].split(";")[1:])
        name = disposition["name"].strip('"')
        if "filename" in disposition:
            content_type = next(line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("content-type"))
            files[name] = (disposition["filename"].strip('"'), content_type, data)
        else:
            fields.append((name, data.decode()))
    return fields, files


def verbose_answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"task": "transcribe", "language": "english", "duration": 10.0, "text": "Ever tried. Ever failed.", "segments": [
        {"id": 0, "seek": 0, "start": 0.0, "end": 2.5, "text": " Ever tried.", "tokens": [], "temperature": 0.0, "avg_logprob": -0.1, "compression_ratio": 1.0, "no_speech_prob": 0.0},
        {"id": 1, "seek": 0, "start": 2.5, "end": 5.0, "text": " Ever failed.", "tokens": [], "temperature": 0.0, "avg_logprob": -0.1, "compression_ratio": 1.0, "no_speech_prob": 0.0},
    ], "words": [{"word": "Ever", "start": 0.4, "end": 0.7}, {"word": "tried", "start": 0.7, "end": 1.1}, {"word": "Ever", "start": 2.9, "end": 3.2}, {"word": "failed", "start": 3.2, "end": 3.9}]})  # fmt: skip


async def run_engine(config: OpenAIConfig, handler: Callable[[httpx.Request], httpx.Response], *, api_key: str | None = KEY) -> tuple[object, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):  # the start-up retirement check
            return httpx.Response(404, json={"detail": "Not Found"})
        request.read()
        seen.append(request)
        return handler(request)

    with trio.fail_after(WAIT):
        async with open_openai_engine(config, api_key=api_key, transport=httpx.MockTransport(record)) as engine:
            try:
                return await transcribe_audio(engine, speech()), seen
            except Exception as error:
                return error, seen


# ---------------------------------------------------------------- request bodies


async def test_a_whisper_request_follows_openais_schema() -> None:
    """whisper-1 gets model, verbose_json, the glossary, the language, array fields as `name[]`
    repeated, and the piece as piece.mp3 / audio/mpeg under the body limit, with the key."""
    config = OpenAIConfig(base_url="https://api.example.test/v1", language="en", prompt="Councillor Okonkwo", word_timestamps=True)
    result, seen = await run_engine(config, verbose_answer)
    [request] = seen
    fields, files = parse_multipart(request)
    assert request.method == "POST" and str(request.url) == "https://api.example.test/v1/audio/transcriptions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert fields == [("model", "whisper-1"), ("response_format", "verbose_json"), ("temperature", "0"), ("language", "en"), ("prompt", "Councillor Okonkwo"), ("timestamp_granularities[]", "segment"), ("timestamp_granularities[]", "word")]
    name, content_type, data = files["file"]
    assert (name, content_type) == ("piece.mp3", "audio/mpeg") and data[:3] in (b"ID3", b"\xff\xf3", b"\xff\xfb")
    assert len(request.content) < OPENAI_UPLOAD_LIMIT
    # word times tighten the segments; cost is whisper-1's price for the piece's 10 s
    assert [(s.start, s.end, s.text) for s in result.segments] == [(0.4, 1.1, "Ever tried."), (2.9, 3.9, "Ever failed.")]  # type: ignore[attr-defined]
    assert result.cost == pytest.approx(0.006 * len(speech()) / 16000 / 60)  # type: ignore[attr-defined]


async def test_a_gpt4o_request_asks_for_json_and_its_text_is_timed_at_the_pauses() -> None:
    """gpt-4o-transcribe gets json (never verbose_json or granularities); its text is timed by
    the daemon at the speech inside the piece, and its pieces are planned short, without
    overlap."""
    config = OpenAIConfig(base_url="https://api.example.test/v1", model="gpt-4o-transcribe", word_timestamps=True)
    result, seen = await run_engine(config, lambda request: httpx.Response(200, json={"text": "Ever tried. Ever failed."}))
    fields, _ = parse_multipart(seen[0])
    assert dict(fields) == {"model": "gpt-4o-transcribe", "response_format": "json", "temperature": "0"}
    segments = result.segments  # type: ignore[attr-defined]
    assert " ".join(s.text for s in segments) == "Ever tried. Ever failed."
    assert len(segments) >= 2 and all(len(s.words) == len(s.text.split()) for s in segments)  # split at a pause
    assert segments[-1].end < len(speech()) / 16000  # the speech, not the whole piece
    async with open_openai_engine(config, api_key=KEY) as engine:
        assert engine.traits.limits.max_seconds <= 1380 and engine.traits.limits.overlap_seconds == 0


async def test_no_key_means_no_authorization_header_for_a_compatible_server() -> None:
    """A speaches/vLLM/LocalAI server without a key gets no Authorization header at all."""
    config = OpenAIConfig(base_url="http://gpu-box:8000/v1", model="Systran/faster-whisper-small", price_per_minute=0.0)
    result, seen = await run_engine(config, verbose_answer, api_key=None)
    assert "authorization" not in seen[0].headers and len(result.segments) == 2  # type: ignore[attr-defined]


async def test_openai_itself_without_a_key_stops_start_up() -> None:
    """The default base URL with no key is a configuration error, before any job."""
    with pytest.raises(ConfigError, match="API key"):
        async with open_openai_engine(OpenAIConfig(), api_key=None):
            pass


@pytest.mark.parametrize(("model", "maximum", "fmt"), [("gpt-4o-transcribe", 1390.0, "mp3"), ("whisper-1", 1300.0, "wav")])
def test_pieces_that_could_not_be_sent_are_refused_at_start(model: str, maximum: float, fmt: str) -> None:
    """A piece length over the model's 1400 s cap (less headroom) or over what 25 MiB holds in
    the chosen format is a configuration error."""
    from transcribed.engines.models import model_spec
    from transcribed.engines.openai import piece_limits

    config = OpenAIConfig(model=model, piece_max_seconds=maximum, upload_format=fmt)
    with pytest.raises(ConfigError):
        piece_limits(config, model_spec(model, config.base_url), upload_format(fmt))


async def test_the_same_samples_always_encode_to_the_same_bytes() -> None:
    """Uploads are bit-exact (no metadata, no timestamps), so a piece's hash identifies it."""
    audio = speech()
    with trio.fail_after(WAIT):
        first = await encode_piece(audio, upload_format("mp3"))
        second = await encode_piece(audio, upload_format("mp3"))
    assert first == second and len(first) < 0.0045 * 1000 * len(audio) / 16


# ---------------------------------------------------------------- classification


def body(**error: object) -> bytes:
    return json.dumps({"error": {"message": "m", "type": None, "param": None, "code": None, **error}}).encode()


@pytest.mark.parametrize(
    ("status", "payload", "kind"),
    [
        (400, body(type="invalid_request_error", code="invalid_value"), PermanentError),
        (401, body(code="invalid_api_key"), KeyRefusedError),
        (403, body(), KeyRefusedError),
        (404, body(code="model_not_found"), ModelUnavailableError),
        (404, b'{"detail": "Not Found"}', ModelUnavailableError),
        (413, body(type="server_error"), PermanentError),
        (415, b'{"detail": "Unsupported media type"}', PermanentError),
        (422, b'{"detail": [{"loc": ["body", "file"], "msg": "field required"}]}', PermanentError),
        (408, b"", RetryableError),
        (429, body(type="requests", code="rate_limit_exceeded"), RetryableError),
        (429, body(type="rate_limit_error", code="slow_down"), RetryableError),
        (500, body(type="server_error"), RetryableError),
        (502, b"<html><title>502 Bad Gateway</title></html>", UnreachableError),
        (503, b'{"error": "model loading"}', UnreachableError),
        (504, b"", UnreachableError),
        (429, body(type="insufficient_quota", code="insufficient_quota"), QuotaExhaustedError),
        (429, body(type="insufficient_quota", code="credit_balance_exhausted"), QuotaExhaustedError),
        (429, body(code="organization_spend_limit_exceeded"), QuotaExhaustedError),
    ],
)
def test_status_codes_are_classified_once(status: int, payload: bytes, kind: type[Exception]) -> None:
    """Each status (and each kind of 429) maps to exactly one exception type."""
    assert type(classify_response(status, {}, payload)) is kind


def test_x_should_retry_overrides_the_status() -> None:
    """x-should-retry: false stops a retry of a 500; true retries a 400."""
    assert isinstance(classify_response(500, {"x-should-retry": "false"}, b""), PermanentError)
    assert isinstance(classify_response(400, {"x-should-retry": "true"}, b""), RetryableError)


def test_the_servers_wait_is_read_from_every_header_form() -> None:
    """retry-after-ms wins over Retry-After; Retry-After may be seconds or an HTTP date."""
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "7"}) == 7
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=lambda: 1_000_000.0) == 30
    assert parse_retry_after({"retry-after": "soon"}) is None
    error = classify_response(429, {"retry-after-ms": "250"}, body(code="rate_limit_exceeded"))
    assert isinstance(error, RetryableError) and error.retry_after == 0.25


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"detail": "Model Systran/x is not installed"}', "Model Systran/x is not installed"),
        (b'{"error": "invalid response_format"}', "invalid response_format"),
        (b'{"error": {"code": 413, "message": "Request Entity Too Large", "type": ""}}', "Request Entity Too Large"),
        (b"<html><head><title>413 Request Entity Too Large</title></head></html>", "413 Request Entity Too Large"),
    ],
)
def test_compatible_servers_error_shapes_are_understood(payload: bytes, expected: str) -> None:
    """FastAPI's detail, whisper.cpp's string, LocalAI's int code and proxy HTML all give the
    server's own words."""
    assert expected in classify_response(400, {}, payload).reason


def test_a_refused_key_is_reported_without_any_part_of_it() -> None:
    """OpenAI's 401 echoes the key's start and end; the error keeps neither."""
    echoed = f"Incorrect API key provided: {KEY[:3]}**********{KEY[-4:]}. You can find your API key at https://platform.openai.com."
    error = classify_response(401, {"x-request-id": "req_1"}, body(message=echoed, code="invalid_api_key"), secret=KEY)
    text = f"{error} {error.reason} {error.hint} {error!r}"
    assert "refused" in error.reason and "req_1" in error.reason
    for fragment in (KEY, KEY[:8], KEY[-4:], "sk-"):
        assert fragment not in text


def test_server_messages_are_redacted_before_they_are_kept() -> None:
    """A key (whole, or its first or last characters) or anything key-shaped is removed."""
    assert KEY not in redact(f"bad key {KEY}", KEY)
    assert "WXYZ" not in redact("key ending WXYZ refused", KEY)
    assert "sk-other12345" not in redact("Incorrect API key provided: sk-other12345", None)


def test_transport_failures_are_retryable_but_a_bad_url_is_not() -> None:
    """Connection errors and timeouts are retried; an unusable base URL is permanent."""
    request = httpx.Request("POST", "http://x")
    for error in (httpx.ConnectError("refused", request=request), httpx.ReadTimeout("slow", request=request), httpx.RemoteProtocolError("closed", request=request), httpx.WriteError("reset", request=request), trio.TooSlowError()):
        assert isinstance(classify_transport_error(error), RetryableError)
    assert isinstance(classify_transport_error(httpx.UnsupportedProtocol("ftp")), PermanentError)


# ---------------------------------------------------------------- the key and the config


def test_the_key_comes_from_the_environment_then_the_credential_then_the_file(tmp_path: Path) -> None:
    """OPENAI_API_KEY wins, then $CREDENTIALS_DIRECTORY/openai_api_key, then api_key_file;
    each is stripped; none at all is allowed."""
    (tmp_path / "openai_api_key").write_text(" sk-from-credential\n")
    (tmp_path / "key").write_text("sk-from-file\n")
    config = OpenAIConfig(api_key_file=tmp_path / "key")
    assert load_api_key(config, {"OPENAI_API_KEY": " sk-env ", "CREDENTIALS_DIRECTORY": str(tmp_path)}) == "sk-env"
    assert load_api_key(config, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "sk-from-credential"
    assert load_api_key(config, {}) == "sk-from-file"
    assert load_api_key(OpenAIConfig(), {}) is None
    with pytest.raises(ConfigError):
        load_api_key(OpenAIConfig(api_key_file=tmp_path / "missing"), {})


def test_the_openai_section_loads_from_every_source() -> None:
    """[openai] keys come from flags and TRANSCRIBED_OPENAI_* like every other section's."""
    config = load_config(environ={"TRANSCRIBED_OPENAI_MODEL": "gpt-4o-mini-transcribe"}, flags={"engine": "openai", "openai.requests_per_minute": "50"})
    assert config.engine == "openai" and config.openai.model == "gpt-4o-mini-transcribe" and config.openai.requests_per_minute == 50
    with pytest.raises(ConfigError):
        load_config(environ={}, flags={"openai.piece_target_seconds": "200", "openai.piece_max_seconds": "100"})


@pytest.mark.parametrize(
    ("shutdown", "outcome"),
    [("2026-11-30", "exit"), (1_795_000_000, "exit"), ("2026-12-20", "warn"), ("2027-02-26", "quiet"), (None, "quiet")],
)
async def test_a_model_past_its_shutdown_date_stops_start_up_and_one_near_it_is_warned_of(shutdown: object, outcome: str) -> None:
    """GET /v1/models: a shutdown_date already past is a configuration error naming the model
    and what to set; one within 30 days logs engine.model_retiring; later or none is quiet."""
    import structlog.testing

    from openai_server import FakeOpenAI, ServerSettings

    server = FakeOpenAI(ServerSettings(shutdown_dates={"whisper-1": shutdown, "gpt-transcribe": None}))
    now = lambda: datetime(2026, 12, 1, tzinfo=UTC)  # noqa: E731
    config = OpenAIConfig(base_url="", model="whisper-1")
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        config = dataclasses.replace(config, base_url=url)
        with structlog.testing.capture_logs() as logs:
            if outcome == "exit":
                with pytest.raises(ConfigError, match="whisper-1 was retired") as raised:
                    async with open_openai_engine(config, now=now):
                        pass
                assert "gpt-transcribe" in raised.value.hint
            else:
                async with open_openai_engine(config, now=now):
                    pass
        warned = [entry for entry in logs if entry["event"] == "engine.model_retiring"]
        assert bool(warned) == (outcome == "warn")
        nursery.cancel_scope.cancel()
