"""structlog, configured once: JSON lines on stderr for journald, readable lines on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    *, log_format: str = "auto", level: str = "info", sink: TextIO | None = None
) -> None:
    """Set up structlog for the whole process. `log_format` is auto, json or console. `sink`
    (default stderr) is where lines go: the one-shot command passes its progress bars'
    console so lines print above the bars (issue 10)."""
    use_console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_console:
        processors.append(
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        )
    else:
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sink or sys.stderr),
        cache_logger_on_first_use=True,
    )
