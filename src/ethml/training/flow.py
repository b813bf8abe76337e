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
from eth_utils.crypto import keccak
from web3 import AsyncWeb3
from web3.logs import DISCARD

from ethml.chain.deploy import EML, Deployment, token_contract, training_contract
from ethml.chain.tx import send
from ethml.errors import EthmlError, IpfsError, ModelError
from ethml.ipfs import IpfsClient
from ethml.node.miner import DEV_CHAIN_IDS
from ethml.training.jobs import TrainingError, assess, fit_and_claim, run_limited
from ethml.training.spec import TaskSpec, parse_spec

ROLES = {"trainer": 0, "validator": 1}
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


def commit_test_set(test_cid: str, salt: bytes) -> bytes:
    """keccak256(abi.encode(string testCid, bytes32 salt)), as TrainingTasks.commitmentFor computes it
    (the ABI encoding written out: eth_abi takes longer than the hash, and the coordinator checks one
    of these per request)."""
    data = test_cid.encode()
    encoded = (64).to_bytes(32, "big") + salt + len(data).to_bytes(32, "big") + data + b"\0" * (-len(data) % 32)
    return keccak(encoded)


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
    t = await tasks.functions.getTask(task_id).call()
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


async def _spec_and_dataset(ipfs: IpfsClient, spec_cid: str, dataset_cid: str) -> tuple[TaskSpec, bytes]:
    try:
        spec = parse_spec(await ipfs.cat(spec_cid))
        return spec, await ipfs.cat(dataset_cid, max_size=16 * 1024 * 1024)
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
) -> dict[str, Any]:
    """Train the task's model, add the skops artifact to the blockstore and submit it. `claim`
    overrides the claimed score (for tests of a dishonest trainer)."""
    tasks = _contract(w3, deployment)
    t = await tasks.functions.getTask(task_id).call()
    spec, dataset = await _spec_and_dataset(ipfs, t[14], t[13])
    started = time.monotonic()
    trained = await run_limited(fit_and_claim, spec, dataset, task_id, timeout=spec.max_train_seconds)
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
    w3: AsyncWeb3[Any], deployment: Deployment, validator: LocalAccount, ipfs: IpfsClient, task_id: int
) -> list[dict[str, Any]]:
    """Score every submission this validator may vote on and vote: the test-set score when the artifact
    loads through the allow-list, is the promised estimator and its claim reproduces; 0 otherwise."""
    tasks = _contract(w3, deployment)
    t = await tasks.functions.getTask(task_id).call()
    if not t[8]:
        raise TaskError(f"task {task_id}: the test set is not revealed yet")
    spec, dataset = await _spec_and_dataset(ipfs, t[14], t[13])
    test_set = await ipfs.cat(t[15], max_size=16 * 1024 * 1024)
    votes = []
    for i in range(int(t[6])):
        trainer, claimed, _median, _votes, sha, model_cid = await tasks.functions.getSubmission(task_id, i).call()
        if trainer == validator.address or await tasks.functions.hasVoted(task_id, i, validator.address).call():
            continue
        reason = ""
        try:
            artifact = await ipfs.cat(model_cid, max_size=ARTIFACT_LIMIT)
            found = await run_limited(
                assess,
                spec,
                artifact,
                bytes(sha).hex(),
                int(claimed),
                dataset,
                test_set,
                task_id,
                timeout=spec.max_train_seconds,
            )
            score = found.test_score if found.claim_reproduced else 0
            if not found.claim_reproduced:
                reason = f"claimed {int(claimed)}, the holdout gives {found.holdout_score}"
        except (IpfsError, ModelError, TrainingError) as exc:
            score, reason = 0, str(exc)
        await send(w3, validator, tasks.functions.validate(task_id, i, score), what="validate")
        votes.append({"submission": i, "score": score, "reason": reason})
    return votes


async def finalize_task(
    w3: AsyncWeb3[Any], deployment: Deployment, account: LocalAccount, task_id: int
) -> dict[str, Any]:
    tasks = _contract(w3, deployment)
    await send(w3, account, tasks.functions.finalizeTask(task_id), what="finalizeTask")
    return await task_info(w3, deployment, task_id)
