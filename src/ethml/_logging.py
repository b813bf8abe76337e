"""structlog set-up: a human console renderer on a terminal, JSON lines otherwise."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from ethml.urls import redact_urls


def _clear_status_line(_logger: Any, _name: str, rendered: Any) -> Any:
    """Erase the live status line (carriage return, clear to end of line) before a log line."""
    return "\r\033[K" + str(rendered)


def _redact_urls(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Every URL in a log line's text values cut to its scheme, host and port (`ethml.urls.redact_urls`): an RPC
    provider's key sits in the URL's path, query or user name, and an exception's text repeats the URL whole
    (aiohttp's `429, message='Too Many Requests', url='https://host/v3/<key>'`); logs are shipped and shared."""
    for key, value in event_dict.items():
        if isinstance(value, str) and "/" in value:
            event_dict[key] = redact_urls(value)
    return event_dict


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
            _redact_urls,
            renderer,
            *([_clear_status_line] if status_line else []),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
