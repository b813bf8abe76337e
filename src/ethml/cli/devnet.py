"""`ethml devnet`: anvil + the deployed system + the bundled models, until Ctrl-C."""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from ethml.chain.accounts import DEV_MNEMONIC
from ethml.cli._common import handle_errors
from ethml.devnet import DEFAULT_DIFFICULTY
from ethml.errors import ChainError

app = typer.Typer(rich_markup_mode=None)


@app.command("devnet")
@handle_errors
def devnet(
    port: Annotated[int, typer.Option(min=1, max=65535, help="RPC port.", envvar="ETHML_DEVNET_PORT")] = 8545,
    host: Annotated[
        str,
        typer.Option(help="Address to listen on (0.0.0.0 lets miners on other machines connect).", envvar="ETHML_HOST"),
    ] = "127.0.0.1",
    block_time: Annotated[
        float | None,
        typer.Option(min=0, max=86_400, help="Seconds per block (default: mine each transaction at once)."),
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option("--state", "--fork-state", help="Load anvil's state from FILE and dump it there on exit."),
    ] = None,
    difficulty: Annotated[
        int, typer.Option(min=1, help="Proof-of-work difficulty (expected hashes).")
    ] = DEFAULT_DIFFICULTY,
    max_difficulty: Annotated[
        int | None, typer.Option(min=1, help="Let the retarget raise difficulty up to this (default: pinned).")
    ] = None,
    requests_per_round: Annotated[
        int, typer.Option(min=1, max=16, help="K: the most requests a round opens with (1 to 16).")
    ] = 8,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the deployment file and blocks go.", envvar="ETHML_DATA_DIR")
    ] = None,
    models_dir: Annotated[
        Path | None, typer.Option(help="Bundled models directory.", envvar="ETHML_MODELS_DIR")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the devnet's addresses as one JSON line, then run.")
    ] = False,
) -> None:
    """Start a local chain (anvil) with the dev accounts, deploy ethml, register the bundled models."""
    import asyncio

    from ethml.devnet import child_stderr, start_devnet

    net = asyncio.run(
        start_devnet(
            port=port,
            host=host,
            block_time=block_time,
            state=state,
            difficulty=difficulty,
            max_difficulty=max_difficulty,
            requests_per_round=requests_per_round,
            data_dir=data_dir,
            models_dir=models_dir,
        )
    )
    d = net.deployment
    if json_output:
        typer.echo(
            json.dumps(
                {
                    "rpc_url": net.url,
                    "chain_id": d.chain_id,
                    "ethml": d.ethml,
                    "token": d.token,
                    "registry": d.registry,
                    "consumer": d.consumer,
                    "models": d.models,
                    "deployment_file": str(net.deployment_file),
                    "reused": net.reused,
                    "mnemonic": DEV_MNEMONIC,
                }
            ),
        )
    models = ", ".join(f"{name} (id {i})" for name, i in d.models.items())
    say = functools.partial(typer.echo, err=json_output)  # with --json, stdout holds the JSON alone
    say(f"devnet at {net.url} (chain id {d.chain_id}); {'reused' if net.reused else 'deployed'} EthML at {d.ethml}")
    say(f"EML token {d.token}, model registry {d.registry}, example consumer {d.consumer}")
    say(f"models: {models}")
    say(f"deployment file: {net.deployment_file}")
    say(f"accounts: the public development mnemonic ({DEV_MNEMONIC}); `ethml accounts` lists them")
    say("next, in five terminals:   ethml mine --account 0   (then --account 1 .. 4)")
    say("then:                      ethml request --model breast-cancer --data models/data/breast-cancer-0.json --wait")
    say("Ctrl-C stops the devnet.")
    stop = {"now": False}

    def handler(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    try:
        while not stop["now"] and net.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                net.process.wait(timeout=0.5)
    finally:
        net.stop()
    if not stop["now"]:
        said = child_stderr(net.process)
        raise ChainError(
            f"anvil exited unexpectedly with code {net.process.returncode}" + (f": {said}" if said else "")
        )
    say("devnet stopped" + (f"; state saved to {state}" if state else ""))
