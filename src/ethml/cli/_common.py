"""What every command shares: error handling at the edge and logging set-up."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import typer

from ethml.errors import EthmlError

P = ParamSpec("P")
R = TypeVar("R")


def debug_enabled() -> bool:
    return os.environ.get("ETHML_DEBUG", "") not in ("", "0")


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """EthmlError becomes one red line and exit code 1; tracebacks only with --debug/ETHML_DEBUG."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except EthmlError as exc:
            if debug_enabled():
                raise
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None

    return wrapper


def is_tty() -> bool:
    return sys.stderr.isatty()


def echo_json(data: Any) -> None:
    import json

    typer.echo(json.dumps(data, indent=2))
