"""Command line: argv → config, logging set-up, trio.run; exceptions → exit codes. Nothing else.

    transcribed run [--config FILE] [--root DIR] [--engine embedded] [--<any key> VALUE]
    transcribed transcribe FILE... [--out DIR] [--config FILE] [--<any key> VALUE]
    transcribed status [--root DIR] [--config FILE] [--json]

Exit codes: 0 success, 1 some file failed (transcribe), 2 usage, 78 configuration error
(EX_CONFIG, which the systemd unit does not restart on).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog
import trio

from transcribed import failpoints
from transcribed.app import EngineFactory, read_progress_files, run_daemon
from transcribed.boundary import JobReport, OneShotDestination, run_at_boundary
from transcribed.config import Config, key_specs, load_config
from transcribed.engines import gate_for, open_engine
from transcribed.errors import ConfigError, TranscribedError
from transcribed.jobs import Services, source_key
from transcribed.journal import JobRecord, Journal
from transcribed.logs import configure_logging
from transcribed.media import FfmpegDecoder, check_tools
from transcribed.naming import StemRegistry, encode_name, new_job_id, safe_stem
from transcribed.progress import ProgressBoard, isoformat, utc_now

logger = structlog.get_logger()

EXIT_FAILED = 1
EXIT_CONFIG = 78


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    group = parser.add_argument_group(
        "configuration keys (each also TRANSCRIBED_<KEY> in the environment)"
    )
    for spec in key_specs():
        group.add_argument(
            spec.flag,
            dest=f"key:{spec.dotted}",
            metavar=spec.name.upper()
            if spec.choices is None
            else "{" + ",".join(spec.choices) + "}",
            help=spec.help,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transcribed", description="Turn recordings dropped in a folder into transcripts."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the daemon in the foreground")
    _add_config_flags(run)
    once = commands.add_parser("transcribe", help="transcribe files once, with a progress bar")
    once.add_argument("files", nargs="+", type=Path, metavar="FILE")
    once.add_argument("--out", type=Path, help="write outputs here (default: next to each file)")
    _add_config_flags(once)
    status = commands.add_parser("status", help="list jobs and their progress")
    status.add_argument("--json", action="store_true", help="print the progress files as JSON")
    _add_config_flags(status)
    return parser


def _config_from(args: argparse.Namespace) -> Config:
    flags = {
        name.removeprefix("key:"): value
        for name, value in vars(args).items()
        if name.startswith("key:")
    }
    return load_config(path=args.config, flags=flags)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = _config_from(args)
    except ConfigError as exc:
        print(f"transcribed: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "transcribe":
        missing = [str(f) for f in args.files if not f.is_file()]
        if missing:
            parser.error(f"not a file: {', '.join(missing)}")  # exit 2: a usage error
    failpoints.arm(os.environ.get(failpoints.ENV))
    configure_logging(log_format=config.log_format, level=config.log_level)
    errors: list[TranscribedError] = []
    interrupted = False
    try:
        if args.command == "run":
            trio.run(run_daemon, config)
            return 0
        if args.command == "transcribe":
            failures = trio.run(transcribe_files, config, args.files, args.out)
            return EXIT_FAILED if failures else 0
        return show_status(config, as_json=args.json)
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


def show_status(config: Config, *, as_json: bool) -> int:
    outbox = config.folder("outbox")
    jobs = read_progress_files(outbox) if outbox.is_dir() else []
    if as_json:
        print(json.dumps(jobs, indent=2))
        return 0
    if not jobs:
        print(f"no jobs in {outbox}")
        return 0
    print(f"{'STATE':<13} {'DONE':>6} {'ETA':>9}  {'UPDATED':<20}  SOURCE")
    for job in jobs:
        eta = job.get("eta_seconds")
        eta_text = f"{int(eta) // 60}m{int(eta) % 60:02d}s" if isinstance(eta, int | float) else "-"
        state = str(job.get("state"))
        if job.get("waiting_reason"):
            state += f" ({job['waiting_reason']})"
        print(
            f"{state:<13} {job.get('percent', 0):>5}% {eta_text:>9}  {job.get('updated_at', ''):<20}  {job.get('source')!r}"
        )
    return 0


async def transcribe_files(
    config: Config,
    files: list[Path],
    out: Path | None,
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
        )
        limiter = trio.CapacityLimiter(config.job_workers)

        async def one(path: Path) -> None:
            nonlocal failures
            folder = (out or path.parent).absolute()
            stems = registries.setdefault(folder, StemRegistry(folder))
            async with limiter:
                report = await _transcribe_one(services, path.absolute(), stems)  # noqa: ASYNC240
            if report.outcome == "done":
                names = " ".join(p.suffix for p in report.outputs[1:])
                first = report.outputs[0] if report.outputs else folder
                print(f"{report.record.display_name}: {first} ({names})", file=sys.stderr)
            else:
                failures += 1
                error = report.error or {}
                hint = f" ({error['what_to_do']})" if error.get("what_to_do") else ""
                print(
                    f"transcribed: {report.record.display_name}: {error.get('reason')}{hint}",
                    file=sys.stderr,
                )

        async with trio.open_nursery() as nursery:
            if sys.stderr.isatty():
                nursery.start_soon(_show_bars, board)
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


async def _show_bars(board: ProgressBoard) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bars: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeRemainingColumn(),
        transient=False,
    ) as display:
        while True:
            for job_id, progress in list(board.jobs.items()):
                if job_id not in bars:
                    bars[job_id] = display.add_task(progress.source, total=100)
                display.update(
                    bars[job_id],
                    completed=progress.percent,
                    description=f"{progress.source} [{progress.state}]",
                )
            await trio.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
