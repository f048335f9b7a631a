"""The model table: what each model is sent and what it costs, the safe defaults for models it
does not know, and the start-up checks of keywords, languages and price."""

from __future__ import annotations

import json

import httpx
import pytest
from test_openai_engine import parse_multipart, run_engine, speech, verbose_answer
from transcribed.config import OpenAIConfig, load_config
from transcribed.engines.models import check_options, model_spec
from transcribed.errors import ConfigError

OPENAI = "https://api.openai.com/v1"


async def test_gpt_transcribe_gets_json_keywords_and_languages_at_its_price() -> None:
    """gpt-transcribe is asked for json with keywords[] and languages[] repeated, never
    language beside languages, and a piece costs $0.0045 a minute."""
    config = OpenAIConfig(
        model="gpt-transcribe", keywords=("Okonkwo", "Kingsbridge"), languages=("en", "cy")
    )
    result, seen = await run_engine(config, lambda r: httpx.Response(200, json={"text": "Ever tried."}))
    fields, _ = parse_multipart(seen[0])
    assert fields == [
        ("model", "gpt-transcribe"), ("response_format", "json"), ("temperature", "0"),
        ("languages[]", "en"), ("languages[]", "cy"), ("keywords[]", "Okonkwo"), ("keywords[]", "Kingsbridge"),
    ]  # fmt: skip
    assert result.cost == pytest.approx(0.0045 * len(speech()) / 16000 / 60)  # type: ignore[attr-defined]


def test_older_models_and_their_snapshots_keep_their_formats_and_prices() -> None:
    """whisper-1 gives timestamps at $0.006; the gpt-4o family (dated snapshots too) is
    text-only json under a 1400 s cap; all of them retire on 2027-02-26."""
    whisper = model_spec("whisper-1", OPENAI)
    assert whisper.timestamps and whisper.response_format == "verbose_json" and whisper.price_per_minute == 0.006
    snapshot = model_spec("gpt-4o-transcribe-2025-03-20", OPENAI)
    assert (snapshot.response_format, snapshot.price_per_minute, snapshot.max_audio_seconds) == ("json", 0.006, 1400.0)
    assert model_spec("gpt-4o-mini-transcribe", OPENAI).price_per_minute == 0.003
    assert not model_spec("gpt-4o-transcribe-diarize", OPENAI).takes_prompt
    assert {model_spec(m, OPENAI).shutdown_date for m in ("whisper-1", "gpt-4o-transcribe")} == {"2027-02-26"}
    assert model_spec("gpt-transcribe", OPENAI).shutdown_date is None


def test_an_unknown_openai_model_is_text_only_and_needs_a_price() -> None:
    """A model OpenAI may add later is asked for json; with no known price and a cost cap the
    start-up stops and asks for openai.price_per_minute, unless the cap is switched off."""
    spec = model_spec("gpt-transcribe-ultra", OPENAI)
    assert spec.name == "gpt-transcribe-ultra" and spec.response_format == "json"
    unknown = model_spec("gpt-7-hear", OPENAI)
    assert unknown.response_format == "json" and unknown.price_per_minute is None
    with pytest.raises(ConfigError, match="price_per_minute"):
        check_options(unknown, OpenAIConfig(model="gpt-7-hear"))
    check_options(unknown, OpenAIConfig(model="gpt-7-hear", price_per_minute=0.01))
    check_options(unknown, OpenAIConfig(model="gpt-7-hear", max_cost_per_file=0.0))


async def test_a_compatible_server_refusing_verbose_json_gets_json_from_then_on() -> None:
    """An unknown model elsewhere is asked for verbose_json; a 400 refusing that format makes
    the engine resend the piece once as json and keep asking json afterwards."""
    config = OpenAIConfig(base_url="http://gpu-box:8000/v1", model="my-parakeet", price_per_minute=0.0)
    formats: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        fields = dict(parse_multipart(request)[0])
        formats.append(fields["response_format"])
        if fields["response_format"] == "verbose_json":
            return httpx.Response(400, json={"error": {"message": "response_format 'verbose_json' is not supported", "type": "invalid_request_error", "param": "response_format"}})
        return httpx.Response(200, json={"text": "Ever tried."})

    result, _ = await run_engine(config, handler)
    assert formats == ["verbose_json", "json"]
    assert " ".join(s.text for s in result.segments) == "Ever tried."  # type: ignore[attr-defined]


async def test_a_compatible_whisper_keeps_its_timestamps() -> None:
    """An unknown model elsewhere that answers verbose_json keeps the server's (word) times."""
    config = OpenAIConfig(base_url="http://gpu-box:8000/v1", model="Systran/faster-whisper-small", price_per_minute=0.0)
    result, seen = await run_engine(config, verbose_answer)
    assert dict(parse_multipart(seen[0])[0])["response_format"] == "verbose_json"
    assert [(s.start, s.text) for s in result.segments] == [(0.4, "Ever tried."), (2.9, "Ever failed.")]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"model": "gpt-transcribe", "keywords": ("<b>Okonkwo</b>",)}, "not a valid keyword"),
        ({"model": "gpt-transcribe", "keywords": ("two\nlines",)}, "not a valid keyword"),
        ({"model": "gpt-transcribe", "keywords": ("  ",)}, "not a valid keyword"),
        ({"model": "whisper-1", "keywords": ("Okonkwo",)}, "does not take keywords"),
        ({"model": "gpt-transcribe", "languages": ("en",), "language": "en"}, "both set"),
        ({"model": "gpt-transcribe", "languages": ("English",)}, "ISO-639-1"),
        ({"model": "gpt-transcribe", "languages": ()}, "empty"),
        ({"model": "gpt-4o-transcribe", "languages": ("en",)}, "list of languages"),
        ({"model": "gpt-4o-transcribe-diarize", "prompt": "Okonkwo"}, "does not take a prompt"),
        ({"model": "gpt-transcribe", "response_format": "verbose_json"}, "not one gpt-transcribe answers"),
    ],
)
def test_options_the_api_would_refuse_stop_start_up(options: dict[str, object], complaint: str) -> None:
    """Keywords and languages follow the API's rules and the model's abilities, at start."""
    config = OpenAIConfig(**options)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=complaint):
        check_options(model_spec(config.model, config.base_url), config)


def test_keywords_and_languages_come_from_toml_lists_or_the_environment(tmp_path: object) -> None:
    """A TOML array, a comma-separated variable or a JSON array all give the same list."""
    from pathlib import Path

    path = Path(str(tmp_path)) / "c.toml"
    path.write_text('[openai]\nmodel = "gpt-transcribe"\nkeywords = ["Okonkwo", "Ní Bhriain"]\n')
    assert load_config(path=path, environ={}).openai.keywords == ("Okonkwo", "Ní Bhriain")
    environ = {"TRANSCRIBED_OPENAI_LANGUAGES": "en, cy"}
    assert load_config(environ=environ).openai.languages == ("en", "cy")
    environ = {"TRANSCRIBED_OPENAI_KEYWORDS": json.dumps(["a, b", "c"])}
    assert load_config(environ=environ).openai.keywords == ("a, b", "c")
    with pytest.raises(ConfigError, match="a list of text"):
        path.write_text("[openai]\nkeywords = [1, 2]\n")
        load_config(path=path, environ={})
