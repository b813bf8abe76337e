"""The `ethml` command line: a thin shell over the library."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ethml import __version__
from ethml.cli import bench_pow, demo, devnet, ipfs, mine, request

app = typer.Typer(
    name="ethml",
    help="ethml: a decentralized machine-learning inference oracle on Ethereum.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(demo.app)
app.add_typer(bench_pow.app)
app.add_typer(ipfs.app, name="ipfs")
app.add_typer(mine.app)
app.add_typer(devnet.app)
app.add_typer(request.app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ethml {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.", envvar="ETHML_DEBUG")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    if debug:
        os.environ["ETHML_DEBUG"] = "1"


def main() -> None:
    app()
