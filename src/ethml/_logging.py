"""structlog set-up: a human console renderer on a terminal, JSON lines otherwise."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def _clear_status_line(_logger: Any, _name: str, rendered: Any) -> Any:
    """Erase the live status line (carriage return, clear to end of line) before a log line."""
    return "\r\033[K" + str(rendered)


def configure_logging(fmt: str | None = None, level: str = "info", *, status_line: bool = False) -> None:
    """`fmt`: "console", "json", or None to pick console on a TTY and JSON otherwise. With
    `status_line`, each log line first erases the live status line it would otherwise run into."""
    use_console = sys.stderr.isatty() if fmt is None else fmt == "console"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
            *([_clear_status_line] if status_line else []),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
