"""Configuration: frozen value objects, loaded from a TOML file, the environment and flags.

Precedence is flag > environment > file > default. Every key of every section is described once,
in the dataclasses below (type, default, help, bounds); the environment variable
(`TRANSCRIBED_<SECTION>_<KEY>`, upper case) and the command-line flag (`--<section>-<key>`) are
derived from that description, so the three sources can never drift apart. Unknown keys and bad
values raise `ConfigError` naming the key and where it came from.

`[profiles.NAME]` tables (from the file only) give a subfolder of the inbox its own values for a
few keys (PROFILE_KEYS); `Config.for_profile(NAME)` is the configuration its recordings are
transcribed with, built and validated at load like the main one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transcribed.errors import ConfigError
from transcribed.media import MediaLimits

ENV_PREFIX = "TRANSCRIBED_"
FAILPOINT_ENV = "TRANSCRIBED_FAILPOINT"  # a test hook (failpoints.py), not configuration


def _key(help_text: str, default: Any, **bounds: Any) -> Any:
    return field(default=default, metadata={"help": help_text, **bounds})


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddedConfig:
    """The embedded Moonshine engine (offline, CPU)."""

    model_dir: Path | None = _key(
        "folder with the Moonshine base-en weights; default: the one shipped in moonshine-cpp",
        None,
    )
    workers: int = _key(
        "engine worker processes, each with its own model (~0.5 GiB each); default: one per core",
        0,
        min=0,
        max=64,
    )
    piece_target_seconds: float = _key(
        "aim for pieces of about this length, cut in a pause", 30.0, min=5.0, max=600.0
    )
    piece_max_seconds: float = _key(
        "never send a piece longer than this (memory grows with it)", 45.0, min=10.0, max=600.0
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenAIConfig:
    """The OpenAI-compatible HTTP engine (OpenAI itself, speaches, vLLM, LocalAI, whisper.cpp).

    The API key is not a key here: it comes from OPENAI_API_KEY, the systemd credential
    `openai_api_key`, or `api_key_file`, and never from this file.
    """

    base_url: str = _key(
        "the API's base URL; POST {base_url}/audio/transcriptions", "https://api.openai.com/v1"
    )
    model: str = _key(
        "the transcription model (gpt-transcribe, whisper-1, gpt-4o-transcribe...)",
        "whisper-1",
    )
    api_key_file: Path | None = _key(
        "a file holding the API key, read when neither OPENAI_API_KEY nor a systemd credential is set",
        None,
    )
    language: str | None = _key(
        "the language spoken, ISO-639-1 (en, de...); default: detected", None
    )
    prompt: str | None = _key(
        "a glossary for the model: names and terms of the body holding the hearing", None
    )
    # --- issue 9: model table keys (keywords/languages are checked against the model at start)
    keywords: tuple[str, ...] | None = _key(
        "words or phrases to guide transcription (gpt-transcribe): one line each, no < or >",
        None,
    )
    languages: tuple[str, ...] | None = _key(
        "the languages the audio may be in, ISO-639-1 (gpt-transcribe); not with openai.language",
        None,
    )
    # --- end issue 9
    response_format: str = _key(
        "verbose_json (timed segments), json (text only), or auto: by the model table",
        "auto",
        choices=("auto", "verbose_json", "json"),
    )
    word_timestamps: bool = _key(
        "also ask whisper-1 for word times (tighter segment bounds, a little slower)", False
    )
    upload_format: str = _key(
        "how pieces are encoded for upload", "mp3", choices=("mp3", "flac", "wav")
    )
    upload_bitrate: int = _key("kbit/s of mp3 uploads (16 kHz mono)", 32, min=16, max=128)
    max_upload_bytes: int = _key(
        "the server's request body limit (OpenAI: 26214400)", 26_214_400, min=1_000_000
    )
    piece_target_seconds: float | None = _key(
        "aim for pieces of about this length; default: by model (120 s)",
        None,
        min=5.0,
        max=1380.0,
    )
    piece_max_seconds: float | None = _key(
        "never send a piece longer than this; default: by model (180 s)",
        None,
        min=10.0,
        max=1380.0,
    )
    max_concurrent_requests: int = _key(
        "requests in flight at once, all jobs together", 16, min=1, max=256
    )
    requests_per_minute: float = _key(
        "requests started per minute, all jobs together (your account's RPM limit)", 500.0, min=1.0
    )
    connect_timeout: float = _key("seconds to open a connection", 10.0, min=0.1)
    request_timeout: float = _key(
        "seconds one attempt may take: upload, transcription and answer", 300.0, min=1.0
    )
    max_attempts: int = _key("attempts per piece before its job fails", 8, min=1, max=100)
    retry_delay: float = _key(
        "first wait before a retry; doubles each time (with jitter)", 1.0, min=0.0
    )
    retry_max_delay: float = _key("the wait before a retry never grows past this", 30.0, min=0.0)
    retry_timeout: float = _key(
        "give up on a piece (and fail its job) after retrying it this long", 900.0, min=1.0
    )
    quota_retry_interval: float = _key(
        "when the account's quota is exhausted (or the key or model is refused), jobs wait and "
        "try again after this long",
        900.0,
        min=1.0,
    )
    unreachable_retry_interval: float = _key(
        "when the server stayed unreachable for a piece's whole retry budget, all requests "
        "pause this long (nothing fails) and then try again",
        120.0,
        min=1.0,
    )
    max_retry_after: float = _key(
        "honour a server's Retry-After up to this many seconds (a longer one is cut to this)",
        600.0,
        min=0.0,
    )
    price_per_minute: float | None = _key(
        "US dollars per audio minute; default: by model (gpt-transcribe 0.0045, whisper-1 0.006, "
        "gpt-4o-transcribe 0.006, gpt-4o-mini-transcribe 0.003); required for any other model "
        "while max_cost_per_file is above 0",
        None,
        min=0.0,
    )
    max_cost_per_file: float = _key(
        "the most one recording may cost, in US dollars, kept on the decoded audio as it "
        "streams (a file over it ends too_expensive having spent at most this); 0: no cap",
        5.0,
        min=0.0,
    )


# ---- issue 10: the status page and the per-job hooks (sections [web] and [notify]) ----
@dataclass(frozen=True, slots=True, kw_only=True)
class WebConfig:
    """The status page, /healthz and /metrics (web.py), served by the daemon itself."""

    listen: str = _key(
        "HOST:PORT of the status page, /healthz and /metrics; empty disables them",
        "127.0.0.1:8750",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyConfig:
    """What runs once per finished or failed job (notify.py)."""

    command: tuple[str, ...] | None = _key(
        "a program and its arguments, run once per finished or failed job with the job's summary as JSON on stdin",
        None,
        shell_words=True,
    )
    webhook_url: str | None = _key(
        "POST each finished or failed job's summary as JSON to this URL", None
    )
    timeout: float = _key(
        "seconds the command, or one webhook attempt, may take", 30.0, min=1.0, max=3600.0
    )
    webhook_attempts: int = _key(
        "attempts per webhook delivery before it is given up (and logged)", 3, min=1, max=20
    )


# ---- end issue 10 ----


# --- issue 9: the [subtitles] section (its fields are subtitles.SubtitleRules's)
@dataclass(frozen=True, slots=True, kw_only=True)
class SubtitlesConfig:
    """How .srt and .vtt cues are cut (the usual broadcast rules by default)."""

    max_line_chars: int = _key("characters a subtitle line holds at most", 42, min=10, max=200)
    max_lines: int = _key("lines a cue holds at most", 2, min=1, max=4)
    max_cue_seconds: float = _key("seconds a cue is shown at most", 7.0, min=1.0, max=60.0)
    min_cue_seconds: float = _key(
        "seconds a cue is shown at least, unless the speech is shorter", 1.0, min=0.0, max=10.0
    )
    max_chars_per_second: float = _key(
        "reading speed a cue keeps under where the speech allows", 20.0, min=5.0, max=100.0
    )
    pause_break_seconds: float = _key("a pause this long always ends a cue", 1.0, min=0.1, max=60.0)


# --- end issue 9


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything the daemon needs to know; built once at start-up."""

    root: Path = _key("folder holding inbox/ outbox/ work/ done/ failed/", Path("."))
    inbox: Path | None = _key("recordings are dropped here (default: ROOT/inbox)", None)
    outbox: Path | None = _key("transcripts and progress files (default: ROOT/outbox)", None)
    work: Path | None = _key("claimed jobs and their journals (default: ROOT/work)", None)
    done: Path | None = _key("sources after success (default: ROOT/done)", None)
    failed: Path | None = _key("rejected sources and NAME.error.json (default: ROOT/failed)", None)
    engine: str = _key("which engine transcribes", "embedded", choices=("embedded", "openai"))
    after_success: str = _key(
        "what to do with a source once its transcript is written",
        "move",
        choices=("move", "delete"),
    )
    settle_interval: float = _key(
        "a file counts as arrived once its size and mtime stayed unchanged this long",
        5.0,
        min=0.0,
        max=3600.0,
    )
    rescan_interval: float = _key(
        "look at the inbox this often even without file events", 30.0, min=0.1, max=3600.0
    )
    job_workers: int = _key("jobs worked on at the same time", 2, min=1, max=64)
    max_audio_seconds: float = _key(
        "refuse recordings whose decoded audio is longer than this", 12 * 3600.0, min=1.0
    )
    min_audio_seconds: float = _key(
        "refuse recordings whose decoded audio is shorter than this", 0.2, min=0.0
    )
    probe_timeout: float = _key("seconds ffprobe may take on one file", 60.0, min=1.0)
    media_cpu_seconds: int = _key(
        "CPU seconds one ffprobe/ffmpeg child may use on a file before it is killed",
        3600,
        min=10,
    )
    media_memory_mb: int = _key(
        "address space one ffprobe/ffmpeg child may use, in MiB", 1024, min=128
    )
    min_free_space_mb: int = _key(
        "pause intake (and jobs before they write) while work/ or outbox/ has less free space",
        512,
        min=0,
    )
    decode_stall_timeout: float = _key(
        "fail a job whose decoder produces nothing for this long", 120.0, min=1.0
    )
    max_attempts: int = _key(
        "a job that crashed the daemon this many times in a row without finishing a single new "
        "piece goes to failed/ (poison)",
        3,
        min=1,
        max=100,
    )
    service_retry_interval: float = _key(
        "when a folder cannot be written (permissions, read-only), the job waits this long and "
        "tries again; nothing fails",
        30.0,
        min=0.1,
        max=3600.0,
    )
    drain_timeout: float = _key(
        "on SIGTERM, let running pieces finish for at most this long", 60.0, min=0.0, max=3600.0
    )
    log_format: str = _key(
        "log lines as JSON, as readable console text, or auto (console on a terminal)",
        "auto",
        choices=("auto", "json", "console"),
    )
    log_level: str = _key(
        "lowest level logged", "info", choices=("debug", "info", "warning", "error")
    )
    # -- speakers (issue 12) --
    speakers: str = _key(
        "label who speaks when, on this machine: auto (for the embedded engine), on, or off",
        "auto",
        choices=("auto", "on", "off"),
    )
    speakers_dir: Path | None = _key(
        "folder of reference clips (NAME.wav, 2-30 s of one person each) that name known speakers",
        None,
    )
    outputs: tuple[str, ...] = _key(
        "which transcript files to write, of txt, srt, vtt, json and docx",
        ("txt", "srt", "vtt", "json", "docx"),
        choices=("txt", "srt", "vtt", "json", "docx"),
    )
    # -- end speakers --
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    web: WebConfig = field(default_factory=WebConfig)  # issue 10
    notify: NotifyConfig = field(default_factory=NotifyConfig)  # issue 10
    subtitles: SubtitlesConfig = field(default_factory=SubtitlesConfig)  # issue 9
    # [profiles.NAME] from the config file (not a key: see PROFILE_KEYS)
    profiles: tuple[Profile, ...] = ()

    @property
    def media_limits(self) -> MediaLimits:
        return MediaLimits(
            cpu_seconds=self.media_cpu_seconds, memory_bytes=self.media_memory_mb << 20
        )

    def folder(self, name: str) -> Path:
        """The absolute path of one of inbox/outbox/work/done/failed."""
        explicit: Path | None = getattr(self, name)
        return (explicit if explicit is not None else self.root / name).absolute()

    @property
    def folders(self) -> dict[str, Path]:
        return {name: self.folder(name) for name in ("inbox", "outbox", "work", "done", "failed")}

    @property
    def profile_names(self) -> tuple[str, ...]:
        return tuple(profile.name for profile in self.profiles)

    def subfolders(self, name: str) -> Config:
        """This configuration with NAME subfolders of its inbox, outbox, done and failed (work/
        is shared) and no profiles: where a profile's recordings, transcripts and sources go."""
        return dataclasses.replace(
            self,
            inbox=self.folder("inbox") / name,
            outbox=self.folder("outbox") / name,
            done=self.folder("done") / name,
            failed=self.folder("failed") / name,
            profiles=(),
        )

    def for_profile(self, name: str) -> Config:
        """The configuration recordings in inbox/NAME/ are transcribed with: this one with the
        profile's keys in place, in the NAME subfolders."""
        for profile in self.profiles:
            if profile.name == name:
                return profile.applied_to(self.subfolders(name))
        raise ConfigError(
            f"there is no [profiles.{name}] in the configuration",
            hint="profiles configured: " + (", ".join(self.profile_names) or "none"),
        )


# The keys a profile may set, as the main configuration spells them: what a folder's recordings
# may need of their own (their language, glossary, model, outputs and speakers). The rest (the
# engine, limits, folders) is the daemon's, shared by every folder.
PROFILE_KEYS = (
    "outputs",
    "speakers",
    "speakers_dir",
    "openai.model",
    "openai.language",
    "openai.languages",
    "openai.prompt",
    "openai.keywords",
    "openai.response_format",
    "openai.price_per_minute",
)
# a profile's name is a folder's: one plain path component, never hidden or a temp name
_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def is_profile_name(name: str) -> bool:
    """Whether `name` may name a profile (and so a subfolder of the daemon's folders)."""
    return _PROFILE_NAME.fullmatch(name) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """[profiles.NAME]: the keys (dotted, as in PROFILE_KEYS) whose values recordings dropped in
    inbox/NAME/ get instead of the main configuration's."""

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()

    def applied_to(self, config: Config) -> Config:
        top = {key: value for key, value in self.overrides if "." not in key}
        sections: dict[str, dict[str, Any]] = {}
        for key, value in self.overrides:
            if "." in key:
                section, name = key.split(".", 1)
                sections.setdefault(section, {})[name] = value
        replaced = {
            section: dataclasses.replace(getattr(config, section), **values)
            for section, values in sections.items()
        }
        return dataclasses.replace(config, **top, **replaced)


SECTIONS: dict[str, type[Any]] = {
    "embedded": EmbeddedConfig,
    "openai": OpenAIConfig,
    "web": WebConfig,  # issue 10
    "notify": NotifyConfig,  # issue 10
    "subtitles": SubtitlesConfig,  # issue 9
}


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySpec:
    """One configuration key: where it lives and how it is spelled in each source."""

    section: str | None
    name: str
    type: Any
    optional: bool
    help: str
    default: Any
    choices: tuple[str, ...] | None
    min: float | None
    max: float | None
    shell_words: bool = False  # a list given as one string is split as a shell would

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dotted.replace(".", "_").upper()

    @property
    def flag(self) -> str:
        return "--" + self.dotted.replace(".", "-").replace("_", "-")


def _spec_for(section: str | None, f: dataclasses.Field[Any], hints: Mapping[str, Any]) -> KeySpec:
    hint = hints[f.name]
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    default = f.default if f.default is not dataclasses.MISSING else None
    return KeySpec(
        section=section,
        name=f.name,
        type=hint,
        optional=optional,
        help=f.metadata.get("help", ""),
        default=default,
        choices=f.metadata.get("choices"),
        min=f.metadata.get("min"),
        max=f.metadata.get("max"),
        shell_words=bool(f.metadata.get("shell_words", False)),
    )


def key_specs() -> Iterator[KeySpec]:
    """Every configuration key, top level first, then each section's."""
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if f.name not in SECTIONS and f.name != "profiles":
            yield _spec_for(None, f, hints)
    for section, cls in SECTIONS.items():
        section_hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield _spec_for(section, f, section_hints)


def _convert(spec: KeySpec, raw: Any, source: str) -> Any:
    """Turn a raw value (TOML value or string) into the key's type, or raise ConfigError."""
    where = f"{spec.dotted} (from {source})"
    if raw is None or (isinstance(raw, str) and raw == "" and spec.optional):
        if spec.optional:
            return None
        raise ConfigError(f"{where} must have a value")
    try:
        if spec.type is bool:
            if isinstance(raw, bool):
                value: Any = raw
            elif str(raw).lower() in ("1", "true", "yes", "on"):
                value = True
            elif str(raw).lower() in ("0", "false", "no", "off"):
                value = False
            else:
                raise ValueError(raw)
        elif spec.type is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            value = int(raw)
        elif spec.type is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            value = float(raw)
        elif typing.get_origin(spec.type) is tuple and spec.shell_words:  # an argv list
            if isinstance(raw, str):
                value = tuple(shlex.split(raw))
            elif isinstance(raw, list | tuple) and all(isinstance(item, str) for item in raw):
                value = tuple(raw)
            else:
                raise ValueError(raw)
            if not value:
                raise ValueError(raw)
        elif typing.get_origin(spec.type) is tuple:  # a list of text
            value = _text_list(raw)
        elif spec.type is Path:
            if not isinstance(raw, str | Path):
                raise ValueError(raw)
            value = Path(os.path.expanduser(str(raw)))
        else:
            if not isinstance(raw, str):
                raise ValueError(raw)
            value = raw
    except ValueError:
        kind = {bool: "true or false", int: "a whole number", float: "a number"}.get(
            spec.type, "a list of text" if typing.get_origin(spec.type) is tuple else "text"
        )
        raise ConfigError(
            f"{where}: {shown(raw)} is not {kind}", hint=f"{spec.dotted}: {spec.help}"
        ) from None
    if spec.type is float and not math.isfinite(value):
        raise ConfigError(f"{where}: {shown(raw)} is not a finite number")
    if spec.choices is not None and isinstance(value, tuple):
        for item in value:
            if item not in spec.choices:
                raise ConfigError(
                    f"{where}: {item!r} is not one of {', '.join(spec.choices)}",
                    hint=f"{spec.dotted}: {spec.help}",
                )
    elif spec.choices is not None and value not in spec.choices:
        raise ConfigError(
            f"{where}: {shown(value)} is not one of {', '.join(spec.choices)}",
            hint=f"{spec.dotted}: {spec.help}",
        )
    if spec.min is not None and value < spec.min:
        raise ConfigError(f"{where}: {value!r} is below the minimum {spec.min:g}")
    if spec.max is not None and value > spec.max:
        raise ConfigError(f"{where}: {value!r} is above the maximum {spec.max:g}")
    return value


# Key-shaped text: an API key pasted into the wrong place must not reach stderr (journald).
_SECRET_PREFIX = re.compile(r"(?:^|[^A-Za-z0-9])(?:sk|rk|pk|gsk|key)[-_]|Bearer\s", re.IGNORECASE)
_TOKEN = re.compile(r"[A-Za-z0-9_\-+=]{32,}")


def looks_secret(text: str) -> bool:
    """Whether `text` holds something key-shaped: a key prefix, or a long random-looking run."""
    if _SECRET_PREFIX.search(text):
        return True
    return any(sum(ch.isdigit() for ch in token) >= 4 for token in _TOKEN.findall(text))


def shown(value: Any) -> str:
    """A configuration value as an error message may quote it: short and never a secret."""
    text = str(value)
    if looks_secret(text):
        return "the value given (not shown: it looks like a secret)"
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


def _text_list(raw: Any) -> tuple[str, ...]:
    """A TOML array of strings; from the environment or a flag, a JSON array or a, b, c."""
    if isinstance(raw, str):
        if raw.lstrip().startswith("["):
            try:
                raw = json.loads(raw)
            except ValueError:
                raise ValueError(raw) from None
        else:
            raw = [part.strip() for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list | tuple) or not all(isinstance(item, str) for item in raw):
        raise ValueError(raw)
    return tuple(raw)


def _flatten_toml(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    known = {spec.dotted for spec in key_specs()}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "profiles":
            continue  # read by _profiles_from_toml
        if key in SECTIONS and isinstance(value, Mapping):
            for sub_key, sub_value in value.items():
                flat[f"{key}.{sub_key}"] = sub_value
        else:
            flat[key] = value
    for dotted in flat:
        if dotted not in known:
            raise ConfigError(
                f"unknown key {dotted!r} in {path}",
                hint="see config/transcribed.example.toml for every key",
            )
    return flat


def load_config(
    *,
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Build the Config from defaults < file < environment < flags.

    `flags` maps dotted key names to raw values (strings or already-typed values); keys whose
    value is None are treated as not given.
    """
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    specs = {spec.dotted: spec for spec in key_specs()}

    from_file: dict[str, Any] = {}
    profiles: tuple[Profile, ...] = ()
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
            from_file = _flatten_toml(data, path)
            profiles = _profiles_from_toml(data.get("profiles"), path, specs)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except PermissionError:
            raise ConfigError(f"config file {path} is not readable by this user") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None

    known_env = {spec.env for spec in specs.values()} | {FAILPOINT_ENV}
    for name in environ:
        if name.startswith(ENV_PREFIX) and name not in known_env:
            raise ConfigError(
                f"unknown environment variable {name}",
                hint="see config/transcribed.example.toml for every key",
            )

    values: dict[str, Any] = {}
    for dotted, spec in specs.items():
        if dotted in flags:
            values[dotted] = _convert(spec, flags[dotted], f"flag {spec.flag}")
        elif spec.env in environ:
            values[dotted] = _convert(spec, environ[spec.env], f"environment {spec.env}")
        elif dotted in from_file:
            values[dotted] = _convert(spec, from_file[dotted], f"config file {path}")
    for dotted in flags:
        if dotted not in specs:
            raise ConfigError(f"unknown key {dotted!r}")

    sections = {
        section: cls(
            **{k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(section + ".")}
        )
        for section, cls in SECTIONS.items()
    }
    top = {k: v for k, v in values.items() if "." not in k}
    config = _validated(Config(**top, **sections))
    config = dataclasses.replace(config, profiles=profiles)
    for profile in profiles:
        _check_profile(config, profile.name)
    return config


def _profiles_from_toml(raw: Any, path: Path, specs: Mapping[str, KeySpec]) -> tuple[Profile, ...]:
    """[profiles.NAME] tables: each a safe folder name, holding only PROFILE_KEYS, with values
    checked as the main keys are. An empty value ("" or []) unsets an optional key for the
    profile (a glossary or keywords the main configuration has, say)."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"profiles in {path} must be tables: [profiles.NAME]",
            hint="see the Profiles section of the README",
        )
    allowed = ", ".join(PROFILE_KEYS)
    profiles = []
    for name, table in raw.items():
        if not is_profile_name(name):
            raise ConfigError(
                f"[profiles.{shown(name)}] in {path}: a profile is named after its subfolder of "
                "the inbox, and this is not a plain folder name",
                hint="use letters, digits, - and _ (at most 64, starting with a letter or digit)",
            )
        if not isinstance(table, Mapping):
            raise ConfigError(f"profiles.{name} in {path} must be a table: [profiles.{name}]")
        flat: dict[str, Any] = {}
        for key, value in table.items():
            if key in SECTIONS and isinstance(value, Mapping):
                flat.update({f"{key}.{sub_key}": v for sub_key, v in value.items()})
            else:
                flat[key] = value
        overrides = []
        for dotted, value in flat.items():
            if dotted not in PROFILE_KEYS:
                what = "cannot be set in a profile" if dotted in specs else "is not a key"
                raise ConfigError(
                    f"profiles.{name}.{dotted} in {path} {what}",
                    hint=f"a profile may set {allowed}",
                )
            spec = specs[dotted]
            spec = dataclasses.replace(
                spec,
                section=f"profiles.{name}" + (f".{spec.section}" if spec.section else ""),
            )
            if spec.optional and value in ("", []):
                overrides.append((dotted, None))
            else:
                overrides.append((dotted, _convert(spec, value, f"config file {path}")))
        profiles.append(Profile(name=name, overrides=tuple(overrides)))
    return tuple(profiles)


def _check_profile(config: Config, name: str) -> None:
    """A profile's configuration must be as valid as the main one, and its subfolder of the
    inbox none of the daemon's other folders."""
    try:
        effective = _validated(config.for_profile(name))
        if effective.engine == "openai" and effective.openai != config.openai:
            # the model table's checks (issue 9), which the main keys meet when the engine is
            # built: a profile's model, language, prompt and keywords meet them here, at load
            from transcribed.engines.models import check_options, model_spec

            openai = effective.openai
            check_options(model_spec(openai.model, openai.base_url), openai)
    except ConfigError as exc:
        raise ConfigError(f"[profiles.{name}]: {exc.reason}", hint=exc.hint) from None
    inbox = effective.folder("inbox")
    if inbox in config.folders.values():
        raise ConfigError(
            f"[profiles.{name}]: its inbox subfolder {inbox} is also one of the daemon's folders",
            hint="rename the profile, or move that folder out of the inbox",
        )


def _validated(config: Config) -> Config:
    embedded = config.embedded
    if embedded.piece_target_seconds > embedded.piece_max_seconds:
        raise ConfigError(
            "embedded.piece_target_seconds is longer than embedded.piece_max_seconds",
            hint="make the target at most the maximum",
        )
    openai = config.openai
    if (
        openai.piece_target_seconds is not None
        and openai.piece_max_seconds is not None
        and openai.piece_target_seconds > openai.piece_max_seconds
    ):
        raise ConfigError(
            "openai.piece_target_seconds is longer than openai.piece_max_seconds",
            hint="make the target at most the maximum",
        )
    if config.min_audio_seconds >= config.max_audio_seconds:
        raise ConfigError("min_audio_seconds must be below max_audio_seconds")
    folders = config.folders
    if len(set(folders.values())) != len(folders):
        raise ConfigError("inbox, outbox, work, done and failed must be five different folders")
    return dataclasses.replace(config, root=config.root.absolute())
