"""Per-folder profiles: [profiles.NAME] gives inbox/NAME/ its own settings and outbox/NAME/ its
transcripts; configuration errors stop start-up like any other key's."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import structlog.testing
import trio
import trio.testing
from conftest import (
    TWO_CITIES,
    FakeEngine,
    SyntheticDecoder,
    jobs_in,
    no_events,
    synthetic_recording,
    wait_for,
    wait_until,
)
from openai_server import FakeOpenAI, ServerSettings
from transcribed import metrics, status
from transcribed.app import run_daemon
from transcribed.cli import _config_from, build_parser, main
from transcribed.config import Config, WebConfig, load_config
from transcribed.engines import gate_for
from transcribed.engines.openai import open_openai_engine
from transcribed.errors import ConfigError
from transcribed.jobs import Services
from transcribed.progress import ProgressBoard
from transcribed.web import serve_web

KEY = "sk-proj-CANARYkey0123456789abcdefWXYZ"

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


# ---------------------------------------------------------------- the daemon's folders

BASE_FLAGS = {
    "settle_interval": "0.1", "rescan_interval": "0.5", "log_level": "warning",
    "min_free_space_mb": "0", "web.listen": "",
}  # fmt: skip


def daemon_config(root: Path, toml: str, **flags: object) -> Config:
    """A test daemon's configuration from a TOML text (profiles come from a file only)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root.parent / f"{root.name}.toml"
    path.write_text(toml, "utf-8")
    values: dict[str, object] = {**BASE_FLAGS, "root": str(root)}
    values.update({key: str(value) for key, value in flags.items()})
    return load_config(path=path, environ={}, flags=values)


class EnginesByConfig:
    """An engine factory opening one FakeEngine per configuration it is asked for, and
    remembering which configuration each was opened for (so a test can tell whose settings
    reached the engine that transcribed a file)."""

    def __init__(self, prepare: Callable[[Config, FakeEngine], None] = lambda config, engine: None) -> None:
        self.prepare = prepare
        self.opened: list[tuple[Config, FakeEngine]] = []

    def __call__(self, config: Config) -> AbstractAsyncContextManager[FakeEngine]:
        @asynccontextmanager
        async def open_fake() -> AsyncIterator[FakeEngine]:
            engine = FakeEngine()
            self.prepare(config, engine)
            self.opened.append((config, engine))
            yield engine

        return open_fake()

    def calls_by_language(self) -> dict[str | None, int]:
        return {config.openai.language: engine.calls for config, engine in self.opened}


@asynccontextmanager
async def daemon_with(config: Config, factory: Callable[[Config], object], **options: object) -> AsyncIterator[None]:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(run_daemon, config, engine_factory=factory, install_signal_handlers=False, shutdown=shutdown, **options)  # type: ignore[arg-type]
        )
        try:
            yield
        finally:
            shutdown.set()


def drop(folder: Path, source: Path, name: str) -> None:
    """Copy a recording in as producers should: under a dot-name, then renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{name}.part"
    shutil.copy(source, staging)
    os.rename(staging, folder / name)


async def finished_in(outbox: Path, stem: str) -> dict:
    path = outbox / f"{stem}.progress.json"
    await wait_until(lambda: path.exists() and json.loads(path.read_text())["state"] in ("done", "failed"))
    return json.loads(path.read_text())


def files_in(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.is_file())


TWO_PROFILES = """
outputs = ["txt", "srt", "vtt", "json"]

[openai]
model = "whisper-1"
prompt = "Kingsbridge Town Council"
max_cost_per_file = 1.0

[profiles.spanish]
outputs = ["txt", "json"]
openai.language = "es"
openai.prompt = "Ayuntamiento de Kingsbridge, Pleno municipal"

[profiles.planning-board]
outputs = ["srt"]

[profiles.planning-board.openai]
model = "gpt-transcribe"
prompt = ""
keywords = ["Okonkwo", "Ní Bhriain"]
"""


async def test_each_folder_is_transcribed_with_its_own_settings_into_its_own_subfolders(tmp_path: Path, media: Callable[..., Path]) -> None:
    """Two profiles with different models, languages, glossaries and outputs, against a real
    OpenAI-like server: every request of a file carries its own folder's settings (and no other
    folder's), its transcripts are its folder's outputs in outbox/NAME/ beside its progress
    file, its source goes to done/NAME/, and the inbox's own file keeps the main settings."""
    root = tmp_path / "root"
    server = FakeOpenAI(ServerSettings(api_key=KEY))

    @asynccontextmanager
    async def real_engine(config: Config) -> AsyncIterator[object]:
        async with open_openai_engine(config.openai, api_key=KEY) as engine:
            yield engine

    recording = media("hearing.mp3")
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            config = daemon_config(
                root, TWO_PROFILES, engine="openai", **{"openai.base_url": url, "openai.piece_target_seconds": 5, "openai.piece_max_seconds": 10, "openai.retry_delay": 0.05},
            )
            async with daemon_with(config, real_engine):
                drop(root / "inbox" / "spanish", media("sesion.mp3", TWO_CITIES), "sesion.mp3")
                drop(root / "inbox" / "planning-board", recording, "hearing.mp3")
                drop(root / "inbox", recording, "hearing.mp3")
                spanish = await finished_in(root / "outbox" / "spanish", "sesion")
                board = await finished_in(root / "outbox" / "planning-board", "hearing")
                main_job = await finished_in(root / "outbox", "hearing")
            nursery.cancel_scope.cancel()

    # what the engine was sent, request by request: each folder's own settings, never another's
    sent = [
        (form["model"][0], form.get("language", [None])[0], form.get("prompt", [None])[0], tuple(form.get("keywords[]", [])))
        for form in server.stats.forms
    ]
    assert Counter(sent) == {
        ("whisper-1", "es", "Ayuntamiento de Kingsbridge, Pleno municipal", ()): spanish["pieces"]["total"],
        ("gpt-transcribe", None, None, ("Okonkwo", "Ní Bhriain")): board["pieces"]["total"],
        ("whisper-1", None, "Kingsbridge Town Council", ()): main_job["pieces"]["total"],
    }
    assert spanish["pieces"]["total"] >= 2
    # outputs: each folder's own, in its own subfolder, beside its progress file
    assert files_in(root / "outbox" / "spanish") == ["sesion.json", "sesion.progress.json", "sesion.txt"]
    assert files_in(root / "outbox" / "planning-board") == ["hearing.progress.json", "hearing.srt"]
    assert files_in(root / "outbox") == ["hearing.json", "hearing.progress.json", "hearing.srt", "hearing.txt", "hearing.vtt"]
    assert (spanish["source"], spanish["profile"], spanish["model"]) == ("spanish/sesion.mp3", "spanish", "whisper-1")
    assert (board["source"], board["profile"], board["model"]) == ("planning-board/hearing.mp3", "planning-board", "gpt-transcribe")
    assert (main_job["source"], main_job["profile"]) == ("hearing.mp3", None)
    assert spanish["outputs"] == ["sesion.txt", "sesion.json"] and board["outputs"] == ["hearing.srt"]
    assert json.loads((root / "outbox" / "spanish" / "sesion.json").read_text())["source"] == "spanish/sesion.mp3"
    # sources: each in its own subfolder of done/; the same name in two folders never collides
    assert files_in(root / "done" / "spanish") == ["sesion.mp3"]
    assert files_in(root / "done" / "planning-board") == ["hearing.mp3"]
    assert files_in(root / "done") == ["hearing.mp3"]
    assert jobs_in(root / "work") == []


async def test_the_same_name_twice_in_one_profile_never_overwrites(tmp_path: Path, media: Callable[..., Path]) -> None:
    """Stems are reserved per output folder: a second spanish/talk.mp3 becomes talk-2 in
    outbox/spanish/, and the inbox's own talk.mp3 is talk in outbox/; the hooks are told where
    each job's transcripts are, and its profile."""
    root = tmp_path / "root"
    summaries = tmp_path / "summaries"
    summaries.mkdir()
    # each announcement in a file of its own: two hooks may run at once
    hook = f'[notify]\ncommand = ["sh", "-c", "cat > $(mktemp -p {summaries})"]\n'
    config = daemon_config(root, hook + '[profiles.spanish]\noutputs = ["txt"]\n', outputs="txt")
    with trio.fail_after(60):
        async with daemon_with(config, EnginesByConfig()):
            drop(root / "inbox" / "spanish", media("a.mp3"), "talk.mp3")
            await finished_in(root / "outbox" / "spanish", "talk")
            drop(root / "inbox" / "spanish", media("b.wav"), "talk.mp3")
            drop(root / "inbox", media("c.mp3"), "talk.mp3")
            await finished_in(root / "outbox" / "spanish", "talk-2")
            await finished_in(root / "outbox", "talk")
    assert files_in(root / "outbox" / "spanish") == ["talk-2.progress.json", "talk-2.txt", "talk.progress.json", "talk.txt"]
    assert files_in(root / "done" / "spanish") == ["talk-2.mp3", "talk.mp3"]
    assert files_in(root / "outbox") == ["talk.progress.json", "talk.txt"]
    told = sorted((summary["source"], summary["profile"], summary["outputs"]) for summary in (json.loads(path.read_text()) for path in summaries.iterdir()))
    assert told == [
        ("spanish/talk.mp3", "spanish", [str(root / "outbox" / "spanish" / "talk-2.txt")]),
        ("spanish/talk.mp3", "spanish", [str(root / "outbox" / "spanish" / "talk.txt")]),
        ("talk.mp3", None, [str(root / "outbox" / "talk.txt")]),
    ]


async def test_folders_no_profile_names_and_folders_inside_a_profile_are_rejected(tmp_path: Path, media: Callable[..., Path]) -> None:
    """A subfolder no profile names is rejected as before (failed/, with a hint naming
    [profiles.NAME] and the profiles there are); profiles are one level deep, so a folder inside
    one goes to failed/NAME/; a link named like a profile is never followed."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(media("secret.mp3"), outside / "secret.mp3")
    config = daemon_config(root, "[profiles.spanish]\n[profiles.german]\n")
    factory = EnginesByConfig()
    with trio.fail_after(60):
        async with daemon_with(config, factory):
            (root / "inbox" / "french").mkdir()
            shutil.copy(media("inside.mp3"), root / "inbox" / "french" / "inside.mp3")
            (root / "inbox" / "spanish" / "nested").mkdir()
            shutil.copy(media("deep.mp3"), root / "inbox" / "spanish" / "nested" / "deep.mp3")
            shutil.rmtree(root / "inbox" / "german")
            (root / "inbox" / "german").symlink_to(outside)
            await wait_for(root / "failed" / "french.error.json")
            await wait_for(root / "failed" / "spanish" / "nested.error.json")
            # (named german-2: failed/german/ is the profile's own folder)
            await wait_for(root / "failed" / "german-2.error.json")
            # the daemon makes the profile's folder again, and it works
            await wait_until(lambda: (root / "inbox" / "german").is_dir() and not (root / "inbox" / "german").is_symlink())
            drop(root / "inbox" / "german", media("good.mp3"), "good.mp3")
            await finished_in(root / "outbox" / "german", "good")
    french = json.loads((root / "failed" / "french.error.json").read_text())
    assert french["error"] == "directory" and french["source"] == "french"
    assert "[profiles.NAME]" in french["what_to_do"] and "spanish, german" in french["reason"]
    nested = json.loads((root / "failed" / "spanish" / "nested.error.json").read_text())
    assert nested["error"] == "directory" and nested["source"] == "spanish/nested"
    assert (root / "failed" / "spanish" / "nested" / "deep.mp3").is_file()
    assert json.loads((root / "failed" / "german-2.error.json").read_text())["error"] == "symlink"
    assert (root / "failed" / "german-2").is_symlink()
    assert files_in(outside) == ["secret.mp3"]  # never read through the link
    assert sum(engine.calls for _, engine in factory.opened) == 1  # only the good file


async def test_a_profile_folder_is_watched_and_watched_again_once_it_is_made_anew(tmp_path: Path, media: Callable[..., Path]) -> None:
    """With the rescan an hour away, only inotify can notice a file in a profile's subfolder:
    it does, and after the subfolder is removed the daemon makes it again and watches the new
    one."""
    root = tmp_path / "root"
    config = daemon_config(root, "[profiles.spanish]\n", rescan_interval=3600)
    with trio.fail_after(60):
        async with daemon_with(config, EnginesByConfig()):
            drop(root / "inbox" / "spanish", media("first.mp3"), "first.mp3")
            await finished_in(root / "outbox" / "spanish", "first")
            shutil.rmtree(root / "inbox" / "spanish")
            await wait_until(lambda: (root / "inbox" / "spanish").is_dir())
            await trio.sleep(1.0)  # the watcher re-arms on the new folder
            drop(root / "inbox" / "spanish", media("second.mp3"), "second.mp3")
            await finished_in(root / "outbox" / "spanish", "second")
    assert files_in(root / "done" / "spanish") == ["first.mp3", "second.mp3"]


@pytest.mark.parametrize(
    ("engine", "opened_for", "unused"),
    [("openai", [None, "es", "de"], []), ("embedded", [None], ["spanish", "austrian", "german"])],
)
async def test_one_engine_is_opened_for_each_distinct_engine_setting(tmp_path: Path, engine: str, opened_for: list[str | None], unused: list[str]) -> None:
    """Profiles with equal engine settings share an engine, those that differ get their own;
    under the embedded engine (not built from [openai]) every folder shares the one engine and
    the profiles' openai keys are logged as reaching nothing."""
    toml = (
        '[profiles.spanish]\nopenai.language = "es"\n[profiles.austrian]\nopenai.language = "de"\n'
        '[profiles.german]\nopenai.language = "de"\n[profiles.plain]\noutputs = ["txt"]\n'
    )
    config = daemon_config(tmp_path / "root", toml, engine=engine)
    factory = EnginesByConfig()
    with structlog.testing.capture_logs() as logs, trio.fail_after(30):
        async with daemon_with(config, factory):
            pass
    assert [config.openai.language for config, _ in factory.opened] == opened_for
    assert [line["profile"] for line in logs if line["event"] == "daemon.profile_keys_unused"] == unused


async def interrupted_in_profile(root: Path, media: Callable[..., Path], toml: str) -> int:
    """Start a spanish/ job whose engine answers two pieces and then hangs, and stop the daemon
    with no drain time: the job stays in work/ with what was journaled. Returns its pieces."""
    def hang_spanish(config: Config, engine: FakeEngine) -> None:
        if config.openai.language == "es":
            engine.hang_after = 2

    config = daemon_config(root, toml, engine="openai", drain_timeout=0)
    with trio.fail_after(60):
        async with daemon_with(config, EnginesByConfig(hang_spanish)):
            drop(root / "inbox" / "spanish", media("long.mp3", TWO_CITIES), "long.mp3")
            await wait_until(lambda: len(list((root / "work").glob("*/pieces/*.json"))) >= 2)
    [job] = [json.loads(path.read_text()) for path in (root / "work").glob("*/job.json")]
    assert job["profile"] == "spanish" and job["display_name"] == "spanish/long.mp3"
    return len(list((root / "work").glob("*/pieces/*.json")))


SPANISH = '[openai]\nmax_cost_per_file = 0\n[profiles.spanish]\noutputs = ["txt", "json"]\nopenai.language = "es"\n'


async def test_a_job_interrupted_by_a_restart_resumes_in_its_profile(tmp_path: Path, media: Callable[..., Path]) -> None:
    """A spanish/ job stopped mid-way resumes after the restart with the spanish settings
    (its engine sends only the pieces not journaled) and publishes in outbox/spanish/."""
    root = tmp_path / "root"
    journaled = await interrupted_in_profile(root, media, SPANISH)

    factory = EnginesByConfig()
    with trio.fail_after(60):
        async with daemon_with(daemon_config(root, SPANISH, engine="openai"), factory):
            done = await finished_in(root / "outbox" / "spanish", "long")
    assert done["state"] == "done" and done["profile"] == "spanish"
    calls = factory.calls_by_language()
    assert calls[None] == 0 and calls["es"] == done["pieces"]["total"] - journaled > 0
    assert files_in(root / "outbox" / "spanish") == ["long.json", "long.progress.json", "long.txt"]
    assert files_in(root / "done" / "spanish") == ["long.mp3"]
    assert json.loads((root / "outbox" / "spanish" / "long.json").read_text())["warnings"] == []
    assert jobs_in(root / "work") == []


async def test_a_job_whose_profile_was_removed_finishes_with_the_main_settings_and_says_so(tmp_path: Path, media: Callable[..., Path]) -> None:
    """When a job's profile leaves the configuration between two runs, nothing is lost: the job
    resumes (journaled pieces kept) with the main settings, in its folder's subfolders, and its
    transcript's warnings say so."""
    root = tmp_path / "root"
    journaled = await interrupted_in_profile(root, media, SPANISH)

    factory = EnginesByConfig()
    with trio.fail_after(60):
        async with daemon_with(daemon_config(root, "[openai]\nmax_cost_per_file = 0\n", engine="openai"), factory):
            done = await finished_in(root / "outbox" / "spanish", "long")
    assert done["state"] == "done"
    assert factory.calls_by_language() == {None: done["pieces"]["total"] - journaled}
    warnings = json.loads((root / "outbox" / "spanish" / "long.json").read_text())["warnings"]
    assert any("[profiles.spanish] is no longer in the configuration" in w for w in warnings)
    assert files_in(root / "done" / "spanish") == ["long.mp3"]


async def test_status_and_the_page_show_a_profile_job_as_folder_slash_name(tmp_path: Path, media: Callable[..., Path]) -> None:
    """`status` and /api/status show a profile's files as spanish/NAME (waiting in the inbox,
    done with outputs named as the page serves them), and /outbox/ serves them from the
    subfolder; a subfolder that is not a profile's serves nothing."""
    root = tmp_path / "root"
    config = daemon_config(root, '[profiles.spanish]\noutputs = ["txt"]\n', outputs="txt")
    with trio.fail_after(60):
        async with daemon_with(config, EnginesByConfig()):
            drop(root / "inbox" / "spanish", media("hearing.mp3"), "hearing.mp3")
            await finished_in(root / "outbox" / "spanish", "hearing")
    (root / "inbox" / "spanish" / "waiting.mp3").write_bytes(b"still arriving")
    (root / "outbox" / "other").mkdir()
    (root / "outbox" / "other" / "hearing.txt").write_text("not published\n")

    data = status.collect(config)
    assert [entry["name"] for entry in data["inbox"]["files"]] == ["spanish/waiting.mp3"]
    [done] = data["done"]
    assert done["source"] == "spanish/hearing.mp3" and done["outputs"] == ["spanish/hearing.txt"]
    assert any("spanish/hearing.mp3 -> spanish/hearing.txt" in line for line in status.render_table(data))

    web_config = dataclasses.replace(config, web=WebConfig(listen="127.0.0.1:0"))
    engine = FakeEngine()
    services = Services(config=web_config, engine=engine, gate=gate_for(web_config, engine.traits), board=ProgressBoard(root / "outbox"), decoder=SyntheticDecoder())  # type: ignore[arg-type]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_web, web_config, services, metrics.Metrics())
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{address.port}", timeout=10) as client:
                api = (await client.get("/api/status")).json()
                served = await client.get("/outbox/" + quote("spanish/hearing.txt", safe=""))
                other = await client.get("/outbox/" + quote("other/hearing.txt", safe=""))
                flat = await client.get("/outbox/hearing.txt")
            nursery.cancel_scope.cancel()
    assert api["done"][0]["outputs"] == ["spanish/hearing.txt"]
    assert served.status_code == 200 and served.content == (root / "outbox" / "spanish" / "hearing.txt").read_bytes()
    assert other.status_code == 404 and flat.status_code == 404


async def test_transcribe_takes_a_profile(tmp_path: Path, media: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    """`transcribe --profile NAME` runs with the profile's configuration; an unknown one is a
    configuration error (78)."""
    path = write(tmp_path, '[profiles.spanish]\noutputs = ["txt"]\nspeakers = "off"\n')
    args = build_parser().parse_args(["transcribe", "x.mp3", "--config", str(path), "--profile", "spanish"])
    assert _config_from(args).outputs == ("txt",) and _config_from(args).speakers == "off"
    assert main(["transcribe", str(media("x.mp3")), "--config", str(path), "--profile", "german"]) == 78
    assert "no [profiles.german]" in capsys.readouterr().err


async def test_a_record_naming_an_impossible_profile_is_quarantined_never_a_path(tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    """A damaged job.json whose profile could not be a folder name (`../..`) is a corrupt job:
    its source goes to failed/ with the explanation, and nothing is written outside the folders."""
    job = tmp_path / "root" / "work" / "20260101T000000-abcdef"
    synthetic_recording(job / "source.mp3", 10)
    record = {"job_id": job.name, "display_name": "x.mp3", "name_b64": "eC5tcDM=", "stem": "x", "source_file": "source.mp3", "claimed_at": "2026-01-01T00:00:00Z", "state": "claimed", "profile": "../.."}
    (job / "job.json").write_text(json.dumps(record))
    config = daemon_config(tmp_path / "root", "[profiles.spanish]\n")
    async with daemon_with(config, EnginesByConfig(), decoder=SyntheticDecoder(), watcher=no_events):
        await wait_until(lambda: any((tmp_path / "root" / "failed").glob("*.error.json")))
    (explanation,) = (tmp_path / "root" / "failed").glob("*.error.json")
    assert json.loads(explanation.read_text())["error"] == "corrupt_job"
    assert sorted(os.listdir(tmp_path)) == ["root", "root.toml"]
    assert jobs_in(tmp_path / "root" / "work") == []
