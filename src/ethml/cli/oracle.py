"""`ethml status`, `ethml requests list|show`, `ethml expire`, `ethml balance`, `ethml accounts`:
the state of the oracle without `cast`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ethml.chain.accounts import DEV_MNEMONIC, dev_accounts
from ethml.cli._common import ChainOptions, JsonOption, echo_json, handle_errors
from ethml.cli._config import load_account
from ethml.cli._options import option_groups
from ethml.errors import ChainError

if TYPE_CHECKING:
    from web3 import AsyncWeb3

    from ethml.chain.deploy import Deployment

app = typer.Typer(rich_markup_mode=None)
requests_app = typer.Typer(
    help="Inspect requests: `list` the latest, `show ID` one of them.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(requests_app, name="requests")


@app.command("status")
@handle_errors
@option_groups
def status(
    chain: ChainOptions,
    json_output: JsonOption = False,
) -> None:
    """The oracle now: chain, contract, difficulty, the open round and its phase, the queue."""
    from ethml.oracle import oracle_status

    s = chain.run(oracle_status)
    if json_output:
        echo_json(s.as_dict())
        return
    typer.echo(f"chain {s.chain_id}, block {s.block}, EthML at {s.contract}")
    typer.echo(
        f"difficulty {s.difficulty:,}; {s.requests} requests, {s.queued} queued; {s.models} models; "
        f"rounds of up to {s.requests_per_round} requests"
    )
    if s.current_round is None:
        typer.echo("no open round")
    else:
        ids = ", ".join(map(str, s.current_requests))
        plural = "s" if len(s.current_requests) > 1 else ""
        typer.echo(f"round {s.current_round}: request{plural} {ids}; bond {s.bond_eml:g} EML per commitment")
        if s.phase == "committing":
            typer.echo(f"  {s.commits}/5 commitments (commit deadline block {s.commit_deadline})")
        else:
            typer.echo(f"  {s.reveals}/5 reveals (reveal deadline block {s.reveal_deadline})")
    typer.echo(
        f"base rewards issued: {s.rewards_issued_eml:g} EML; burned: {s.burned_eml:g} EML (lost bonds, unearned tips)"
    )


@requests_app.command("show")
@handle_errors
@option_groups
def show(
    request_id: Annotated[int, typer.Argument(min=1, help="The request id.")],
    chain: ChainOptions,
    json_output: JsonOption = False,
) -> None:
    """One request: status, model, data CID, tip, result and the miners of its round."""
    from ethml.oracle import request_info

    info = chain.run(lambda w3, dep: request_info(w3, dep, request_id))
    if json_output:
        echo_json(info.as_dict())
        return
    typer.echo(f"request {info.request_id}: {info.status}")
    typer.echo(f"  model {info.model_id}, data {info.data_cid}, tip {info.tip_eml:g} EML, by {info.requester}")
    where = f"round {info.round_id}, block {info.block}" if info.round_id else f"block {info.block}"
    if info.prediction is not None:
        typer.echo(f"  prediction {info.prediction} ({info.agreeing} of 5 miners agreed), {where}")
    elif info.miners:
        typer.echo(f"  no prediction ({info.agreeing} of 5 miners agreed), {where}")
    if info.miners:
        typer.echo("  miners: " + ", ".join(info.miners))


@requests_app.command("list")
@handle_errors
@option_groups
def list_(
    last: Annotated[int, typer.Option(min=1, max=1000, help="How many of the latest requests.")] = 20,
    *,
    chain: ChainOptions,
    json_output: JsonOption = False,
) -> None:
    """The latest requests, newest first."""
    from ethml.oracle import list_requests

    infos = chain.run(lambda w3, dep: list_requests(w3, dep, last=last))
    if json_output:
        echo_json([i.as_dict() for i in infos])
        return
    if not infos:
        typer.echo("no requests yet")
    for i in infos:
        result = f"{i.prediction}" if i.prediction is not None else "-"
        typer.echo(
            f"{i.request_id:>6} {i.status:<13} model {i.model_id:<3} tip {i.tip_eml:<8g} {result:>10}  {i.data_cid}"
        )


@app.command("expire")
@handle_errors
@option_groups
def expire(
    request_id: Annotated[int, typer.Argument(min=1, help="The request to expire (open, or stale in the queue).")],
    account: Annotated[int, typer.Option(min=0, help="Account index that sends the transaction.")] = 9,
    mnemonic_file: Annotated[
        Path | None, typer.Option(help="Mnemonic file (or ETHML_MNEMONIC).", envvar="ETHML_MNEMONIC_FILE")
    ] = None,
    *,
    chain: ChainOptions,
) -> None:
    """Expire a request that cannot be answered in time: its open round, when five commitments did not
    come within the commit window (the round's highest-tip request expires, the others go back to the
    queue, committed bonds go back), or the request itself when it waited in the queue past
    maxQueueBlocks. The expired request's tip is refunded and its consumer told.
    """
    from ethml.oracle import expire_request

    async def body(w3: AsyncWeb3[Any], dep: Deployment) -> str:
        signer, _ = load_account(
            index=account, mnemonic_file=mnemonic_file, keystore=None, password_file=None, chain_id=dep.chain_id
        )
        return await expire_request(w3, dep, signer, request_id)

    typer.echo(chain.run(body))


@app.command("balance")
@handle_errors
@option_groups
def balance(
    address: Annotated[str | None, typer.Argument(help="Address (default: the --account's).")] = None,
    account: Annotated[int, typer.Option(min=0, help="Account index when no address is given.")] = 0,
    *,
    chain: ChainOptions,
    json_output: JsonOption = False,
) -> None:
    """ETH, EML, and the EML the oracle holds for an address as a miner (rewards and bonds, claimable)."""
    from ethml.oracle import balances

    async def body(w3: AsyncWeb3[Any], dep: Deployment) -> dict[str, Any]:
        target = address
        if target is None:
            target = load_account(
                index=account, mnemonic_file=None, keystore=None, password_file=None, chain_id=dep.chain_id
            )[0].address
        if not w3.is_address(target):
            raise ChainError(f"{target!r} is not an Ethereum address")
        return await balances(w3, dep, target)

    b = chain.run(body)
    if json_output:
        echo_json(b)
        return
    typer.echo(
        f"{b['address']}: {b['eth']:g} ETH, {b['eml']:g} EML, "
        f"{b['owed_rewards_eml']:g} EML held by the oracle (rewards and bonds, claimable)"
    )


@app.command("accounts")
@handle_errors
@option_groups
def accounts(
    count: Annotated[int, typer.Option(min=1, max=100, help="How many development accounts.")] = 10,
    *,
    chain: ChainOptions,
    json_output: JsonOption = False,
) -> None:
    """The development accounts of a devnet with their balances (the public development mnemonic)."""
    from ethml.node.miner import DEV_CHAIN_IDS
    from ethml.oracle import balances

    async def body(w3: AsyncWeb3[Any], dep: Deployment) -> list[dict[str, Any]]:
        if dep.chain_id not in DEV_CHAIN_IDS:
            raise ChainError(f"chain {dep.chain_id} is not a devnet: its accounts are not the development mnemonic's")
        return [{"index": i, **await balances(w3, dep, a.address)} for i, a in enumerate(dev_accounts(count))]

    rows = chain.run(body)
    if json_output:
        echo_json(rows)
        return
    typer.echo(f"development mnemonic: {DEV_MNEMONIC}")
    for r in rows:
        typer.echo(f"{r['index']:>3} {r['address']}  {r['eth']:>12g} ETH  {r['eml']:>10g} EML")
