"""Command line: argv → config, logging set-up, trio.run; exceptions → exit codes. Nothing else.

    transcribed run [--config FILE] [--root DIR] [--engine embedded] [--<any key> VALUE]
    transcribed transcribe FILE... [--out DIR] [--profile NAME] [--config FILE] [--<any key> VALUE]
    transcribed status [--root DIR] [--config FILE] [--json]

Exit codes: 0 success, 1 some file failed (transcribe), 2 usage (a bad flag, a missing input
file), 78 configuration error (also: `status` on a root that is not a folder)
(EX_CONFIG, which the systemd unit does not restart on).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import tempfile
from pathlib import Path
from typing import TextIO, cast

import structlog
import trio
from rich.console import Console

from transcribed import failpoints, memory, status
from transcribed.app import run_daemon
from transcribed.boundary import JobReport, OneShotDestination, run_at_boundary
from transcribed.config import Config, KeySpec, key_specs, load_config
from transcribed.diarize import prepare_speakers
from transcribed.engines import EngineFactory, gate_for, open_engine
from transcribed.errors import ConfigError, TranscribedError
from transcribed.jobs import Services, source_key
from transcribed.journal import JobRecord, Journal
from transcribed.logs import configure_logging
from transcribed.media import FfmpegDecoder, check_tools
from transcribed.naming import StemRegistry, encode_name, new_job_id, safe_stem
from transcribed.progress import ProgressBoard, isoformat, utc_now
from transcribed.reporting import ConsoleSink, Reporter

logger = structlog.get_logger()

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78


# the keys `status` takes (where the folders are, where the daemon's page is)
STATUS_KEYS = ("root", "inbox", "outbox", "work", "done", "failed", "settle_interval", "web.listen")


def _default_text(spec: KeySpec) -> str:
    if spec.default is None:
        return "unset"
    if isinstance(spec.default, str) and not spec.default:
        return '""'
    return str(spec.default)


def _add_config_flags(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    group = parser.add_argument_group(
        "configuration keys (each also TRANSCRIBED_<KEY> in the environment)"
    )
    for spec in key_specs():
        if only is not None and spec.dotted not in only:
            continue
        group.add_argument(
            spec.flag,
            dest=f"key:{spec.dotted}",
            metavar=spec.name.upper()
            if spec.choices is None
            else "{" + ",".join(spec.choices) + "}",
            help=(
                spec.help
                if "default:" in spec.help
                else f"{spec.help} (default: {_default_text(spec)})"
            ).replace("%", "%%"),
        )


def _version() -> str:
    try:
        return importlib.metadata.version("transcribed")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transcribed", description="Turn recordings dropped in a folder into transcripts."
    )
    parser.add_argument("--version", action="version", version=f"transcribed {_version()}")
    parser.set_defaults(profile=None)  # only `transcribe` takes --profile
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the daemon in the foreground")
    _add_config_flags(run)
    once = commands.add_parser("transcribe", help="transcribe files once, with a progress bar")
    once.add_argument("files", nargs="+", type=Path, metavar="FILE")
    once.add_argument("--out", type=Path, help="write outputs here (default: next to each file)")
    once.add_argument(
        "--profile",
        metavar="NAME",
        help="transcribe with [profiles.NAME]'s settings, as the daemon does its inbox/NAME/",
    )
    _add_config_flags(once)
    status = commands.add_parser(
        "status",
        help="list the inbox, jobs and their progress, finished, failed and rejected files",
        description="What the daemon's folders say (or the running daemon's page, when it answers). "
        "Exit status 0, or 78 when the root is not a folder.",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    _add_config_flags(status, only=STATUS_KEYS)
    return parser


def _config_from(args: argparse.Namespace) -> Config:
    flags = {
        name.removeprefix("key:"): value
        for name, value in vars(args).items()
        if name.startswith("key:")
    }
    config = load_config(path=args.config, flags=flags)
    return config if args.profile is None else config.for_profile(args.profile)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = _config_from(args)
    except ConfigError as exc:
        print(f"transcribed: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # the one-shot command's presentation (bars and log lines share one console)
    reporter = Reporter(console=Console(stderr=True) if sys.stderr.isatty() else None)
    if args.command == "transcribe":
        missing = [str(f) for f in args.files if not f.is_file()]
        if missing:
            print(f"transcribed: not a file: {', '.join(missing)}", file=sys.stderr)
            return EXIT_USAGE
    failpoints.arm(os.environ.get(failpoints.ENV))
    memory.tune_malloc()
    sink = ConsoleSink(reporter.console) if reporter.console is not None else None
    configure_logging(
        log_format=config.log_format, level=config.log_level, sink=cast(TextIO | None, sink)
    )
    errors: list[TranscribedError] = []
    interrupted = False
    try:
        if args.command == "run":
            trio.run(run_daemon, config)
            return 0
        if args.command == "transcribe":
            failures = trio.run(transcribe_files, config, args.files, args.out, reporter)
            return EXIT_FAILED if failures else 0
        return status.show_status(config, as_json=args.json)
    except* TranscribedError as group:
        # start-up errors (a job's own errors never get here: the job boundary keeps them)
        errors = [e for e in _leaves(group) if isinstance(e, TranscribedError)]
    except* KeyboardInterrupt:
        interrupted = True
    if interrupted:
        return 130
    configs = [e for e in errors if isinstance(e, ConfigError)]
    for error in configs or errors:
        prefix = "configuration error: " if configs else ""
        print(f"transcribed: {prefix}{error}", file=sys.stderr)
    return EXIT_CONFIG if configs else EXIT_FAILED


def _leaves(group: BaseExceptionGroup[TranscribedError]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        leaves.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return leaves


async def transcribe_files(
    config: Config,
    files: list[Path],
    out: Path | None,
    reporter: Reporter | None = None,
    *,
    engine_factory: EngineFactory = open_engine,
) -> int:
    """The one-shot command: each file through the daemon's own job boundary, outputs next to
    it (or in `out`), the source left where it is. Returns the number of files that failed; a
    failure (even a bug) in one file never stops the others."""
    check_tools()
    board = ProgressBoard(None)
    registries: dict[Path, StemRegistry] = {}
    failures = 0
    reporter = reporter or Reporter()
    async with engine_factory(config) as engine:
        services = Services(
            config=config,
            engine=engine,
            gate=gate_for(config, engine.traits),
            board=board,
            decoder=FfmpegDecoder(
                probe_timeout=config.probe_timeout,
                max_seconds=config.max_audio_seconds,
                stall_timeout=config.decode_stall_timeout,
                limits=config.media_limits,
            ),
            known_speakers=await prepare_speakers(config, engine.traits.name),
        )
        limiter = trio.CapacityLimiter(config.job_workers)

        async def one(path: Path) -> None:
            nonlocal failures
            folder = (out or path.parent).absolute()
            stems = registries.setdefault(folder, StemRegistry(folder))
            async with limiter:
                report = await _transcribe_one(services, path.absolute(), stems)  # noqa: ASYNC240
            if report.outcome == "done":
                reporter.finished(report.progress, path, report.outputs)
            else:
                failures += 1
                reporter.failed(report.progress, path, report.error or {})

        async with trio.open_nursery() as nursery:
            await nursery.start(reporter.serve_bars, board)
            async with trio.open_nursery() as jobs:
                for path in files:
                    jobs.start_soon(one, path)
            nursery.cancel_scope.cancel()
    return failures


async def _transcribe_one(services: Services, path: Path, stems: StemRegistry) -> JobReport:
    stems.folder.mkdir(parents=True, exist_ok=True)
    name = os.fsencode(path.name)
    display, name_b64 = encode_name(name)
    now = utc_now()
    record = JobRecord(
        job_id=new_job_id(now),
        display_name=display,
        name_b64=name_b64,
        stem=stems.claim_unique(safe_stem(name)),
        source_file=str(path),  # absolute: the source stays where it is
        claimed_at=isoformat(now),
        source_key=source_key(path),
    )
    with tempfile.TemporaryDirectory(prefix="transcribed-") as work:
        journal = Journal(Path(work))
        journal.save(record)
        return await run_at_boundary(
            services, journal, OneShotDestination(output_dir=stems.folder, stems=stems)
        )


if __name__ == "__main__":
    sys.exit(main())
