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

from transcribed.app import read_progress_files, run_daemon
from transcribed.config import Config, key_specs, load_config
from transcribed.diarize import prepare_speakers  # issue 12
from transcribed.engines import gate_for, open_engine
from transcribed.errors import ConfigError, TranscribedError
from transcribed.intake import StemRegistry, new_job_id, safe_stem
from transcribed.jobs import Services, job_summary, new_progress, run_job
from transcribed.journal import JobRecord, Journal, encode_name
from transcribed.logs import configure_logging
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
    args = build_parser().parse_args(argv)
    try:
        config = _config_from(args)
    except ConfigError as exc:
        print(f"transcribed: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(log_format=config.log_format, level=config.log_level)
    error: TranscribedError | None = None
    return_code = EXIT_FAILED
    try:
        if args.command == "run":
            trio.run(run_daemon, config)
            return 0
        if args.command == "transcribe":
            failures = trio.run(transcribe_files, config, args.files, args.out)
            return EXIT_FAILED if failures else 0
        return show_status(config, as_json=args.json)
    except* TranscribedError as group:
        error = _first_leaf(group)
    except* KeyboardInterrupt:
        return_code = 130
    if error is None:
        return return_code
    if isinstance(error, ConfigError):
        print(f"transcribed: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"transcribed: {error}", file=sys.stderr)
    return EXIT_FAILED


def _first_leaf(group: BaseExceptionGroup[TranscribedError]) -> TranscribedError:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, TranscribedError)
    return error


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


async def transcribe_files(config: Config, files: list[Path], out: Path | None) -> int:
    """The one-shot command: each file through the same pipeline as the daemon, outputs next to
    it (or in `out`), the source left where it is. Returns the number of files that failed."""
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"not a file: {', '.join(map(str, missing))}")
    board = ProgressBoard(None)
    failures = 0
    async with open_engine(config) as engine:
        services = Services(
            config=config,
            engine=engine,
            gate=gate_for(config, engine),
            board=board,
            known_speakers=await prepare_speakers(config, engine.name),  # issue 12
        )
        limiter = trio.CapacityLimiter(config.job_workers)

        async def one(path: Path) -> None:
            nonlocal failures
            async with limiter:
                ok = await _transcribe_one(
                    services,
                    path.absolute(),  # noqa: ASYNC240 - no I/O, just joins the working directory
                    (out or path.parent).absolute(),
                )
            failures += 0 if ok else 1

        async with trio.open_nursery() as nursery:
            if sys.stderr.isatty():
                nursery.start_soon(_show_bars, board)
            async with trio.open_nursery() as jobs:
                for path in files:
                    jobs.start_soon(one, path)
            nursery.cancel_scope.cancel()
    return failures


async def _transcribe_one(services: Services, path: Path, out: Path) -> bool:
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once per file, before any work
    name = os.fsencode(path.name)
    display, name_b64 = encode_name(name)
    now = utc_now()
    record = JobRecord(
        job_id=new_job_id(now),
        display_name=display,
        name_b64=name_b64,
        stem=StemRegistry(out).claim_unique(safe_stem(name)),
        source_file=path.name,
        claimed_at=isoformat(now),
    )
    progress = new_progress(services, record)
    with tempfile.TemporaryDirectory(prefix="transcribed-") as work:
        journal = Journal(Path(work))
        failure: BaseException | None = None
        try:
            outcome = await run_job(
                services, journal, record, progress, output_dir=out, source=path
            )
        except* TranscribedError as group:
            failure = _first_leaf(group)
    if failure is not None:
        services.board.update(progress, state="failed", last_error=str(failure))
        print(f"transcribed: {display}: {failure}", file=sys.stderr)
        return False
    services.board.update(progress, state="done")
    logger.info(
        "job.finished", job_id=record.job_id, outcome="done", **job_summary(record, outcome)
    )
    chosen = " ".join(f".{suffix}" for suffix in services.config.outputs)
    print(f"{display}: {out / record.stem} ({chosen})", file=sys.stderr)
    return True


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
