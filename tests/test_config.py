"""Configuration: defaults, file < environment < flag precedence, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from transcribed.cli import build_parser, main
from transcribed.config import load_config
from transcribed.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "transcribed.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file_and_no_key(tmp_path: Path) -> None:
    """With nothing configured the daemon runs the embedded engine on folders under the root."""
    config = load_config(environ={}, flags={"root": str(tmp_path)})
    assert config.engine == "embedded"
    assert config.folder("inbox") == tmp_path / "inbox"
    assert config.folder("failed") == tmp_path / "failed"


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    """The same key from three sources: the flag wins, then the environment, then the file."""
    path = write(tmp_path, "settle_interval = 1.5\njob_workers = 3\n[embedded]\nworkers = 1\n")
    config = load_config(path=path, environ={"TRANSCRIBED_SETTLE_INTERVAL": "2.5", "TRANSCRIBED_JOB_WORKERS": "4"}, flags={"settle_interval": "3.5"})
    assert config.settle_interval == 3.5
    assert config.job_workers == 4
    assert config.embedded.workers == 1
    config = load_config(path=path, environ={"TRANSCRIBED_EMBEDDED_WORKERS": "2"})
    assert config.embedded.workers == 2 and config.settle_interval == 1.5


@pytest.mark.parametrize(
    ("text", "environ", "flags", "named"),
    [
        ("settel_interval = 1\n", {}, {}, "settel_interval"),
        ("[embedded]\nwokers = 1\n", {}, {}, "embedded.wokers"),
        ("", {"TRANSCRIBED_SETLE": "1"}, {}, "TRANSCRIBED_SETLE"),
        ("job_workers = 'many'\n", {}, {}, "job_workers"),
        ("", {"TRANSCRIBED_JOB_WORKERS": "2.5"}, {}, "TRANSCRIBED_JOB_WORKERS"),
        ("", {}, {"engine": "whisper"}, "--engine"),
        ("", {}, {"settle_interval": "-1"}, "settle_interval"),
        ("[embedded]\npiece_target_seconds = 60\npiece_max_seconds = 30\n", {}, {}, "piece_target_seconds"),
        ("root = \n", {}, {}, "not valid TOML"),
    ],
)
def test_bad_configuration_stops_with_a_message_naming_the_key(
    tmp_path: Path, text: str, environ: dict[str, str], flags: dict[str, str], named: str
) -> None:
    """Unknown keys and bad values raise ConfigError naming the key (or the file's problem)."""
    with pytest.raises(ConfigError) as caught:
        load_config(path=write(tmp_path, text), environ=environ, flags=flags)
    assert named in str(caught.value)


def test_every_key_has_a_flag_and_the_cli_exits_78_on_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Flags come from the key list, and a bad value ends the command with EX_CONFIG (78)."""
    args = build_parser().parse_args(["run", "--embedded-piece-max-seconds", "50", "--root", str(tmp_path)])
    assert getattr(args, "key:embedded.piece_max_seconds") == "50"
    assert main(["run", "--root", str(tmp_path), "--job-workers", "zero"]) == 78
    assert "job_workers" in capsys.readouterr().err


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    """A config path that does not exist is reported as such."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(path=tmp_path / "nope.toml", environ={})


def test_folders_must_differ(tmp_path: Path) -> None:
    """Pointing two folders at the same place is refused."""
    with pytest.raises(ConfigError, match="five different folders"):
        load_config(environ={}, flags={"root": str(tmp_path), "outbox": str(tmp_path / "inbox")})
