"""The training task flow on chain: what `ethml task`, `ethml stake`, `ethml train` and `ethml validate`
do, usable from Python too. Files go through the local blockstore (and gateways) by CID."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.logs import DISCARD

from ethml.chain.deploy import EML, Deployment, token_contract, training_contract
from ethml.chain.reverts import is_revert
from ethml.chain.tx import preflight, revert_reason, send
from ethml.errors import EthmlError, IpfsError, TransactionReverted
from ethml.ipfs import IpfsClient
from ethml.node.miner import DEV_CHAIN_IDS
from ethml.pow import keccak256
from ethml.training.jobs import Assessment, Compute, fit_and_claim, run_limited, score_submissions
from ethml.training.spec import TaskSpec, TrainingLimits, parse_spec

ROLES = {"trainer": 0, "validator": 1}
#: TrainingTasks errors that refuse one vote but not the others: that submission is skipped.
NOT_THIS_VOTE = ("AlreadyVoted", "OwnSubmission", "EnoughVotes")
STATUSES = ("none", "open", "accepted", "failed")
ARTIFACT_LIMIT = 64 * 1024 * 1024


class TaskError(EthmlError, ValueError):
    pass


@dataclass
class CreatedTask:
    task_id: int
    spec_cid: str
    dataset_cid: str
    test_cid: str
    secret_file: Path


def _contract(w3: AsyncWeb3[Any], deployment: Deployment) -> Any:
    if deployment.training is None:
        raise TaskError("this deployment has no TrainingTasks contract (redeploy with a current ethml)")
    return training_contract(w3, deployment.training)


async def _get_task(tasks: Any, task_id: int) -> Any:
    """getTask, with an unknown task said in words (UnknownTask) instead of a raw revert."""
    try:
        return await tasks.functions.getTask(task_id).call()
    except Exception as exc:
        if not is_revert(exc):
            raise
        raise TaskError(revert_reason(exc, tasks.abi)) from None


def commit_test_set(test_cid: str, salt: bytes) -> bytes:
    """keccak256(abi.encode(string testCid, bytes32 salt)), as TrainingTasks.commitmentFor computes it
    (the ABI encoding written out and the native keccak: eth_abi and eth_hash take longer than the hash
    itself, and the coordinator checks one of these per request)."""
    data = test_cid.encode()
    encoded = (64).to_bytes(32, "big") + salt + len(data).to_bytes(32, "big") + data + b"\0" * (-len(data) % 32)
    return keccak256(encoded)


def secret_path(data_dir: Path, chain_id: int, task_id: int) -> Path:
    return data_dir / "tasks" / f"{chain_id}-{task_id}.json"


async def stake(w3: AsyncWeb3[Any], deployment: Deployment, account: LocalAccount, role: str, amount: int) -> None:
    tasks = _contract(w3, deployment)
    await _approve(w3, deployment, account, amount)
    await send(w3, account, tasks.functions.stake(ROLES[role], amount), what=f"staking as {role}")


async def _approve(w3: AsyncWeb3[Any], deployment: Deployment, account: LocalAccount, amount: int) -> None:
    token = token_contract(w3, deployment.token)
    allowance = int(await token.functions.allowance(account.address, deployment.training).call())
    if allowance < amount:
        await send(w3, account, token.functions.approve(deployment.training, amount), what="approving EML")


async def create_task(
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    requester: LocalAccount,
    ipfs: IpfsClient,
    data_dir: Path,
    *,
    spec: TaskSpec,
    dataset: bytes,
    test_set: bytes,
    reward: int,
    validations: int,
    min_score: int,
    submit_seconds: int,
    validation_seconds: int,
) -> CreatedTask:
    """Store spec, dataset and test set by CID, commit to the test set, escrow the reward, create the
    task. The test set's CID and salt are kept in DATA_DIR/tasks for the reveal."""
    spec_cid = str(ipfs.add_bytes(spec.to_json(), 1))
    dataset_cid = str(ipfs.add_bytes(dataset, 1))
    test_cid = str(ipfs.add_bytes(test_set, 1))
    salt = os.urandom(32)
    commitment = commit_test_set(test_cid, salt)
    now = int((await w3.eth.get_block("latest"))["timestamp"])
    tasks = _contract(w3, deployment)
    await _approve(w3, deployment, requester, reward)
    shape = (0 if spec.kind == "classification" else 1, spec.decimals, len(spec.features))
    call = tasks.functions.createTask(
        dataset_cid,
        spec_cid,
        commitment,
        reward,
        validations,
        min_score,
        now + submit_seconds,
        now + submit_seconds + validation_seconds,
        shape,
    )
    receipt = await send(w3, requester, call, what="createTask")
    task_id = int(tasks.events.TaskCreated().process_receipt(receipt, errors=DISCARD)[0]["args"]["taskId"])
    chain_id = int(await w3.eth.chain_id)
    path = secret_path(data_dir, chain_id, task_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"task": task_id, "test_cid": test_cid, "salt": salt.hex()}))
    path.chmod(0o600)
    return CreatedTask(task_id, spec_cid, dataset_cid, test_cid, path)


async def reveal_test_set(
    w3: AsyncWeb3[Any], deployment: Deployment, requester: LocalAccount, task_id: int, data_dir: Path
) -> str:
    path = secret_path(data_dir, int(await w3.eth.chain_id), task_id)
    try:
        secret = json.loads(path.read_text())
    except (OSError, ValueError):
        raise TaskError(
            f"no test-set secret for task {task_id} in {path} (it is written by `ethml task create`)"
        ) from None
    tasks = _contract(w3, deployment)
    await _catch_up_clock(w3)
    await send(
        w3,
        requester,
        tasks.functions.revealTestSet(task_id, secret["test_cid"], bytes.fromhex(secret["salt"])),
        what="revealTestSet",
    )
    return str(secret["test_cid"])


async def _catch_up_clock(w3: AsyncWeb3[Any]) -> None:
    """On a devnet that mines only on demand, the chain's clock stands still between transactions, so
    a deadline that has passed on the wall clock has not passed for the pre-flight: mine an empty block."""
    if int(await w3.eth.chain_id) not in DEV_CHAIN_IDS:
        return
    latest = await w3.eth.get_block("latest")
    if int(latest["timestamp"]) < time.time() - 1:
        with contextlib.suppress(Exception):  # not every devnet has evm_mine; the pre-flight then says why
            await w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


async def task_info(w3: AsyncWeb3[Any], deployment: Deployment, task_id: int) -> dict[str, Any]:
    tasks = _contract(w3, deployment)
    t = await _get_task(tasks, task_id)
    (
        requester,
        escrow,
        submit_deadline,
        validation_deadline,
        min_score,
        validations,
        count,
        status,
        revealed,
        accepted,
        model_id,
        _shape,
        _commitment,
        dataset_cid,
        spec_cid,
        test_cid,
    ) = t
    submissions = []
    for i in range(int(count)):
        trainer, claimed, median, _count, sha, model_cid = await tasks.functions.getSubmission(task_id, i).call()
        scores = [int(v[1]) for v in await tasks.functions.getVotes(task_id, i).call()]
        submissions.append(
            {
                "id": i,
                "trainer": trainer,
                "model_cid": model_cid,
                "sha256": bytes(sha).hex(),
                "claimed": int(claimed),
                "votes": scores,
                "median": int(median),
            }
        )
    return {
        "task": task_id,
        "status": STATUSES[int(status)],
        "requester": requester,
        "escrow_eml": int(escrow) / EML,
        "dataset_cid": dataset_cid,
        "spec_cid": spec_cid,
        "test_cid": test_cid or None,
        "revealed": bool(revealed),
        "min_score": int(min_score),
        "validations_required": int(validations),
        "submit_deadline": int(submit_deadline),
        "validation_deadline": int(validation_deadline),
        "accepted_submission": int(accepted) - 1 if int(accepted) else None,
        "model_id": int(model_id) or None,
        "submissions": submissions,
    }


async def _spec_and_dataset(
    ipfs: IpfsClient, spec_cid: str, dataset_cid: str, limits: TrainingLimits
) -> tuple[TaskSpec, bytes]:
    """The spec (checked against this deployment's limits first) and the dataset, fetched once and
    verified by CID."""
    try:
        spec = parse_spec(await ipfs.cat(spec_cid))
        limits.check(spec)
        return spec, await ipfs.cat(dataset_cid, max_size=limits.max_dataset_bytes)
    except IpfsError as exc:
        raise TaskError(f"cannot fetch the task's files: {exc}") from None


async def train_and_submit(
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    trainer: LocalAccount,
    ipfs: IpfsClient,
    task_id: int,
    *,
    claim: int | None = None,
    compute: Compute | None = None,
) -> dict[str, Any]:
    """Train the task's model (on `compute`'s Dask cluster when it has one), add the skops artifact to
    the blockstore and submit it. `claim` overrides the claimed score (for tests of a dishonest
    trainer)."""
    compute = compute or Compute()
    tasks = _contract(w3, deployment)
    t = await _get_task(tasks, task_id)
    # Would the task take a submission from this trainer now (stake, window, one each)? Asked before the
    # training, which can take minutes; the real submission is checked again before it is sent.
    await preflight(
        w3, tasks.functions.submitModel(task_id, t[13], bytes(32), 0), {"from": trainer.address}, "submitModel"
    )
    spec, dataset = await _spec_and_dataset(ipfs, t[14], t[13], compute.limits)
    started = time.monotonic()
    trained = await run_limited(
        fit_and_claim, spec, dataset, task_id, compute.limits, compute.cluster, timeout=spec.max_train_seconds
    )
    model_cid = str(ipfs.add_bytes(trained.artifact, 1))
    claimed = trained.claimed_score if claim is None else claim
    await send(
        w3,
        trainer,
        tasks.functions.submitModel(task_id, model_cid, bytes.fromhex(trained.sha256), claimed),
        what="submitModel",
    )
    return {
        "task": task_id,
        "model_cid": model_cid,
        "sha256": trained.sha256,
        "claimed": claimed,
        "seconds": round(time.monotonic() - started, 2),
    }


async def validate_task(
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    validator: LocalAccount,
    ipfs: IpfsClient,
    task_id: int,
    *,
    refused: list[str] | None = None,
    compute: Compute | None = None,
) -> list[dict[str, Any]]:
    """Score every submission this validator may vote on (all at once on `compute`'s Dask cluster when
    it has one) and vote: the test-set score when the artifact loads through the allow-list, is the
    promised estimator and its claim reproduces; 0 otherwise.

    A submission the contract would not take this validator's vote on (its own, voted already, enough
    votes, also when that became so while scoring) is skipped, its reason in words appended to
    `refused`; a refusal that holds for every vote (not staked, the window closed) raises
    TransactionReverted before anything is scored.
    """
    compute = compute or Compute()
    tasks = _contract(w3, deployment)
    t = await _get_task(tasks, task_id)
    if not t[8]:
        raise TaskError(f"task {task_id}: the test set is not revealed yet")
    spec, dataset = await _spec_and_dataset(ipfs, t[14], t[13], compute.limits)
    test_set = await ipfs.cat(t[15], max_size=compute.limits.max_dataset_bytes)
    mine: list[tuple[int, int, bytes | str, str]] = []  # (submission, claim, artifact or why not, sha256)
    for i in range(int(t[6])):
        # Would this vote be taken (stake, window, not its own, not voted yet, votes missing)? Asked
        # before scoring, which loads and runs the model.
        try:
            await preflight(w3, tasks.functions.validate(task_id, i, 0), {"from": validator.address}, "validate")
        except TransactionReverted as exc:
            if exc.error is None or exc.error.name not in NOT_THIS_VOTE:
                raise  # not staked, window closed, task closed: no vote of this validator would be taken
            if refused is not None:
                refused.append(exc.reason)
            continue
        _trainer, claimed, _median, _votes, sha, model_cid = await tasks.functions.getSubmission(task_id, i).call()
        try:
            mine.append((i, int(claimed), await ipfs.cat(model_cid, max_size=ARTIFACT_LIMIT), bytes(sha).hex()))
        except IpfsError as exc:
            mine.append((i, int(claimed), str(exc), bytes(sha).hex()))
    fetched = [(a, sha, claimed) for _i, claimed, a, sha in mine if isinstance(a, bytes)]
    found = iter(await score_submissions(spec, fetched, dataset, test_set, task_id, compute))
    votes = []
    for i, claimed, artifact, _sha in mine:
        result: Assessment | str = next(found) if isinstance(artifact, bytes) else artifact
        if isinstance(result, str):
            score, reason = 0, result
        elif not result.claim_reproduced:
            score, reason = 0, f"claimed {claimed}, the holdout gives {result.holdout_score}"
        else:
            score, reason = result.test_score, ""
        try:
            await send(w3, validator, tasks.functions.validate(task_id, i, score), what="validate")
        except TransactionReverted as exc:
            if exc.error is None or exc.error.name not in NOT_THIS_VOTE:
                raise
            if refused is not None:  # enough votes came in while this validator was scoring
                refused.append(exc.reason)
            continue
        votes.append({"submission": i, "score": score, "reason": reason})
    return votes


async def finalize_task(
    w3: AsyncWeb3[Any], deployment: Deployment, account: LocalAccount, task_id: int
) -> dict[str, Any]:
    tasks = _contract(w3, deployment)
    await send(w3, account, tasks.functions.finalizeTask(task_id), what="finalizeTask")
    return await task_info(w3, deployment, task_id)
