"""Per-folder profiles: [profiles.NAME] gives inbox/NAME/ its own settings and outbox/NAME/ its
transcripts; configuration errors stop start-up like any other key's."""

from __future__ import annotations

from pathlib import Path

import pytest
from transcribed.cli import main
from transcribed.config import load_config
from transcribed.errors import ConfigError

PROFILES = """
root = "{root}"
outputs = ["txt", "srt", "vtt"]
engine = "openai"

[openai]
model = "gpt-transcribe"
prompt = "Kingsbridge Town Council"

[profiles.spanish]
outputs = ["txt", "json"]
openai.language = "es"
openai.prompt = ""

[profiles.planning-board]
speakers = "off"

[profiles.planning-board.openai]
keywords = ["Okonkwo", "Ní Bhriain"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "transcribed.toml"
    path.write_text(text, "utf-8")
    return path


# ---------------------------------------------------------------- configuration


def test_a_profile_is_the_main_configuration_with_its_own_keys_in_its_subfolders(tmp_path: Path) -> None:
    """A profile's configuration keeps every main key it does not set, takes those it does
    (an empty value unsets one), and lives in the NAME subfolders with the shared work/."""
    config = load_config(path=write(tmp_path, PROFILES.format(root=tmp_path)), environ={})

    assert config.profile_names == ("spanish", "planning-board")
    spanish = config.for_profile("spanish")
    assert spanish.outputs == ("txt", "json")
    assert spanish.openai.language == "es" and spanish.openai.prompt is None
    assert spanish.openai.model == "gpt-transcribe" and spanish.speakers == "auto"
    board = config.for_profile("planning-board")
    assert board.openai.keywords == ("Okonkwo", "Ní Bhriain") and board.speakers == "off"
    assert board.openai.prompt == "Kingsbridge Town Council" and board.outputs == ("txt", "srt", "vtt")
    for name in ("inbox", "outbox", "done", "failed"):
        assert spanish.folder(name) == tmp_path / name / "spanish"
    assert spanish.folder("work") == tmp_path / "work"
    assert spanish.profiles == ()
    # the main configuration is untouched
    assert config.outputs == ("txt", "srt", "vtt") and config.openai.language is None
    with pytest.raises(ConfigError, match=r"no \[profiles.german\].*spanish, planning-board"):
        config.for_profile("german")


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ('[profiles.x]\nroot = "/elsewhere"', "profiles.x.root in .* cannot be set in a profile"),
        ('[profiles.x.openai]\nbase_url = "http://other"', "profiles.x.openai.base_url in .* cannot be set"),
        ("[profiles.x]\nlanguage = \"es\"", "profiles.x.language in .* is not a key"),
        ('[profiles.x.embedded]\nworkers = 1', "profiles.x.embedded.workers in .* cannot be set"),
        ('[profiles.x]\nspeakers = "sometimes"', "profiles.x.speakers .*'sometimes' is not one of auto, on, off"),
        ('[profiles.x]\noutputs = ["txt", "pdf"]', "profiles.x.outputs .*'pdf' is not one of"),
        ("[profiles.x.openai]\nkeywords = 3", "profiles.x.openai.keywords .*not a list of text"),
        ("[profiles.x.openai]\nprice_per_minute = -1", "profiles.x.openai.price_per_minute .*below the minimum"),
        ('[profiles."../up"]\nspeakers = "on"', "not a plain folder name"),
        ('[profiles.".hidden"]\nspeakers = "on"', "not a plain folder name"),
        ('[profiles."two words"]\nspeakers = "on"', "not a plain folder name"),
        ("profiles = 3", "must be tables"),
        ('[profiles]\nx = "on"', "profiles.x .* must be a table"),
        # the model table's checks, for the profile's own model and options
        ('engine = "openai"\n[profiles.x.openai]\nmodel = "whisper-1"\nkeywords = ["Okonkwo"]', r"\[profiles.x\]: openai.keywords is set, but whisper-1 does not take keywords"),
        ('engine = "openai"\n[profiles.x.openai]\nmodel = "gpt-transcribe"\nresponse_format = "verbose_json"', r"\[profiles.x\]: .*not one gpt-transcribe answers"),
        ('engine = "openai"\n[profiles.x.openai]\nmodel = "gpt-5-transcribe"', r"\[profiles.x\]: the price of gpt-5-transcribe is not known"),
    ],
)
def test_bad_profiles_stop_start_up_naming_the_profile_and_key(tmp_path: Path, table: str, named: str) -> None:
    """Unknown keys, keys a profile may not set, bad values, unsafe names and options the
    profile's model would refuse are configuration errors naming the profile."""
    path = write(tmp_path, table + "\n")
    with pytest.raises(ConfigError, match=named):
        load_config(path=path, environ={})


def test_a_profile_error_is_exit_78_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`transcribed run` with a bad profile exits 78 with the message, and creates no folder."""
    path = write(tmp_path, f'root = "{tmp_path / "root"}"\n[profiles.x]\noutputs = ["pdf"]\n')
    assert main(["run", "--config", str(path)]) == 78
    assert "profiles.x.outputs" in capsys.readouterr().err
    assert not (tmp_path / "root").exists()


def test_a_profile_model_error_is_not_raised_for_an_engine_not_in_use(tmp_path: Path) -> None:
    """Like the main [openai] keys, a profile's openai keys are checked against the model only
    when the openai engine runs."""
    path = write(tmp_path, '[profiles.x.openai]\nmodel = "whisper-1"\nkeywords = ["Okonkwo"]\n')
    assert load_config(path=path, environ={}).for_profile("x").openai.keywords == ("Okonkwo",)


def test_profiles_come_from_the_file_only(tmp_path: Path) -> None:
    """No environment variable or flag spells a profile's key: they are unknown keys."""
    with pytest.raises(ConfigError, match="unknown environment variable TRANSCRIBED_PROFILES_X_SPEAKERS"):
        load_config(environ={"TRANSCRIBED_PROFILES_X_SPEAKERS": "on"})
    with pytest.raises(ConfigError, match="unknown key 'profiles'"):
        load_config(environ={}, flags={"profiles": "x"})
