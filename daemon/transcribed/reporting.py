"""What the one-shot `transcribe` command shows, kept apart from how it runs the jobs.

    stdout a terminal   one readable line per file ("✓ NAME → OUT.txt", "✗ NAME: REASON")
    stdout not one      one JSON object per file, for scripts and jq
    stderr a terminal   a rich progress bar per file (ends at 100 % when the file is done),
                        with the log lines printed above the bars through the same Console,
                        so a line never glues onto a bar
    stderr not one      only the JSON log lines (logs.py), nothing else

The runner feeds it: `serve_bars(board)` while jobs run, then `finished(...)` or `failed(...)`
once per file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

import trio
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.text import Text

from transcribed.progress import JobProgress, ProgressBoard

BAR_INTERVAL = 0.2


def _label(progress: JobProgress, state: str) -> str:
    """A bar's description; escaped, since rich reads `[...]` in it as markup (a file name too)."""
    return escape(f"{progress.source} [{state}]")


class ConsoleSink:
    """A file-like sink for structlog's PrintLogger that prints whole lines through a rich
    Console (above any live progress bars)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            self.console.print(Text.from_ansi(line), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass


class Reporter:
    """Bars and per-file results for the one-shot command."""

    def __init__(self, *, console: Console | None = None, out: TextIO | None = None) -> None:
        self.console = console  # None: no bars (stderr is not a terminal)
        self.out = out or sys.stdout
        self._progress: Progress | None = None
        self._bars: dict[str, TaskID] = {}
        self._concluded: set[str] = set()  # bars never redrawn from the board again

    @property
    def as_json(self) -> bool:
        return not self.out.isatty()

    async def serve_bars(
        self, board: ProgressBoard, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Draw a bar per job on the board until cancelled (only with a console)."""
        if self.console is None:
            task_status.started()
            await trio.sleep_forever()
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        with self._progress:
            task_status.started()
            try:
                while True:
                    for progress in list(board.jobs.values()):
                        self._draw(progress)
                    await trio.sleep(BAR_INTERVAL)
            finally:
                self._progress.refresh()

    def _bar(self, progress: JobProgress) -> TaskID | None:
        if self._progress is None:
            return None
        if progress.job_id not in self._bars:
            self._bars[progress.job_id] = self._progress.add_task(
                escape(progress.source), total=100
            )
        return self._bars[progress.job_id]

    def _draw(self, progress: JobProgress) -> None:
        bar = self._bar(progress)
        if bar is None or self._progress is None or progress.job_id in self._concluded:
            return
        self._progress.update(
            bar, completed=progress.percent, description=_label(progress, progress.state)
        )

    def finished(self, progress: JobProgress, source: Path, outputs: list[Path]) -> None:
        self._concluded.add(progress.job_id)
        bar = self._bar(progress)
        if bar is not None and self._progress is not None:
            self._progress.update(
                bar, completed=100, description=_label(progress, "done"), refresh=True
            )
        self._result(
            {
                "source": str(source),
                "outcome": "done",
                "outputs": [str(path) for path in outputs],
                "error": None,
                "reason": None,
                "what_to_do": None,
            },
            f"✓ {progress.source} → {outputs[0] if outputs else '-'}",
        )

    def failed(self, progress: JobProgress, source: Path, error: dict[str, str]) -> None:
        """A file that failed; `error` as in NAME.error.json (error, reason, what_to_do)."""
        self._concluded.add(progress.job_id)
        bar = self._bar(progress)
        if bar is not None and self._progress is not None:
            # the bar stays where the file failed, marked failed
            self._progress.update(bar, description=_label(progress, "failed"), refresh=True)
            self._progress.stop_task(bar)
        self._result(
            {
                "source": str(source),
                "outcome": "failed",
                "outputs": [],
                "error": error.get("error"),
                "reason": error.get("reason"),
                "what_to_do": error.get("what_to_do") or None,
            },
            f"✗ {progress.source}: {error.get('reason')}"
            + (f" ({error['what_to_do']})" if error.get("what_to_do") else ""),
        )

    def _result(self, data: dict[str, Any], line: str) -> None:
        if self.as_json:
            self.out.write(json.dumps(data, ensure_ascii=False) + "\n")
            self.out.flush()
        elif self.console is not None:
            self.console.print(line, markup=False, highlight=False)
        else:
            self.out.write(line + "\n")
            self.out.flush()
