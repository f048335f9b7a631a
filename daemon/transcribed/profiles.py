"""Per-folder profiles at run time: what the jobs of each folder run with (a Lane).

    inbox/FILE         the main configuration, engine and known speakers; outputs in outbox/,
                       the source to done/ or failed/
    inbox/NAME/FILE    [profiles.NAME]: `config.for_profile(NAME)`, its own engine when its
                       engine settings differ from every engine opened so far (equal settings
                       share one), its own known speakers when its speaker settings differ;
                       outputs in outbox/NAME/, the source to done/NAME/ or failed/NAME/

Everything else is shared by every job of every folder: the gate (one concurrency cap and one
rate limit for the API, whichever profile sends), the board, the decoder, draining, health. A job
records its profile when it is claimed, so it resumes in it. A job whose profile has left the
configuration since runs with the main settings, in the same subfolders, and says so in its
transcript's warnings: nothing it was given or paid for is lost, and nothing is hidden.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import structlog

from transcribed.boundary import DaemonDestination
from transcribed.config import Config
from transcribed.diarize import KnownSpeakers, prepare_speakers, speakers_wanted
from transcribed.engines import Engine, EngineFactory, engine_settings
from transcribed.errors import ConfigError
from transcribed.jobs import Services
from transcribed.journal import JobRecord
from transcribed.naming import StemRegistries

logger = structlog.get_logger()


@dataclass(frozen=True, slots=True, kw_only=True)
class Lane:
    """What the jobs of one folder run with: their services (the shared ones with this folder's
    configuration, engine and known speakers), where their files go, and what their transcripts
    must say about it."""

    services: Services
    destination: DaemonDestination
    warnings: tuple[str, ...] = ()


def destination_for(
    config: Config, stems: StemRegistries, profile: str | None
) -> DaemonDestination:
    """The daemon's destination for the jobs of `config`'s folders (a profile's: its subfolders)."""
    return DaemonDestination(
        output_dir=config.folder("outbox"),
        done=config.folder("done"),
        failed=config.folder("failed"),
        after_success=config.after_success,
        stems=stems.of(profile),
        makes_folders=profile is not None,
    )


class Lanes:
    """The lane of every folder, chosen by the job's record."""

    def __init__(
        self, main: Services, stems: StemRegistries, profiles: dict[str, Services]
    ) -> None:
        self.stems = stems
        self.main = Lane(services=main, destination=destination_for(main.config, stems, None))
        self._lanes = {
            name: Lane(services=services, destination=destination_for(services.config, stems, name))
            for name, services in profiles.items()
        }

    def for_record(self, record: JobRecord) -> Lane:
        if record.profile is None:
            return self.main
        lane = self._lanes.get(record.profile)
        if lane is None:
            lane = self._lanes[record.profile] = self._without_profile(record.profile)
        if lane.warnings:
            logger.warning(
                "job.profile_missing", job_id=record.job_id, profile=record.profile,
                hint=f"add [profiles.{record.profile}] back to the configuration for its settings",
            )  # fmt: skip
        return lane

    def _without_profile(self, name: str) -> Lane:
        """A folder whose profile has left the configuration since its jobs were claimed: the
        main settings, in its subfolders."""
        config = self.main.services.config.subfolders(name)
        return Lane(
            services=dataclasses.replace(self.main.services, config=config),
            destination=destination_for(config, self.stems, name),
            warnings=(
                f"the folder's profile [profiles.{name}] is no longer in the configuration: "
                "transcribed with the main settings",
            ),
        )


@asynccontextmanager
async def open_lanes(
    main: Services, stems: StemRegistries, engine_factory: EngineFactory
) -> AsyncIterator[Lanes]:
    """Every profile's services, ready (engines opened, reference clips read) before the daemon
    serves; a profile whose engine or speakers cannot start stops start-up, named. The engines
    opened here close when the block ends."""
    config = main.config
    engines: dict[object, Engine] = {engine_settings(config): main.engine}
    profiles: dict[str, Services] = {}
    async with AsyncExitStack() as stack:
        for name in config.profile_names:
            profile = config.for_profile(name)
            settings = engine_settings(profile)
            if settings not in engines:
                try:
                    engines[settings] = await stack.enter_async_context(engine_factory(profile))
                except ConfigError as exc:
                    raise ConfigError(f"[profiles.{name}]: {exc.reason}", hint=exc.hint) from None
            if settings == engine_settings(config) and profile.openai != config.openai:
                # the engine in use is not built from [openai]: these keys reach nothing
                logger.warning(
                    "daemon.profile_keys_unused", profile=name, engine=config.engine,
                    hint="a profile's openai keys apply with engine = \"openai\"",
                )  # fmt: skip
            engine = engines[settings]
            profiles[name] = dataclasses.replace(
                main,
                config=profile,
                engine=engine,
                known_speakers=await _known_speakers(main, profile, engine, name),
            )
        yield Lanes(main, stems, profiles)


async def _known_speakers(
    main: Services, profile: Config, engine: Engine, name: str
) -> KnownSpeakers:
    """The main known speakers when the profile labels speakers as the main configuration does;
    else its own (reference clips from its speakers_dir), checked now."""
    config = main.config
    wanted = speakers_wanted(profile, engine.traits.name)
    if (wanted, profile.speakers_dir) == (
        speakers_wanted(config, main.engine.traits.name),
        config.speakers_dir,
    ):
        return main.known_speakers
    try:
        return await prepare_speakers(profile, engine.traits.name)
    except ConfigError as exc:
        raise ConfigError(f"[profiles.{name}]: {exc.reason}", hint=exc.hint) from None
