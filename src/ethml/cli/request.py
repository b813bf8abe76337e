"""`ethml request`: ask the oracle for a prediction and optionally wait for it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from web3 import AsyncHTTPProvider, AsyncWeb3

from ethml.chain.deploy import Deployment, Status
from ethml.cli._common import handle_errors
from ethml.cli._config import load_account
from ethml.errors import ChainError
from ethml.ipfs import Blockstore, IpfsClient, parse_cid
from ethml.requester import parse_tip, request_prediction, resolve_model, wait_for_result

app = typer.Typer()


@app.command("request")
@handle_errors
def request(
    model: Annotated[str, typer.Option(help="Model name (breast-cancer, diabetes, iris, wine) or id.")],
    data: Annotated[Path | None, typer.Option(help="JSON data point to add to the blockstore and request.")] = None,
    cid: Annotated[str | None, typer.Option(help="Request this CID instead of adding --data.")] = None,
    tip: Annotated[str, typer.Option(help="Tip in EML for the miners.")] = "0",
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result and print it.")] = False,
    account: Annotated[int, typer.Option(min=0, help="Requesting account index.", envvar="ETHML_ACCOUNT")] = 9,
    direct: Annotated[
        bool, typer.Option("--direct", help="Request from the account itself, not the example consumer.")
    ] = False,
    rpc: Annotated[str, typer.Option(help="JSON-RPC URL.", envvar="ETHML_RPC")] = "http://127.0.0.1:8545",
    deployment: Annotated[
        Path | None, typer.Option(help="Deployment file (default: by chain id).", envvar="ETHML_DEPLOYMENT")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Blockstore and deployments directory.", envvar="ETHML_DATA_DIR")
    ] = None,
    mnemonic_file: Annotated[
        Path | None, typer.Option(help="Mnemonic file (or ETHML_MNEMONIC).", envvar="ETHML_MNEMONIC_FILE")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 300.0,
) -> None:
    """Request a prediction from a model on a data point (by file or CID); --wait prints the result."""
    if (data is None) == (cid is None):
        raise typer.BadParameter("give exactly one of --data FILE and --cid CID")
    tip_wei = parse_tip(tip)

    async def run() -> None:
        w3 = AsyncWeb3(AsyncHTTPProvider(rpc))
        try:
            try:
                chain_id = int(await w3.eth.chain_id)
            except Exception as exc:  # noqa: BLE001
                raise ChainError(
                    f"cannot reach the RPC at {rpc} ({type(exc).__name__}); is `ethml devnet` running?"
                ) from None
            dep = Deployment.load(deployment) if deployment else Deployment.find(chain_id, data_dir)
            model_id = resolve_model(dep, model)
            if data is not None:
                try:
                    raw = data.read_bytes()
                except OSError as exc:
                    raise ChainError(f"cannot read {data}: {exc.strerror}") from None
                blockstore = Blockstore(data_dir / "blocks") if data_dir else Blockstore()
                data_cid = str(IpfsClient(blockstore).add_bytes(raw))
            else:
                data_cid = str(parse_cid(str(cid)))
            signer, _ = load_account(
                index=account, mnemonic_file=mnemonic_file, keystore=None, password_file=None, chain_id=chain_id
            )
            rid = await request_prediction(w3, dep, signer, model_id, data_cid, tip_wei, direct=direct)
            typer.echo(f"request {rid}: model {model_id}, data {data_cid}, tip {tip} EML")
            if wait:
                result = await wait_for_result(
                    w3, dep, rid, timeout=timeout, progress=lambda m: typer.echo(m, err=True)
                )
                if result.status == Status.FINALIZED:
                    typer.echo(
                        f"request {rid}: finalized, prediction {result.value} ({result.agreeing} of 5 miners agreed)"
                    )
                    typer.echo("miners: " + ", ".join(result.miners))
                else:
                    # Invalid input, no consensus, expired: the request got no prediction.
                    agreed = f" ({result.agreeing} of 5 miners agreed)" if result.miners else ""
                    typer.echo(f"request {rid}: {result.status.label}, no prediction{agreed}", err=True)
                    if result.miners:
                        typer.echo("miners: " + ", ".join(result.miners), err=True)
                    raise typer.Exit(3)
        finally:
            await w3.provider.disconnect()

    asyncio.run(run())
