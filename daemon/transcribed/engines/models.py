"""The model table: what each transcription model takes and returns, as data.

For every model the engine may be pointed at: the response formats it accepts, whether its answer
carries timestamps, its duration cap, its list price, which of prompt / keywords / languages /
language it takes, and the piece lengths that suit it. A model the table does not know gets a
safe default that depends on the server: on api.openai.com, a text-only `json` model (every new
OpenAI model since whisper-1 is one); on any other server (speaches, whisper.cpp, vLLM, LocalAI,
Groq), a Whisper-like model asked for `verbose_json`, which the engine drops for `json` once if
the server refuses it. Facts: ../shared/reference/openai-audio-api.md (§2, §7).

`check_options` validates the configured keywords / languages / price against the model at
start-up, with the API's own rules, so a bad value stops the daemon instead of failing files.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from transcribed.config import OpenAIConfig
from transcribed.errors import ConfigError

OPENAI_HOST = "api.openai.com"
RETIREMENT_2027 = "2027-02-26"  # whisper-1 and the gpt-4o transcribe family (notice 2026-08-26)

# Piece lengths. Timestamped answers: long pieces (fewer requests, more context), since the
# server times the words. Text-only answers are timed by the daemon at the pauses inside each
# piece (timing.py), so their timing does not depend on the piece length: measured with
# bench/timing.py on 600 s of real speech, utterance start p95 0.666 / 0.664 / 0.664 s for
# 15 / 30 / 120 s pieces, with 35 / 16 / 4 requests. Long pieces give the model more context
# and need fewer requests; 180 s at most keeps an answer (≤ ~600 words) far below the gpt-4o
# models' 2,000 output tokens, which a 1400 s piece of fast speech would exceed.
_TIMED_PIECES = (120.0, 180.0)
_TEXT_PIECES = (120.0, 180.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """What one model takes and returns."""

    name: str
    response_formats: frozenset[str]
    timestamps: bool  # the answer can carry timed segments (verbose_json)
    max_audio_seconds: float | None  # the server refuses longer audio; None: no known cap
    price_per_minute: float | None  # US dollars; None: not known
    takes_prompt: bool = True
    takes_keywords: bool = False
    takes_languages: bool = False
    takes_language: bool = True
    piece_target_seconds: float
    piece_max_seconds: float
    shutdown_date: str | None = None
    known: bool = True  # False: a default for a model the table does not list
    # unknown model on another server: ask verbose_json, fall back to json on a refusal
    may_refuse_verbose: bool = False

    @property
    def response_format(self) -> str:
        """The format asked for by default: timed segments where the model gives them."""
        return "verbose_json" if self.timestamps else "json"


def _text_only(name: str, price: float, **more: object) -> ModelSpec:
    fields: dict[str, object] = {
        "name": name,
        "response_formats": frozenset({"json", "text"}),
        "timestamps": False,
        "max_audio_seconds": 1400.0,
        "price_per_minute": price,
        "piece_target_seconds": _TEXT_PIECES[0],
        "piece_max_seconds": _TEXT_PIECES[1],
        "shutdown_date": RETIREMENT_2027,
        **more,
    }
    return ModelSpec(**fields)  # type: ignore[arg-type]


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="whisper-1",
            response_formats=frozenset({"json", "text", "srt", "verbose_json", "vtt"}),
            timestamps=True,
            max_audio_seconds=None,
            price_per_minute=0.006,
            piece_target_seconds=_TIMED_PIECES[0],
            piece_max_seconds=_TIMED_PIECES[1],
            shutdown_date=RETIREMENT_2027,
        ),
        _text_only("gpt-4o-transcribe", 0.006),
        _text_only("gpt-4o-mini-transcribe", 0.003),
        _text_only("gpt-4o-mini-transcribe-2025-12-15", 0.003),
        _text_only(
            "gpt-4o-transcribe-diarize",
            0.006,
            response_formats=frozenset({"json", "text", "diarized_json"}),
            takes_prompt=False,
        ),
        # The successor: no documented duration cap (an 1800 s upload was accepted).
        _text_only(
            "gpt-transcribe",
            0.0045,
            max_audio_seconds=None,
            takes_keywords=True,
            takes_languages=True,
            shutdown_date=None,
        ),
    )
}
# dated snapshots (gpt-4o-transcribe-2025-03-20...) behave as their family; longest name first
_FAMILIES = sorted(MODELS, key=len, reverse=True)


def is_openai(base_url: str) -> bool:
    return OPENAI_HOST in base_url.split("//", 1)[-1].split("/", 1)[0]


def model_spec(model: str, base_url: str) -> ModelSpec:
    """The table's entry for `model`, a snapshot's family entry, or the safe default."""
    if model in MODELS:
        return MODELS[model]
    for family in _FAMILIES:
        if model.startswith(family + "-"):
            return dataclasses.replace(MODELS[family], name=model)
    if is_openai(base_url):
        return ModelSpec(
            name=model,
            response_formats=frozenset({"json", "text"}),
            timestamps=False,
            max_audio_seconds=1400.0,
            price_per_minute=None,
            piece_target_seconds=_TEXT_PIECES[0],
            piece_max_seconds=_TEXT_PIECES[1],
            known=False,
        )
    return ModelSpec(
        name=model,
        response_formats=frozenset({"json", "text", "verbose_json"}),
        timestamps=True,
        max_audio_seconds=None,
        price_per_minute=None,
        piece_target_seconds=_TIMED_PIECES[0],
        piece_max_seconds=_TIMED_PIECES[1],
        known=False,
        may_refuse_verbose=True,
    )


# the API's rule for keywords[]: one line each, no angle brackets (one bad one rejects a request)
_BAD_KEYWORD = re.compile(r"[<>\r\n]")
_LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}$")


def check_options(spec: ModelSpec, config: OpenAIConfig) -> None:
    """Raise ConfigError for options the model does not take or the API would refuse."""
    model = config.model
    if config.keywords is not None:
        if spec.known and not spec.takes_keywords:
            raise ConfigError(
                f"openai.keywords is set, but {model} does not take keywords",
                hint="use openai.prompt for a glossary, or a model that takes keywords "
                '(openai.model = "gpt-transcribe")',
            )
        for keyword in config.keywords:
            if not keyword.strip() or _BAD_KEYWORD.search(keyword):
                raise ConfigError(
                    f"openai.keywords: {keyword!r} is not a valid keyword",
                    hint="each keyword is one non-empty line without < or >",
                )
    if config.languages is not None:
        if spec.known and not spec.takes_languages:
            raise ConfigError(
                f"openai.languages is set, but {model} does not take a list of languages",
                hint="use openai.language (one ISO-639-1 code) with this model",
            )
        if not config.languages:
            raise ConfigError("openai.languages is empty", hint="name at least one language")
        if config.language:
            raise ConfigError(
                "openai.language and openai.languages are both set; the API takes only one",
                hint="keep openai.languages and remove openai.language",
            )
        for code in config.languages:
            if not _LANGUAGE_CODE.match(code):
                raise ConfigError(
                    f"openai.languages: {code!r} is not an ISO-639-1 code",
                    hint='write codes such as "en", "de", "cy"',
                )
    if config.prompt and spec.known and not spec.takes_prompt:
        raise ConfigError(
            f"openai.prompt is set, but {model} does not take a prompt",
            hint="remove openai.prompt or choose another model",
        )
    if config.language and spec.known and not spec.takes_language:
        raise ConfigError(f"openai.language is set, but {model} does not take a language")
    if config.response_format != "auto" and config.response_format not in spec.response_formats:
        raise ConfigError(
            f"openai.response_format {config.response_format!r} is not one {model} answers "
            f"({', '.join(sorted(spec.response_formats))})",
            hint='set openai.response_format = "auto"',
        )
    if (
        spec.price_per_minute is None
        and config.price_per_minute is None
        and config.max_cost_per_file > 0
    ):
        raise ConfigError(
            f"the price of {model} is not known, so openai.max_cost_per_file cannot be kept",
            hint="set openai.price_per_minute (US dollars per audio minute; 0 for a server of "
            "your own), or set openai.max_cost_per_file = 0 to switch the cost cap off",
        )
