"""`ethml demo`: the oracle end to end on the embedded chain (no Node.js, no anvil, no network)."""

from __future__ import annotations

from typing import Annotated

import typer

from ethml.cli._common import echo_json, handle_errors

app = typer.Typer(rich_markup_mode=None)


@app.command("demo")
@handle_errors
def demo(
    requests: Annotated[int, typer.Option(min=1, help="Requests to send (one of them an invalid data point).")] = 8,
    difficulty: Annotated[int, typer.Option(min=1, help="Proof-of-work difficulty (expected hashes).")] = 1 << 16,
    nodes: Annotated[int, typer.Option(min=5, help="Miner nodes in this process (at least 5).")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Deploy on an in-process chain, run miner nodes, send requests across the bundled models, show results."""
    import asyncio

    from ethml.demo import render, run_demo

    report = asyncio.run(
        run_demo(requests=requests, difficulty=difficulty, nodes=nodes, progress=lambda m: typer.echo(m, err=True))
    )
    if as_json:
        echo_json(report.to_dict())
    else:
        typer.echo(render(report))
