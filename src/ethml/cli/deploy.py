"""`ethml deploy`: the whole system onto any chain, from an RPC URL and a funded key, resumable."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ethml.cli._common import DEFAULT_RPC, DataDirOption, JsonOption, RpcOption, connect, echo_json, handle_errors
from ethml.cli._config import ConfigError
from ethml.cli._options import option_groups
from ethml.cli._signer import SignerOptions

if TYPE_CHECKING:
    from ethml.chain.deploy import Deployment
    from ethml.chain.steps import StepEvent
    from ethml.rollout import Plan, Rollout, RolloutSettings

app = typer.Typer(rich_markup_mode=None)


@app.command("deploy")
@handle_errors
@option_groups
def deploy(
    rpc: RpcOption = DEFAULT_RPC,
    *,
    key: SignerOptions,
    timelock_delay: Annotated[
        int | None,
        typer.Option(
            min=0,
            metavar="SECONDS",
            help=(
                "Hand every admin role to an EthMLTimelock with this delay (default on a public chain: 172800, two "
                "days; on a development chain: no timelock). 0 is allowed: changes still go through the timelock "
                "but wait for nothing."
            ),
        ),
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            "--models",
            metavar="DIR",
            help="Manifest directory whose models are registered (default: the bundled models).",
            envvar="ETHML_MODELS_DIR",
        ),
    ] = None,
    no_models: Annotated[bool, typer.Option("--no-models", help="Register no model.")] = False,
    supply: Annotated[str, typer.Option(metavar="EML", help="EML minted to the deployer.")] = "1000000",
    mint: Annotated[
        list[str] | None, typer.Option(metavar="ADDRESS=EML", help="Also mint EML to ADDRESS (repeatable).")
    ] = None,
    difficulty: Annotated[
        int | None, typer.Option(min=1, help="Starting (and lowest) proof-of-work difficulty (default: 65536).")
    ] = None,
    max_difficulty: Annotated[
        int | None, typer.Option(min=1, help="Highest difficulty the retarget may reach (default: 2^40).")
    ] = None,
    requests_per_round: Annotated[
        int | None, typer.Option(min=1, max=16, help="K: the most requests a round opens with (default: 8).")
    ] = None,
    priority_fee: Annotated[
        float,
        typer.Option(min=0, metavar="GWEI", help="Priority fee (tip) per gas; the fee cap is 2 x base fee + tip."),
    ] = 1.0,
    replace_after: Annotated[
        float,
        typer.Option(min=1, metavar="SECONDS", help="Re-price a transaction still pending after this long."),
    ] = 180.0,
    data_dir: DataDirOption = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Deploy without asking (needed when not on a terminal).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan and its cost, check the balance; send nothing.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Deploy even though the chain has a deployment file (kept as .bak).")
    ] = False,
    restart: Annotated[
        bool, typer.Option("--restart", help="Abandon an unfinished deployment's journal and start afresh.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Deploy ethml onto any chain: token, registry, oracle, example consumer, training market, the models,
    and (on a public chain) a timelock holding every admin role.

    Every transaction is written to a journal (DATA_DIR/deployments/CHAIN_ID.journal.json) before it is
    sent: if the command is killed or a transaction is lost, run it again with the same options and it
    continues where it stopped, never deploying a contract twice. The deployment file is written at the
    end where `ethml mine`, `request` and `serve` find it by chain id.
    """
    import asyncio

    from ethml.node.miner import DEV_CHAIN_IDS
    from ethml.rollout import DEFAULT_TIMELOCK_DELAY, Rollout

    if not (yes or dry_run) and not sys.stdin.isatty():
        raise ConfigError("stdin is not a terminal, so there is nobody to confirm the deployment: pass --yes")
    say = _say

    async def run() -> None:
        w3, chain_id = await connect(rpc)
        try:
            signer, source = key.load(chain_id=chain_id, purpose="the deployer's key")
            dev = chain_id in DEV_CHAIN_IDS
            delay = timelock_delay if timelock_delay is not None else (None if dev else DEFAULT_TIMELOCK_DELAY)
            settings = _settings(signer.address, delay, models_dir, no_models, supply, mint or [], difficulty,
                                 max_difficulty, requests_per_round)  # fmt: skip
            rollout = Rollout(
                w3,
                signer,
                settings,
                chain_id=chain_id,
                data_dir=data_dir,
                overwrite=overwrite,
                restart=restart,
                priority_gwei=priority_fee,
                replace_after=replace_after,
            )
            plan = await rollout.prepare()
            say(f"deploying ethml to chain {chain_id} at {rpc} from {signer.address} ({source})")
            try:
                _show_plan(say, rollout, plan, settings, dev)
                if dry_run:
                    say("dry run: nothing sent")
                    return
                if not yes and not typer.confirm("deploy?", default=False, err=True):
                    raise ConfigError("not confirmed; nothing sent")
                deployment = await _run(rollout, _progress(say, len(plan.steps)))
            finally:
                rollout.close()
            await _report(w3, rollout, deployment, json_output, rpc)
        finally:
            await w3.provider.disconnect()  # type: ignore[attr-defined]

    asyncio.run(run())


async def _run(rollout: Rollout, progress: Any) -> Deployment:
    """The deployment; an error on the way says how to continue (the journal keeps what was sent)."""
    from ethml.errors import DeploymentError, EthmlError

    try:
        return await rollout.run(progress)
    except (EthmlError, OSError, TimeoutError) as exc:
        done = len(rollout.journal.done_keys()) if rollout.journal is not None else 0
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and not isinstance(exc, EthmlError):
            reason = f"the RPC stopped answering ({type(exc).__name__}: {reason})"
        raise DeploymentError(
            f"{reason}; stopped with {done} steps done: run the same command again to continue "
            f"(the journal {rollout.journal_path} keeps every transaction sent)"
        ) from exc


def _say(message: str) -> None:
    """Progress goes to stderr; stdout keeps the result (the JSON alone with --json)."""
    typer.echo(message, err=True)


def _settings(
    deployer: str,
    delay: int | None,
    models_dir: Path | None,
    no_models: bool,
    supply: str,
    mint: list[str],
    difficulty: int | None,
    max_difficulty: int | None,
    requests_per_round: int | None,
) -> RolloutSettings:
    from dataclasses import replace

    from ethml.chain.deploy import Parameters
    from ethml.ml import Manifest
    from ethml.rollout import RolloutSettings

    holders: dict[str, int] = {}
    if (amount := parse_eml(supply, "--supply")) > 0:
        holders[deployer] = amount
    for item in mint:
        address, eml = _mint(item)
        holders[address] = holders.get(address, 0) + eml
    params = Parameters()
    if difficulty is not None:
        params = replace(params, min_difficulty=difficulty, max_difficulty=max(difficulty, params.max_difficulty))
    if max_difficulty is not None:
        if max_difficulty < params.min_difficulty:
            raise ConfigError(f"--max-difficulty {max_difficulty} is below the difficulty {params.min_difficulty}")
        params = replace(params, max_difficulty=max_difficulty)
    if requests_per_round is not None:
        params = replace(params, requests_per_round=requests_per_round)
    models = [] if no_models else Manifest.load(models_dir).registry_specs()
    return RolloutSettings(holders=holders, parameters=params, models=models, timelock_delay=delay)


def parse_eml(text: str, option: str) -> int:
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(text.strip().replace("_", "").replace(",", ""))
    except InvalidOperation:
        raise ConfigError(f"{option} {text!r} is not a number of EML") from None
    wei = value * 10**18
    if not value.is_finite() or value < 0 or wei != wei.to_integral_value():
        raise ConfigError(f"{option} {text!r} is not an amount of EML (0 or more, at most 18 decimals)")
    return int(wei)


def _mint(item: str) -> tuple[str, int]:
    from eth_utils.address import is_address, to_checksum_address

    address, sep, amount = item.partition("=")
    if not sep or not is_address(address.strip()):
        raise ConfigError(f"--mint {item!r} is not ADDRESS=EML (for example --mint 0xAb...cD=1000)")
    return to_checksum_address(address.strip()), parse_eml(amount, "--mint")


def _show_plan(say: Any, rollout: Rollout, plan: Plan, settings: RolloutSettings, dev: bool) -> None:
    from ethml.chain.reverts import duration
    from ethml.rollout import eth, gwei

    delay = settings.timelock_delay
    if delay is None:
        say("admin:  the deployer's key (a development chain; --timelock-delay SECONDS puts a timelock in charge)")
    elif delay == 0:
        say("admin:  an EthMLTimelock with NO delay: every change still goes through its schedule and execute,")
        say("        but takes effect at once; nobody gets time to see it coming (--timelock-delay SECONDS)")
    else:
        say(f"admin:  an EthMLTimelock with a {duration(delay)} delay ({delay:,} s) takes every admin role;")
        say("        the deployer proposes and executes, and every parameter change or new model waits out the delay")
    names = ", ".join(m.name for m in settings.models) or "none"
    say(f"models: {names}")
    minted = ", ".join(f"{amount / 10**18:,.18g} EML to {a}" for a, amount in settings.holders.items()) or "none"
    say(f"EML:    {minted}")
    if rollout.resumed:
        say(
            f"resuming the unfinished deployment in {rollout.journal_path}: "
            f"{len(plan.steps) - len(plan.remaining)} of {len(plan.steps)} steps done"
        )
    say(
        f"cost:   {len(plan.remaining)} transactions, {plan.gas:,} gas: about {eth(plan.expected_cost)} at today's "
        f"fees (base fee {gwei(plan.base_fee)} + tip {gwei(plan.tip)}), at most {eth(plan.max_cost)}; "
        f"the account holds {eth(plan.balance)}"
    )
    if not dev:
        say("        (on a rollup, its L1 data fee comes on top of the gas)")


def _progress(say: Any, total: int) -> Any:
    width = len(str(total))

    def show(event: StepEvent) -> None:
        head = f"[{event.index:>{width}}/{total}] {event.what}"
        if event.state == "sent":
            say(f"{head}: sent {event.tx} (nonce {event.nonce})")
        elif event.state == "mined":
            where = f"at {event.address} " if event.address else ""
            say(f"{head}: {where}in block {event.block} ({event.gas_used or 0:,} gas)")
        elif event.state == "done-before":
            say(f"{head}: done in an earlier run ({event.address or event.tx})")
        elif event.state == "rebroadcast":
            say(f"{head}: the node had lost {event.tx}; sent it again")
        elif event.state == "replaced":
            say(f"{head}: still pending; replaced by {event.tx} with higher fees (nonce {event.nonce})")
        elif event.state == "resigned":
            say(f"{head}: nonce {event.nonce} went to another transaction; signing again")

    return show


async def _report(w3: Any, rollout: Rollout, dep: Deployment, json_output: bool, rpc: str) -> None:
    from dataclasses import asdict

    from ethml.chain.verify import verify_deployment

    checks = await verify_deployment(w3, dep)
    if json_output:
        echo_json(
            {
                **asdict(dep),
                "deployment_file": str(rollout.path),
                "transactions_file": str(rollout.record_path),
                "checks": [{"what": c.what, "ok": c.ok} for c in checks],
            }
        )
    else:
        typer.echo(f"deployed ethml on chain {dep.chain_id} (from block {dep.block}):")
        rows = [("EthML (oracle)", dep.ethml), ("EMLToken", dep.token), ("ModelRegistry", dep.registry)]
        rows += [("ExampleConsumer", dep.consumer), ("TrainingTasks", dep.training or "-")]
        if dep.timelock:
            rows.append(("EthMLTimelock", dep.timelock))
        for name, address in rows:
            typer.echo(f"  {name:<16} {address}")
        if dep.models:
            typer.echo("  models           " + ", ".join(f"{n} (id {i})" for n, i in dep.models.items()))
        typer.echo(f"deployment file: {rollout.path}")
        typer.echo(f"transactions:    {rollout.record_path}")
        for c in checks:
            typer.echo(f"  {'ok  ' if c.ok else 'FAIL'} {c.what}" + (f" ({c.detail})" if c.detail and not c.ok else ""))
        typer.echo(f"next: miners run `ethml mine --rpc-url {rpc} --keystore FILE` (ETH for gas, EML for bonds)")
    if not all(c.ok for c in checks):
        from ethml.errors import DeploymentError

        raise DeploymentError("the deployment does not check out: see the FAIL lines above")
