"""`ethml task create|show|reveal|finalize`, `ethml stake`, `ethml train`, `ethml validate`: training
tasks from the command line, thin commands over `ethml.training.flow`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ethml.cli._common import (
    DEFAULT_RPC,
    DataDirOption,
    DeploymentOption,
    JsonOption,
    RpcOption,
    echo_json,
    handle_errors,
    with_chain,
)
from ethml.cli._compute import (
    DEFAULT_MAX_DATASET_MB,
    DEFAULT_MAX_ROWS,
    DEFAULT_MAX_TRAIN_SECONDS,
    DaskOption,
    DaskTimeoutOption,
    MaxDatasetOption,
    MaxRowsOption,
    MaxSecondsOption,
    compute_for,
)
from ethml.cli._config import load_account
from ethml.paths import data_home

if TYPE_CHECKING:
    from web3 import AsyncWeb3

    from ethml.chain.deploy import Deployment
    from ethml.ipfs import IpfsClient

T = TypeVar("T")

app = typer.Typer(rich_markup_mode=None)
task_app = typer.Typer(
    help="Training tasks: `create`, `show ID`, `reveal ID`, `finalize ID`.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(task_app, name="task")

Account = Annotated[int, typer.Option("--account", "--mnemonic-index", min=0, help="Account index.")]
Gateways = Annotated[
    list[str] | None,
    typer.Option("--gateway", metavar="URL", help="IPFS gateway (repeatable).", envvar="ETHML_GATEWAYS"),
]


def _home(data_dir: Path | None) -> Path:
    return data_dir or data_home()


def _ipfs(data_dir: Path | None, gateways: list[str] | None) -> IpfsClient:
    from ethml.ipfs import Blockstore, IpfsClient, IpfsConfig

    return IpfsClient(Blockstore(_home(data_dir) / "blocks"), IpfsConfig(gateways=gateways or []))


def _signer(index: int, dep: Deployment) -> Any:
    return load_account(index=index, mnemonic_file=None, keystore=None, password_file=None, chain_id=dep.chain_id)[0]


def _job(
    fn: Callable[..., Awaitable[T]],
    account: int,
    data_dir: Path | None,
    gateways: list[str] | None,
    task: int,
    compute: Any,
) -> Callable[[AsyncWeb3[Any], Deployment], Awaitable[T]]:
    """A trainer's or validator's job on `task`, signed by `account`, files through the blockstore,
    run on `compute` (this machine or a Dask cluster)."""
    return lambda w3, dep: fn(w3, dep, _signer(account, dep), _ipfs(data_dir, gateways), task, compute=compute)


def _read(path: Path) -> bytes:
    from ethml.training.flow import TaskError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise TaskError(f"cannot read {path}: {exc.strerror}") from None


@task_app.command("create")
@handle_errors
def create(
    spec: Annotated[Path, typer.Option(help="Task spec (JSON, see docs/training.md).")],
    reward: Annotated[str, typer.Option(help="Reward in EML, escrowed.")],
    dataset: Annotated[Path | None, typer.Option(help="Training CSV (header, target column).")] = None,
    test_set: Annotated[Path | None, typer.Option(help="Hidden test CSV (same columns).")] = None,
    sklearn: Annotated[
        str | None,
        typer.Option(help="Instead of --dataset/--test-set: split a data set scikit-learn ships (wine, ...)."),
    ] = None,
    validations: Annotated[int, typer.Option(min=1, max=9, help="Validations each submission needs.")] = 3,
    min_score: Annotated[float, typer.Option(min=0.0, max=1.0, help="Median score to pass (0..1).")] = 0.8,
    submit_hours: Annotated[float, typer.Option(min=0.001, help="Hours for submissions.")] = 24.0,
    validation_hours: Annotated[float, typer.Option(min=0.001, help="Hours for validation after that.")] = 24.0,
    account: Account = 9,
    rpc: RpcOption = DEFAULT_RPC,
    deployment: DeploymentOption = None,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Post a training task: the spec, dataset and test set go to the blockstore by CID, the test set
    stays hidden behind a commitment until `ethml task reveal`, the reward is escrowed."""
    from ethml.requester import parse_tip
    from ethml.training import parse_spec, sklearn_dataset_csv, split_csv
    from ethml.training.flow import create_task

    task_spec = parse_spec(_read(spec))
    if sklearn is not None:
        if dataset or test_set:
            raise typer.BadParameter("give --sklearn NAME or --dataset and --test-set, not both")
        public, hidden = split_csv(sklearn_dataset_csv(sklearn), 0.3, seed=0)
    elif dataset and test_set:
        public, hidden = _read(dataset), _read(test_set)
    else:
        raise typer.BadParameter("give --dataset FILE and --test-set FILE (or --sklearn NAME)")
    wei = parse_tip(reward)

    async def body(w3: AsyncWeb3[Any], dep: Deployment) -> Any:
        return await create_task(
            w3,
            dep,
            _signer(account, dep),
            _ipfs(data_dir, None),
            _home(data_dir),
            spec=task_spec,
            dataset=public,
            test_set=hidden,
            reward=wei,
            validations=validations,
            min_score=round(min_score * 1_000_000),
            submit_seconds=round(submit_hours * 3600),
            validation_seconds=round(validation_hours * 3600),
        )

    created = with_chain(rpc, deployment, data_dir, body)
    if json_output:
        echo_json({"task": created.task_id, "spec_cid": created.spec_cid, "dataset_cid": created.dataset_cid})
    else:
        typer.echo(f"task {created.task_id}: spec {created.spec_cid}, dataset {created.dataset_cid}")
        typer.echo(
            f"test set kept hidden; its secret is in {created.secret_file} (ethml task reveal {created.task_id})"
        )


@task_app.command("show")
@handle_errors
def show(
    task_id: Annotated[int, typer.Argument(min=1)],
    rpc: RpcOption = DEFAULT_RPC,
    deployment: DeploymentOption = None,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """A task: status, files, deadlines, submissions with their votes and medians, the model id."""
    from ethml.training.flow import task_info

    info = with_chain(rpc, deployment, data_dir, lambda w3, dep: task_info(w3, dep, task_id))
    if json_output:
        echo_json(info)
        return
    typer.echo(f"task {task_id}: {info['status']}, escrow {info['escrow_eml']:g} EML, model id {info['model_id']}")
    typer.echo(f"  dataset {info['dataset_cid']}, spec {info['spec_cid']}, test set {info['test_cid'] or 'hidden'}")
    for s in info["submissions"]:
        typer.echo(
            f"  submission {s['id']} by {s['trainer']}: claimed {s['claimed']}, votes {s['votes']}, "
            f"median {s['median']}"
        )


@task_app.command("reveal")
@handle_errors
def reveal(
    task_id: Annotated[int, typer.Argument(min=1)],
    account: Account = 9,
    rpc: RpcOption = DEFAULT_RPC,
    deployment: DeploymentOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Reveal the hidden test set (after the submission deadline) so validators can score."""
    from ethml.training.flow import reveal_test_set

    cid = with_chain(
        rpc,
        deployment,
        data_dir,
        lambda w3, dep: reveal_test_set(w3, dep, _signer(account, dep), task_id, _home(data_dir)),
    )
    typer.echo(f"task {task_id}: test set {cid} revealed")


@task_app.command("finalize")
@handle_errors
def finalize(
    task_id: Annotated[int, typer.Argument(min=1)],
    account: Account = 9,
    rpc: RpcOption = DEFAULT_RPC,
    deployment: DeploymentOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Settle a task: accept the best passing model (registered for the miners) or refund."""
    from ethml.training.flow import finalize_task

    info = with_chain(rpc, deployment, data_dir, lambda w3, dep: finalize_task(w3, dep, _signer(account, dep), task_id))
    typer.echo(f"task {task_id}: {info['status']}" + (f", model id {info['model_id']}" if info["model_id"] else ""))


@app.command("stake")
@handle_errors
def stake_command(
    role: Annotated[str, typer.Option(help="trainer or validator.")],
    amount: Annotated[str, typer.Option(help="EML to stake.")],
    account: Account = 0,
    rpc: RpcOption = DEFAULT_RPC,
    deployment: DeploymentOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Stake EML to act as a trainer or a validator."""
    from ethml.requester import parse_tip
    from ethml.training.flow import stake

    if role not in ("trainer", "validator"):
        raise typer.BadParameter("--role must be trainer or validator")
    wei = parse_tip(amount)
    with_chain(rpc, deployment, data_dir, lambda w3, dep: stake(w3, dep, _signer(account, dep), role, wei))
    typer.echo(f"staked {amount} EML as {role}")


@app.command("train")
@handle_errors
def train(
    task: Annotated[int, typer.Option(min=1, help="Task id.")],
    account: Account = 0,
    gateway: Gateways = None,
    rpc: RpcOption = DEFAULT_RPC,
    deployment: DeploymentOption = None,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    dask: DaskOption = None,
    dask_timeout: DaskTimeoutOption = 10.0,
    max_rows: MaxRowsOption = DEFAULT_MAX_ROWS,
    max_dataset_mb: MaxDatasetOption = DEFAULT_MAX_DATASET_MB,
    max_train_seconds: MaxSecondsOption = DEFAULT_MAX_TRAIN_SECONDS,
) -> None:
    """Train the task's model (in a child process with the spec's time limit; a forest's trees on a
    Dask cluster with --dask) and submit it."""
    from ethml.training.flow import train_and_submit

    with compute_for(dask, dask_timeout, max_rows, max_dataset_mb, max_train_seconds) as (compute, _size):
        result = with_chain(
            rpc, deployment, data_dir, _job(train_and_submit, account, data_dir, gateway, task, compute)
        )
    if json_output:
        echo_json(result)
    else:
        typer.echo(f"task {task}: submitted {result['model_cid']} claiming {result['claimed'] / 1e6:.6f}")


@app.command("validate")
@handle_errors
def validate(
    task: Annotated[int, typer.Option(min=1, help="Task id.")],
    account: Account = 0,
    gateway: Gateways = None,
    rpc: RpcOption = DEFAULT_RPC,
    deployment: DeploymentOption = None,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    dask: DaskOption = None,
    dask_timeout: DaskTimeoutOption = 10.0,
    max_rows: MaxRowsOption = DEFAULT_MAX_ROWS,
    max_dataset_mb: MaxDatasetOption = DEFAULT_MAX_DATASET_MB,
    max_train_seconds: MaxSecondsOption = DEFAULT_MAX_TRAIN_SECONDS,
) -> None:
    """Score every submission of the task on the revealed test set (in parallel on a Dask cluster with
    --dask) and vote (skipping the ones this account may not vote on, and saying why)."""
    from ethml.training.flow import TaskError, validate_task

    refused: list[str] = []
    with compute_for(dask, dask_timeout, max_rows, max_dataset_mb, max_train_seconds) as (compute, _size):

        async def body(w3: AsyncWeb3[Any], dep: Deployment) -> list[dict[str, Any]]:
            signer, ipfs = _signer(account, dep), _ipfs(data_dir, gateway)
            return await validate_task(w3, dep, signer, ipfs, task, refused=refused, compute=compute)

        votes = with_chain(rpc, deployment, data_dir, body)
    if refused and not votes:
        raise TaskError(f"task {task}: nothing to vote on: {'; '.join(refused)}")
    for why in refused:
        typer.echo(f"skipped: {why}", err=True)
    if json_output:
        echo_json(votes)
        return
    for v in votes:
        typer.echo(
            f"submission {v['submission']}: voted {v['score'] / 1e6:.6f}" + (f" ({v['reason']})" if v["reason"] else "")
        )
