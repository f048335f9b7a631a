"""config/transcribed.example.toml stays a true, complete description of the configuration."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from transcribed.config import SECTIONS, Config, KeySpec, key_specs, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "transcribed.example.toml"

# `key = value` or, for a key shown but left at its default, `#key = value`.
_ASSIGNMENT = re.compile(r"^(?P<commented>#?)(?P<key>[a-z_]+) = ")
_SECTION = re.compile(r"^\[(?P<name>[a-z_]+)\]$")
# Keys whose example value deliberately differs from the built-in default.
_DEPLOYMENT_VALUES = {"root": Path("/var/lib/transcribed")}


def _documented_keys() -> dict[str, tuple[bool, list[str]]]:
    """Each key the example shows: dotted name → (active, the comment block above it)."""
    found: dict[str, tuple[bool, list[str]]] = {}
    section: str | None = None
    comments: list[str] = []
    for line in EXAMPLE.read_text("utf-8").splitlines():
        if header := _SECTION.match(line):
            section, comments = header["name"], []
        elif assignment := _ASSIGNMENT.match(line):
            dotted = f"{section}.{assignment['key']}" if section else assignment["key"]
            assert dotted not in found, f"{dotted} is shown twice"
            found[dotted] = (not assignment["commented"], comments)
            comments = []
        elif line.startswith("#"):
            comments.append(line)
        else:
            comments = []
    return found


def _specs() -> dict[str, KeySpec]:
    return {spec.dotted: spec for spec in key_specs()}


def _value(config: Config, dotted: str) -> Any:
    target: Any = config
    for part in dotted.split("."):
        target = getattr(target, part)
    return target


def test_example_loads_as_it_is() -> None:
    """The example, copied unchanged, is valid and keeps every default but root."""
    config = load_config(path=EXAMPLE, environ={})

    for dotted, spec in _specs().items():
        expected = _DEPLOYMENT_VALUES.get(dotted, spec.default)
        assert _value(config, dotted) == expected, dotted


def test_example_shows_every_key_once_and_no_other() -> None:
    """Every key of key_specs() appears, in its own section, and nothing else does."""
    assert set(_documented_keys()) == set(_specs())


def test_example_leaves_only_unset_defaults_commented_out() -> None:
    """Exactly the keys whose default is "unset" are commented out, since TOML cannot spell None."""
    for dotted, (active, _) in _documented_keys().items():
        assert active == (_specs()[dotted].default is not None), dotted


def test_example_values_shown_in_comments_are_valid(tmp_path: Path) -> None:
    """With every commented-out key switched on the example still loads: samples are valid."""
    text = EXAMPLE.read_text("utf-8")
    switched_on = re.sub(r"^#([a-z_]+ = )", r"\1", text, flags=re.MULTILINE)
    path = tmp_path / "all-keys.toml"
    path.write_text(switched_on, "utf-8")
    data = tomllib.loads(switched_on)
    shown = {key for key in data if key not in SECTIONS}
    shown |= {f"{name}.{key}" for name in SECTIONS for key in data.get(name, {})}

    config = load_config(path=path, environ={})

    assert shown == set(_specs())
    assert config.folder("inbox") == Path("/var/lib/transcribed/inbox")


@pytest.mark.parametrize("dotted", sorted(_specs()))
def test_example_names_the_environment_variable_and_flag(dotted: str) -> None:
    """Each key's comment names its environment variable and flag, as config.py spells them."""
    spec = _specs()[dotted]
    _, comments = _documented_keys()[dotted]
    block = " ".join(comments)

    assert f"Environment: {spec.env} " in block + " "
    assert f"Flag: {spec.flag}" in block
    assert "Default:" in block


def test_the_example_profiles_load_when_switched_on(tmp_path: Path) -> None:
    """The commented-out [profiles.*] example, switched on (with a model that takes keywords),
    is a valid configuration whose profiles differ from the main one as it says."""
    text = EXAMPLE.read_text("utf-8")
    block = text[text.index("# [profiles.spanish]") :]
    path = tmp_path / "profiles.toml"
    path.write_text('engine = "openai"\n[openai]\nmodel = "gpt-transcribe"\n' + re.sub(r"^# ?", "", block, flags=re.MULTILINE), "utf-8")

    config = load_config(path=path, environ={})

    assert config.profile_names == ("spanish", "planning-board")
    assert config.for_profile("spanish").openai.language == "es"
    assert config.for_profile("planning-board").openai.keywords == ("Okonkwo", "Ní Bhriain", "Section 106")
