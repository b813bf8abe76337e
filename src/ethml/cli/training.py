"""`ethml task create|show|reveal|finalize`, `ethml stake`, `ethml unstake`, `ethml train`, `ethml
validate`: training tasks from the command line, thin commands over `ethml.training.flow`.

Each command takes the step its account can take now; run again, it takes the next one (a trainer
reveals what it committed, a validator reveals its scores, an unstaking account withdraws). `--wait`
waits for a window instead of asking the user to time it: deadlines are wall-clock time on every
chain, an idle devnet included."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ethml.cli._common import ChainOptions, JsonOption, echo_json, handle_errors
from ethml.cli._compute import ComputeOptions, compute_for
from ethml.cli._config import ConfigError, load_account
from ethml.cli._options import OptionGroup, option_groups
from ethml.paths import data_home

if TYPE_CHECKING:
    from web3 import AsyncWeb3

    from ethml.chain.deploy import Deployment
    from ethml.ipfs import IpfsClient

app = typer.Typer(rich_markup_mode=None)
task_app = typer.Typer(
    help="Training tasks: `create`, `show ID`, `reveal ID`, `finalize ID`.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(task_app, name="task")

#: The requester's default account in the README's walkthrough (0-4 mine, 5 trains, 6-8 validate).
REQUESTER_DEFAULT = 9
RequesterAccount = Annotated[
    int, typer.Option("--account", "--mnemonic-index", min=0, help="The requester's account index (default 9).")
]
StakerAccount = Annotated[
    int | None,
    typer.Option(
        "--account",
        "--mnemonic-index",
        min=0,
        help="Account index (required: no default, so a miner's account is never used by accident).",
    ),
]
Gateways = Annotated[
    list[str] | None,
    typer.Option("--gateway", metavar="URL", help="IPFS gateway (repeatable).", envvar="ETHML_GATEWAYS"),
]
Role = Annotated[str, typer.Option(help="trainer or validator.")]
Wait = Annotated[bool, typer.Option("--wait", help="Wait for the window instead of failing before it opens.")]


def _home(data_dir: Path | None) -> Path:
    return data_dir or data_home()


def _ipfs(data_dir: Path | None, gateways: list[str] | None) -> IpfsClient:
    from ethml.ipfs import Blockstore, IpfsClient, IpfsConfig

    return IpfsClient(Blockstore(_home(data_dir) / "blocks"), IpfsConfig(gateways=gateways or []))


def _signer(index: int, dep: Deployment) -> Any:
    return load_account(index=index, mnemonic_file=None, keystore=None, password_file=None, chain_id=dep.chain_id)[0]


def _required(account: int | None, command: str) -> int:
    if account is None:
        raise ConfigError(
            f"`ethml {command}` needs --account N, the account that acts and holds the stake (no default: the "
            "README's walkthrough mines with 0-4, trains with 5, validates with 6 and requests with 9)"
        )
    return account


def _role(role: str) -> str:
    if role not in ("trainer", "validator"):
        raise typer.BadParameter("--role must be trainer or validator")
    return role


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _at(ts: int) -> str:
    from ethml.chain.reverts import duration, local_time

    gap = ts - int(time.time())
    return f"{local_time(ts)} (in {duration(gap)})" if gap > 0 else local_time(ts)


def _read(path: Path) -> bytes:
    from ethml.training.flow import TaskError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise TaskError(f"cannot read {path}: {exc.strerror}") from None


@task_app.command("create")
@handle_errors
@option_groups
def create(
    spec: Annotated[Path, typer.Option(help="Task spec (JSON, see docs/training.md).")],
    reward: Annotated[str, typer.Option(help="Reward in EML, escrowed.")],
    dataset: Annotated[Path | None, typer.Option(help="Training CSV (header, target column).")] = None,
    test_set: Annotated[Path | None, typer.Option(help="Hidden test CSV (same columns).")] = None,
    sklearn: Annotated[
        str | None,
        typer.Option(help="Instead of --dataset/--test-set: split a data set scikit-learn ships (wine, ...)."),
    ] = None,
    validations: Annotated[
        int, typer.Option(min=1, max=9, help="Validators drawn for the panel (odd: 1, 3, 5, 7 or 9).")
    ] = 3,
    min_score: Annotated[float, typer.Option(min=0.0, max=1.0, help="Score a model needs to pass (0..1).")] = 0.8,
    submit_hours: Annotated[
        float, typer.Option(min=0.0, max=8760.0, help="Hours trainers have to commit, from the task's creation.")
    ] = 24.0,
    score_hours: Annotated[
        float, typer.Option(min=0.0, max=8760.0, help="Hours each drawn validator has to commit its scores.")
    ] = 24.0,
    account: RequesterAccount = REQUESTER_DEFAULT,
    *,
    chain: ChainOptions,
    json_output: JsonOption = False,
) -> None:
    """Post a training task: the spec, dataset and test set go to the blockstore by CID, the test set
    stays hidden behind a commitment until `ethml task reveal`, the reward is escrowed. The windows
    start when the task is created (wall-clock time on every chain)."""
    from ethml.requester import parse_tip
    from ethml.training import parse_spec, sklearn_dataset_csv, split_csv
    from ethml.training.flow import create_task

    if validations % 2 == 0:
        raise typer.BadParameter("--validations must be odd (1, 3, 5, 7 or 9): a panel decides by clear majority")
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
            _ipfs(chain.data_dir, None),
            _home(chain.data_dir),
            spec=task_spec,
            dataset=public,
            test_set=hidden,
            reward=wei,
            validations=validations,
            min_score=round(min_score * 1_000_000),
            submit_seconds=round(submit_hours * 3600),
            score_seconds=round(score_hours * 3600),
        )

    created = chain.run(body)
    if json_output:
        echo_json(
            {
                "task": created.task_id,
                "spec_cid": created.spec_cid,
                "dataset_cid": created.dataset_cid,
                "submit_deadline": created.submit_deadline,
                "reveal_deadline": created.reveal_deadline,
                "test_deadline": created.test_deadline,
            }
        )
        return
    t = created.task_id
    typer.echo(f"task {t}: spec {created.spec_cid}, dataset {created.dataset_cid}")
    typer.echo(f"  trainers commit until {_at(created.submit_deadline)}, reveal until {_at(created.reveal_deadline)}")
    typer.echo(
        f"  test set kept hidden in {created.secret_file}; reveal it from {_at(created.reveal_deadline + 1)} until "
        f"{_at(created.test_deadline)}: `ethml task reveal {t} --wait`"
    )


@task_app.command("show")
@handle_errors
@option_groups
def show(
    task_id: Annotated[int, typer.Argument(min=1)],
    chain: ChainOptions,
    json_output: JsonOption = False,
) -> None:
    """A task: status and what it waits for next, files, deadlines, submissions (committed, revealed,
    scored, bonds), the drawn panel and its votes, the model id."""
    from ethml.training.flow import describe, task_info

    info = chain.run(lambda w3, dep: task_info(w3, dep, task_id))
    if json_output:
        echo_json(info)
        return
    for line in describe(info):
        typer.echo(line)


@task_app.command("reveal")
@handle_errors
@option_groups
def reveal(
    task_id: Annotated[int, typer.Argument(min=1)],
    wait: Wait = False,
    account: RequesterAccount = REQUESTER_DEFAULT,
    *,
    chain: ChainOptions,
) -> None:
    """Reveal the hidden test set in the contract's window (after the trainers have revealed, until the
    test deadline; --wait waits for it to open). The validators are drawn a few blocks later."""
    from ethml.training.flow import reveal_test_set

    cid = chain.run(
        lambda w3, dep: reveal_test_set(
            w3, dep, _signer(account, dep), task_id, _home(chain.data_dir), wait=wait, progress=_say
        ),
    )
    typer.echo(f"task {task_id}: test set {cid} revealed; validators are drawn once the draw's block is mined")


@task_app.command("finalize")
@handle_errors
@option_groups
def finalize(
    task_id: Annotated[int, typer.Argument(min=1)],
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Wait until it can be settled (drawing the panel or replacing no-shows when due)."),
    ] = False,
    account: RequesterAccount = REQUESTER_DEFAULT,
    *,
    chain: ChainOptions,
    json_output: JsonOption = False,
) -> None:
    """Settle a task (anyone may): pay the best passing model's trainer and register the model for the
    miners, or refund, or pay the trainers when the test set was never revealed or is unusable."""
    from ethml.training.flow import finalize_task

    info = chain.run(
        lambda w3, dep: finalize_task(w3, dep, _signer(account, dep), task_id, wait=wait, progress=_say),
    )
    if json_output:
        echo_json(info)
        return
    model = f", model id {info['model_id']}" if info["model_id"] else ""
    if info["status"] == "accepted" and not info["model_id"]:
        model = f", registration {info['registration']}"
    typer.echo(f"task {task_id}: {info['status']}{model}")


@app.command("stake")
@handle_errors
@option_groups
def stake_command(
    role: Role,
    amount: Annotated[str, typer.Option(help="EML to stake.")],
    account: StakerAccount = None,
    *,
    chain: ChainOptions,
) -> None:
    """Stake EML to act as a trainer or a validator (a validator enters the draw; staking again cancels
    a pending unstake)."""
    from ethml.requester import parse_tip
    from ethml.training.flow import stake

    index = _required(account, "stake")
    wei = parse_tip(amount)
    chain.run(lambda w3, dep: stake(w3, dep, _signer(index, dep), _role(role), wei))
    typer.echo(f"staked {amount} EML as {role}")


@app.command("unstake")
@handle_errors
@option_groups
def unstake_command(
    role: Role,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the unstake delay, then withdraw.")] = False,
    account: StakerAccount = None,
    *,
    chain: ChainOptions,
) -> None:
    """Leave a role: the first run asks to unstake (the stake stops counting for new work at once, a
    validator leaves the draw); once the unstake delay has passed and its open work is settled, the
    next run (or this one with --wait) pays the stake back."""
    from ethml.chain.deploy import EML
    from ethml.training import clock
    from ethml.training.flow import TaskError, request_unstake, stake_info, withdraw_stake

    index = _required(account, "unstake")

    async def body(w3: AsyncWeb3[Any], dep: Deployment) -> str:
        signer = _signer(index, dep)
        info = await stake_info(w3, dep, signer.address, _role(role))
        if info["amount"] == 0:
            raise TaskError(f"account {signer.address} has no {role} stake")
        if info["unlock_at"] == 0:
            unlock = await request_unstake(w3, dep, signer, role)
            if not wait:
                return (
                    f"unstaking {info['amount'] / EML:g} EML as {role}: it can be withdrawn from {_at(unlock)}"
                    + (f" once its {info['open_work']} open tasks settle" if info["open_work"] else "")
                    + f" (`ethml unstake --role {role} --account {index}` again, or --wait)"
                )
            info = await stake_info(w3, dep, signer.address, role)
        if wait:
            await clock.wait_past(w3, info["unlock_at"] - 1, f"the {role} stake's unlock", _say, signer)
        amount = await withdraw_stake(w3, dep, signer, role)
        return f"withdrew {amount / EML:g} EML of {role} stake"

    typer.echo(chain.run(body))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _JobOptions(OptionGroup):
    """What `train` and `validate` take: the same options, but for what their --wait waits for."""

    task: Annotated[int, typer.Option(min=1, help="Task id.")]
    account: StakerAccount = None
    wait: bool = False
    gateway: Gateways = None
    chain: ChainOptions
    json_output: JsonOption = False
    jobs: ComputeOptions

    def run(
        self,
        command: str,
        job: Callable[..., Awaitable[dict[str, Any]]],
        report: Callable[[int, int, dict[str, Any]], None],
    ) -> None:
        """Run `job` (train_and_submit or validate_task) for the --account on its compute, then print its
        result: as JSON with --json, else by `report(task, account, result)`."""
        index = _required(self.account, command)
        data_dir = self.chain.data_dir
        with compute_for(self.jobs) as (compute, _size):

            async def body(w3: AsyncWeb3[Any], dep: Deployment) -> dict[str, Any]:
                signer, ipfs = _signer(index, dep), _ipfs(data_dir, self.gateway)
                return await job(
                    w3,
                    dep,
                    signer,
                    ipfs,
                    self.task,
                    data_dir=_home(data_dir),
                    compute=compute,
                    wait=self.wait,
                    progress=_say,
                )

            result = self.chain.run(body)
        if self.json_output:
            echo_json(result)
            return
        report(self.task, index, result)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainOptions(_JobOptions):
    wait: Annotated[
        bool, typer.Option("--wait", help="After committing, wait for the submission window to close and reveal.")
    ] = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class ValidateOptions(_JobOptions):
    wait: Annotated[
        bool, typer.Option("--wait", help="After committing, wait until the scores can be revealed and reveal them.")
    ] = False


@app.command("train")
@handle_errors
@option_groups
def train(job: TrainOptions) -> None:
    """Train the task's model (in a child process with the spec's time limit; a forest's trees on a
    Dask cluster with --dask) and commit to it, after checking that the task would take a submission
    from this account and that the artifact was not revealed in another task first (it would never be
    paid); then reveal it once the submission window has closed (--wait waits for that;
    otherwise run the same command again then: a committed task is not trained again)."""
    from ethml.training.flow import train_and_submit

    job.run("train", train_and_submit, _report_training)


def _report_training(task: int, index: int, result: dict[str, Any]) -> None:
    claim = f"{result['model_cid']} claiming {result['claimed'] / 1e6:.6f}"
    if result["revealed"]:
        typer.echo(f"task {task}: submitted {claim} (committed and revealed)")
    else:
        typer.echo(
            f"task {task}: committed to {claim}; reveal it from {_at(result['reveal_opens'])} until "
            f"{_at(result['reveal_closes'])}: `ethml train --task {task} --account {index}` again, or --wait"
        )


@app.command("validate")
@handle_errors
@option_groups
def validate(job: ValidateOptions) -> None:
    """Vote on a task this account was drawn for: draw the panel if the draw is due, score every
    submission on the revealed test set (in parallel on a Dask cluster with --dask; 0 for an artifact
    that fails its checks: not the spec's estimator, predictions other than this validator's own re-fit
    of the spec, kept in the data dir, or a claim further than the task's claimSlack from its holdout
    score), and commit the vote; the scores are revealed once every seat has committed
    (at once if this was the last; --wait waits for it; otherwise run the same command again then).
    A test set that cannot be used is reported unusable, with each artifact's score on the dataset's
    holdout; on a task whose test set was never revealed, this fixes the draw of the panel that checks
    the submissions on the holdout (after the test deadline) and, if drawn, votes holdout scores. A
    validator drawn several times holds several seats and votes once for all of them."""
    from ethml.training.flow import validate_task

    job.run("validate", validate_task, _report_vote)


def _report_vote(task: int, index: int, vote: dict[str, Any]) -> None:
    if vote["unusable"]:
        why = vote.get("holdout") or "the test set is unusable"
        typer.echo(f"task {task}, seat {vote['seat']}: {why}; the scores below are on the dataset's holdout")
    for i, (score, why) in enumerate(zip(vote["scores"], vote["reasons"], strict=False)):
        typer.echo(f"submission {i}: {score / 1e6:.6f}" + (f" ({why})" if why else ""))
    if vote["revealed"]:
        typer.echo(f"task {task}, seat {vote['seat']}: scores committed and revealed")
    else:
        typer.echo(
            f"task {task}, seat {vote['seat']}: scores committed; they are revealed once every drawn validator "
            f"has committed: `ethml validate --task {task} --account {index}` again, or --wait"
        )
