"""`ethml request`: ask the oracle for a prediction and optionally wait for it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ethml.cli._common import RPC_HELP, connect, echo_json, handle_errors
from ethml.cli._config import load_account
from ethml.errors import IpfsError

if TYPE_CHECKING:
    from web3 import AsyncWeb3

    from ethml.chain.deploy import Deployment
    from ethml.ipfs import Blockstore

app = typer.Typer(rich_markup_mode=None)

#: Exit status of `--wait` when the request closed without a prediction (invalid input, no consensus, expired).
EXIT_NO_PREDICTION = 3


@app.command("request")
@handle_errors
def request(
    model: Annotated[str, typer.Option(help="Model name (breast-cancer, diabetes, iris, wine) or id.")],
    data: Annotated[Path | None, typer.Option(help="JSON data point to add to the blockstore and request.")] = None,
    cid: Annotated[str | None, typer.Option(help="Request this CID instead of adding --data.")] = None,
    tip: Annotated[str, typer.Option(help="Tip in EML for the miners (at most 18 decimals).")] = "0",
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result and print it.")] = False,
    account: Annotated[
        int,
        typer.Option("--account", "--mnemonic-index", min=0, help="Requesting account index.", envvar="ETHML_ACCOUNT"),
    ] = 9,
    private_key: Annotated[
        str | None,
        typer.Option(
            metavar="HEX", help="Sign with this private key (instead of --account).", envvar="ETHML_PRIVATE_KEY"
        ),
    ] = None,
    direct: Annotated[
        bool, typer.Option("--direct", help="Request from the account itself, not the example consumer.")
    ] = False,
    rpc: Annotated[
        str, typer.Option("--rpc-url", "--rpc", help=RPC_HELP, envvar=["ETHML_RPC", "ETH_RPC_URL"])
    ] = "http://127.0.0.1:8545",
    deployment: Annotated[
        Path | None, typer.Option(help="Deployment file (default: by chain id).", envvar="ETHML_DEPLOYMENT")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Blockstore and deployments directory.", envvar="ETHML_DATA_DIR")
    ] = None,
    mnemonic_file: Annotated[
        Path | None, typer.Option(help="Mnemonic file (or ETHML_MNEMONIC).", envvar="ETHML_MNEMONIC_FILE")
    ] = None,
    gateway: Annotated[
        list[str] | None, typer.Option(metavar="URL", help="IPFS gateway to check a --cid against (repeatable).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Send even a data point the miners would answer as invalid input.")
    ] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait with --wait.")] = 300.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the request (and result) as JSON.")] = False,
) -> None:
    """Request a prediction from a model on a data point (by file or CID); --wait prints the result.

    The data point is checked before anything is sent, the way the miners will check it: at most
    1 MiB, a JSON array of the model's number of finite features, a prediction the model can make.
    Exit status: 0 finalized (or sent, without --wait), 1 error, 2 bad usage, 3 closed without a
    prediction (invalid input, no consensus, expired).
    """
    import asyncio

    from ethml.chain.deploy import Deployment, registry_contract
    from ethml.ipfs import Blockstore, IpfsClient, parse_cid
    from ethml.ml import Manifest
    from ethml.requester import RequestError, check_data_point, parse_tip, request_prediction, resolve_model

    if (data is None) == (cid is None):
        raise typer.BadParameter("give exactly one of --data FILE and --cid CID")
    tip_wei = parse_tip(tip)
    data_cid = str(parse_cid(cid)) if cid is not None else None
    raw: bytes | None = None
    if data is not None:
        try:
            raw = data.read_bytes()
        except OSError as exc:
            raise RequestError(f"cannot read {data}: {exc.strerror}") from None

    async def run() -> None:
        w3, chain_id = await connect(rpc)
        try:
            dep = Deployment.load(deployment) if deployment else Deployment.find(chain_id, data_dir)
            model_id = resolve_model(dep, model)
            registry = registry_contract(w3, dep.registry)
            sha, _kind, _decimals, features, active, _mcid = await _model(registry, model_id)
            if not active:
                raise RequestError(f"model {model_id} is deactivated")
            blockstore = Blockstore(data_dir / "blocks") if data_dir else Blockstore()
            point = raw if raw is not None else await _fetch(blockstore, str(data_cid), gateway or [], force)
            if point is not None and not force:
                check_data_point(point, int(features), Manifest.load(), bytes(sha).hex())
            requested_cid = data_cid if raw is None else str(IpfsClient(blockstore).add_bytes(raw))
            signer, _ = load_account(
                index=None if private_key else account,
                mnemonic_file=mnemonic_file,
                keystore=None,
                password_file=None,
                chain_id=chain_id,
                private_key=private_key,
            )
            rid = await request_prediction(w3, dep, signer, model_id, str(requested_cid), tip_wei, direct=direct)
            summary: dict[str, Any] = {"request": rid, "model": model_id, "cid": requested_cid, "tip_eml": tip}
            if not json_output:
                typer.echo(f"request {rid}: model {model_id}, data {requested_cid}, tip {tip} EML")
            if wait:
                await _wait(w3, dep, rid, timeout, json_output, summary)
            elif json_output:
                echo_json(summary)
        finally:
            await w3.provider.disconnect()

    asyncio.run(run())


async def _model(registry: Any, model_id: int) -> Any:
    from ethml.chain.reverts import is_revert
    from ethml.chain.tx import revert_reason
    from ethml.requester import RequestError

    try:
        return await registry.functions.getModel(model_id).call()
    except Exception as exc:
        if not is_revert(exc):
            raise
        raise RequestError(revert_reason(exc, registry.abi)) from None


async def _fetch(blockstore: Blockstore, cid: str, gateways: list[str], force: bool) -> bytes | None:
    """The data behind a --cid, from the local blockstore or the gateways, as a miner would fetch it."""
    from ethml.ipfs import IpfsClient, IpfsConfig
    from ethml.ipfs.client import DATA_POINT_LIMIT
    from ethml.requester import RequestError

    config = IpfsConfig(gateways=gateways, gateway_timeout=10.0, total_timeout=20.0)
    try:
        async with IpfsClient(blockstore, config) as ipfs:
            return await ipfs.cat(cid, max_size=DATA_POINT_LIMIT)
    except IpfsError as exc:
        if force:
            return None
        where = "the local blockstore" + (" or " + ", ".join(gateways) if gateways else " (no --gateway given)")
        raise RequestError(
            f"{cid} cannot be fetched from {where}: {exc}; miners would not find it either (--force sends it anyway)"
        ) from None


async def _wait(
    w3: AsyncWeb3[Any], dep: Deployment, rid: int, limit_s: float, json_output: bool, summary: dict[str, Any]
) -> None:
    from ethml.chain.deploy import Status
    from ethml.requester import wait_for_result

    progress = None if json_output else (lambda m: typer.echo(m, err=True))
    result = await wait_for_result(w3, dep, rid, timeout=limit_s, progress=progress)
    summary.update(
        status=result.status.label,
        prediction=result.value,
        agreeing=result.agreeing,
        miners=result.miners,
        closed_block=result.closed_block,
        round=result.round_id,
    )
    if json_output:
        echo_json(summary)
    elif result.status == Status.FINALIZED:
        typer.echo(
            f"request {rid}: finalized, prediction {result.value} "
            f"({result.agreeing} of 5 miners agreed, round {result.round_id})"
        )
        typer.echo("miners: " + ", ".join(result.miners))
    else:
        # Invalid input, no consensus, expired: the request got no prediction.
        agreed = f" ({result.agreeing} of 5 miners agreed)" if result.miners else ""
        typer.echo(f"request {rid}: {result.status.label}, no prediction{agreed}", err=True)
        if result.miners:
            typer.echo("miners: " + ", ".join(result.miners), err=True)
    if result.status != Status.FINALIZED:
        raise typer.Exit(EXIT_NO_PREDICTION)
