"""The daemon: builds the shared services and owns the root nursery.

root nursery
  ├─ progress writer        the single writer of progress files
  ├─ systemd notifier       READY=1 once serving, WATCHDOG=1 while the loop is healthy
  ├─ signal watcher         first SIGTERM/SIGINT/SIGHUP drains, a second one stops at once
  └─ workers nursery
       ├─ job workers × N   one job each at a time, through the job boundary (boundary.py),
       │                    in its folder's lane (profiles.py)
       └─ intake nursery    resumed jobs first, then scan + watch + rescan → claimed jobs

Before any of it: the tools it runs are there (ffmpeg, ffprobe, prlimit), the folders exist,
and this daemon alone owns work/ (lock.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import structlog
import trio

from transcribed import metrics
from transcribed.atomic import remove_stale_temps
from transcribed.boundary import quarantine, run_at_boundary
from transcribed.config import Config
from transcribed.diarize import prepare_speakers
from transcribed.engines import EngineFactory, gate_for, open_engine
from transcribed.errors import ConfigError
from transcribed.intake import Claimer, Watcher, serve_intake, watch_with_watchfiles
from transcribed.jobs import Services
from transcribed.journal import Journal, recover_work
from transcribed.lock import hold_work_lock
from transcribed.media import Decoder, FfmpegDecoder, check_tools
from transcribed.naming import StemRegistries
from transcribed.profiles import Lanes, open_lanes
from transcribed.progress import ProgressBoard, isoformat, utc_now
from transcribed.systemd import Notifier
from transcribed.web import serve_web

logger = structlog.get_logger()

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def prepare_folders(config: Config) -> None:
    """Create the folders (and each profile's subfolders of inbox/, outbox/, done/ and failed/)
    and check claims can be atomic. Only work/ and the inboxes must be usable to start; trouble
    with outbox/, done/ or failed/ is waited out where it bites (a fault of the service, never
    of a file), and logged now."""
    folders = config.folders
    _make_folders(folders)
    if folders["inbox"].stat().st_dev != folders["work"].stat().st_dev:
        raise ConfigError(
            f"inbox {folders['inbox']} and work {folders['work']} are on different filesystems",
            hint="claims are atomic renames; put both folders on the same filesystem",
        )
    for name in config.profile_names:
        profile = config.for_profile(name).folders
        del profile["work"]
        _make_folders(profile, label=f"[profiles.{name}]: ")
        if profile["inbox"].stat().st_dev != folders["work"].stat().st_dev:
            raise ConfigError(
                f"inbox {profile['inbox']} and work {folders['work']} are on different filesystems",
                hint="claims are atomic renames; keep the profile's subfolder on the inbox's filesystem",
            )


def _make_folders(folders: dict[str, Path], *, label: str = "") -> None:
    for name, path in folders.items():
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if name in ("inbox", "work"):
                raise ConfigError(
                    f"{label}cannot create the {name} folder {path}: {exc.strerror}"
                ) from None
            logger.error("daemon.folder_unusable", folder=name, path=str(path), error=exc.strerror)
            continue
        if not os.access(path, os.W_OK | os.X_OK):
            if name in ("inbox", "work"):
                raise ConfigError(f"{label}the {name} folder {path} is not writable by this user")
            logger.error(
                "daemon.folder_unusable", folder=name, path=str(path), error="not writable"
            )


def sweep_temps(config: Config) -> None:
    """Temp files a crash left behind (never seen by readers: dot-names)."""
    every = [config, *(config.for_profile(name) for name in config.profile_names)]
    for name in ("outbox", "done", "failed"):
        for folders in every:
            try:
                remove_stale_temps(folders.folder(name))
            except FileNotFoundError:
                continue  # a profile's subfolder not made (yet): nothing to sweep
            except OSError as exc:
                logger.warning("daemon.sweep_failed", folder=name, error=exc.strerror)


class Daemon:
    """Everything one running daemon shares between its job workers."""

    def __init__(self, lanes: Lanes) -> None:
        self.lanes = lanes

    async def serve_job_worker(self, jobs: trio.MemoryReceiveChannel[Journal]) -> None:
        async with jobs:
            async for journal in jobs:
                record = await trio.to_thread.run_sync(journal.load)
                lane = self.lanes.for_record(record)  # its folder's settings, engine, folders
                await run_at_boundary(
                    lane.services, journal, lane.destination, warnings=lane.warnings
                )


async def run_daemon(
    config: Config,
    *,
    watcher: Watcher = watch_with_watchfiles,
    now: Callable[[], datetime] = utc_now,
    notifier: Notifier | None = None,
    install_signal_handlers: bool = True,
    shutdown: trio.Event | None = None,
    engine_factory: EngineFactory = open_engine,
    decoder: Decoder | None = None,
    free_space: Callable[[Path], int] = lambda path: shutil.disk_usage(path).free,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until SIGTERM/SIGINT/SIGHUP (or `shutdown` is set): drain, journal, return.

    Signals are taken from the very start: one during start-up (loading models, resuming) stops
    at once; once serving, the first drains and a second stops at once.
    """
    edges = Edges(
        watcher=watcher,
        now=now,
        notifier=notifier or Notifier(),
        engine_factory=engine_factory,
        decoder=decoder,
        free_space=free_space,
    )
    shutdown = trio.Event() if shutdown is None else shutdown
    ready = trio.Event()
    with trio.CancelScope() as everything:
        async with trio.open_nursery() as guard:
            if install_signal_handlers:
                await guard.start(_serve_signals, shutdown, ready, everything)
            await _serve(config, edges, shutdown, ready, task_status)
            guard.cancel_scope.cancel()
    logger.info("daemon.stopped")


@dataclass(frozen=True, slots=True, kw_only=True)
class Edges:
    """The daemon's injected I/O edges (the real things unless a test says otherwise)."""

    watcher: Watcher
    now: Callable[[], datetime]
    notifier: Notifier
    engine_factory: EngineFactory
    decoder: Decoder | None  # None: ffmpeg, once the tools are checked
    free_space: Callable[[Path], int]


async def _serve(
    config: Config,
    edges: Edges,
    shutdown: trio.Event,
    ready: trio.Event,
    task_status: trio.TaskStatus[None],
) -> None:
    decoder = edges.decoder
    if decoder is None:
        check_tools()
        decoder = FfmpegDecoder(
            probe_timeout=config.probe_timeout,
            max_seconds=config.max_audio_seconds,
            stall_timeout=config.decode_stall_timeout,
            limits=config.media_limits,
        )
    prepare_folders(config)
    folders = config.folders
    with hold_work_lock(folders["work"]):
        await _serve_owned(config, edges, decoder, shutdown, ready, task_status)


async def _serve_owned(
    config: Config,
    edges: Edges,
    decoder: Decoder,
    shutdown: trio.Event,
    ready: trio.Event,
    task_status: trio.TaskStatus[None],
) -> None:
    folders, now = config.folders, edges.now
    sweep_temps(config)
    stems = StemRegistries(folders["outbox"], owner=folders["work"], profiles=config.profile_names)
    resumable = await trio.to_thread.run_sync(
        partial(
            recover_work,
            folders["work"],
            stems,
            quarantine=lambda folder, reason: quarantine(
                folder, folders["failed"], reason, isoformat(now())
            ),
        )
    )
    board = ProgressBoard(folders["outbox"], now=now)

    async with edges.engine_factory(config) as engine:
        services = Services(
            config=config,
            engine=engine,
            gate=gate_for(config, engine.traits),
            board=board,
            decoder=decoder,
            free_space=edges.free_space,
            watched_folders=(folders["work"], folders["outbox"]),
            known_speakers=await prepare_speakers(config, engine.traits.name),
        )
        async with open_lanes(services, stems, edges.engine_factory) as lanes:
            await _serve_jobs(config, edges, lanes, resumable, shutdown, ready, task_status)


async def _serve_jobs(
    config: Config,
    edges: Edges,
    lanes: Lanes,
    resumable: list[Journal],
    shutdown: trio.Event,
    ready: trio.Event,
    task_status: trio.TaskStatus[None],
) -> None:
    """The daemon proper, once everything it runs with is ready: the page, the workers, the
    intake; then the drain."""
    folders, notifier = config.folders, edges.notifier
    services = lanes.main.services
    daemon = Daemon(lanes)
    claimer = Claimer(config, lanes.stems, now=edges.now)
    daemon_metrics = metrics.activate(metrics.Metrics())  # before any task spawns
    async with trio.open_nursery() as root:
        root.start_soon(services.board.serve_writer)
        if config.web.listen:  # the status page, /healthz, /metrics
            await root.start(serve_web, config, services, daemon_metrics)
        if notifier.watchdog_interval:
            root.start_soon(_serve_watchdog, notifier, notifier.watchdog_interval)
        async with trio.open_nursery() as workers:
            send, receive = trio.open_memory_channel[Journal](0)
            async with receive:
                for _ in range(config.job_workers):
                    workers.start_soon(daemon.serve_job_worker, receive.clone())
            async with send, trio.open_nursery() as intake:
                intake.start_soon(_feed, send.clone(), resumable)
                await intake.start(
                    partial(
                        serve_intake, watcher=edges.watcher, pause_reason=services.pause_reason
                    ),
                    config,
                    send.clone(),
                    claimer,
                )
                logger.info(
                    "daemon.ready",
                    root=str(config.root),
                    engine=services.traits.name,
                    resumed=len(resumable),
                    inbox=str(folders["inbox"]),
                    profiles=list(config.profile_names),
                )
                notifier.ready(f"watching {folders['inbox']}")
                ready.set()
                task_status.started()
                await shutdown.wait()
                services.draining.set()
                logger.info("daemon.stopping", drain_timeout=config.drain_timeout)
                notifier.stopping("draining running jobs", extend_timeout=config.drain_timeout + 30)
                intake.cancel_scope.cancel()
            workers.cancel_scope.deadline = trio.current_time() + config.drain_timeout
        root.cancel_scope.cancel()


async def _feed(send: trio.MemorySendChannel[Journal], journals: list[Journal]) -> None:
    async with send:
        for journal in journals:
            logger.info("job.resumed", job_id=journal.folder.name)
            await send.send(journal)


async def _serve_signals(
    shutdown: trio.Event,
    ready: trio.Event,
    everything: trio.CancelScope,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(*SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if ready.is_set() and not shutdown.is_set():
                logger.info("daemon.signal", signal=name, action="drain")
                shutdown.set()
            else:
                logger.info("daemon.signal", signal=name, action="stop now")
                everything.cancel()


async def _serve_watchdog(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.watchdog()
        await trio.sleep(interval)


def read_progress_files(outbox: Path) -> list[dict[str, object]]:
    """Every progress file in the outbox (for `transcribed status`), newest first."""
    found = []
    for path in outbox.glob("*.progress.json"):
        try:
            found.append(json.loads(path.read_text("utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(found, key=lambda p: str(p.get("updated_at", "")), reverse=True)
