"""The `ethml` command line: a thin shell over the library."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from ethml import __version__
from ethml.cli import bench_pow, coordinator, demo, deploy, devnet, ipfs, mine, model, oracle, request, training

app = typer.Typer(
    name="ethml",
    help="ethml: a decentralized machine-learning inference oracle on Ethereum.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=True,
)
app.add_typer(demo.app)
app.add_typer(bench_pow.app)
app.add_typer(ipfs.app, name="ipfs")
app.add_typer(mine.app)
app.add_typer(devnet.app)
app.add_typer(deploy.app)
app.add_typer(model.app)
app.add_typer(request.app)
app.add_typer(oracle.app)
app.add_typer(training.app)
app.add_typer(coordinator.app)


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


def run(argv: list[str] | None = None) -> int:
    """Run the command line; a usage error is one line on stderr (exit 2), like every other error."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="ethml", standalone_mode=False)
    except typer.TyperException as exc:  # click's usage and parameter errors
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help(), err=True)
            return 2
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        typer.secho(f"error: {exc.format_message()}{hint}", fg=typer.colors.RED, err=True)
        return exc.exit_code
    except typer.Abort:
        typer.secho("error: aborted", fg=typer.colors.RED, err=True)
        return 1
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run())
