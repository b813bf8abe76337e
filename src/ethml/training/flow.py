"""The training task flow on chain: what `ethml stake|unstake`, `ethml task`, `ethml train` and `ethml
validate` do, usable from Python too. Files go through the local blockstore (and gateways) by CID.

This module holds the requester's steps (create a task, reveal its test set), stakes, finalization and
the task's view; the trainer's steps are in `ethml.training.trainer` (train, commit, reveal a
submission), the validator's in `ethml.training.validator` (draw the panel, score, commit, reveal
scores), both re-exported here. Every step that waits for a deadline can wait for it (`wait=True`):
deadlines are wall-clock time on every chain, an idle devnet included (`ethml.training.clock`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.logs import DISCARD

from ethml.chain.deploy import EML, Deployment, token_contract
from ethml.chain.reverts import amount, local_time
from ethml.chain.tx import preflight, send
from ethml.errors import TransactionReverted
from ethml.ipfs import IpfsClient
from ethml.ipfs.unixfs import file_cid_v1
from ethml.pow import keccak256
from ethml.training import clock
from ethml.training.onchain import (
    BONDS,
    MAX_ROUNDS,
    ROLES,
    SEAT_STATES,
    STATUSES,
    NoSubmission,
    NotDrawn,
    TaskError,
    TaskState,
    phase,
    read_secret,
    read_struct,
    read_task,
    require_open,
    seats,
    secret_file,
    submissions,
    training,
    write_secret,
)
from ethml.training.rules import read_rules
from ethml.training.spec import TaskSpec
from ethml.training.terms import Terms
from ethml.training.trainer import ARTIFACT_LIMIT, reveal_submission, train_and_submit
from ethml.training.validator import (
    NOT_THIS_VOTE,
    draw_panel,
    fix_holdout_draw,
    replace_no_shows,
    reveal_scores,
    validate_task,
)

__all__ = [
    "ARTIFACT_LIMIT",
    "MAX_ROUNDS",
    "NOT_THIS_VOTE",
    "ROLES",
    "STATUSES",
    "CreatedTask",
    "NoSubmission",
    "NotDrawn",
    "TaskError",
    "TransactionReverted",
    "burn_penalties",
    "commit_test_set",
    "create_task",
    "draw_panel",
    "finalize_task",
    "replace_no_shows",
    "request_unstake",
    "reveal_scores",
    "reveal_submission",
    "reveal_test_set",
    "spec_cid",
    "stake",
    "stake_info",
    "task_info",
    "train_and_submit",
    "validate_task",
    "withdraw_stake",
]

Progress = Callable[[str], None]


@dataclass
class CreatedTask:
    task_id: int
    spec_cid: str
    dataset_cid: str
    test_cid: str
    secret_file: Path
    submit_deadline: int
    reveal_deadline: int
    test_deadline: int


def commit_test_set(test_cid: str, salt: bytes) -> bytes:
    """keccak256(abi.encode(string testCid, bytes32 salt)), as TrainingTasks.commitmentFor computes it
    (the ABI encoding written out and the native keccak: eth_abi and eth_hash take longer than the hash
    itself, and the coordinator checks one of these per request)."""
    data = test_cid.encode()
    encoded = (64).to_bytes(32, "big") + salt + len(data).to_bytes(32, "big") + data + b"\0" * (-len(data) % 32)
    return keccak256(encoded)


def spec_cid(spec: TaskSpec) -> str:
    """The CID (v1, raw leaves) of the spec's canonical JSON: what a task names on chain and signs."""
    return file_cid_v1(spec.to_json())


# ------------------------------------------------------------------ stakes


async def stake(w3: AsyncWeb3[Any], deployment: Deployment, account: LocalAccount, role: str, amount: int) -> None:
    tasks = training(w3, deployment)
    await _approve(w3, deployment, account, amount)
    await send(w3, account, tasks.functions.stake(ROLES[role], amount), what=f"staking as {role}")


async def request_unstake(w3: AsyncWeb3[Any], deployment: Deployment, account: LocalAccount, role: str) -> int:
    """Start leaving `role`: the stake stops counting for new work at once; returns when it can be
    withdrawn (unix seconds), once its open work is settled."""
    tasks = training(w3, deployment)
    await send(w3, account, tasks.functions.requestUnstake(ROLES[role]), what=f"unstaking as {role}")
    return int((await stake_info(w3, deployment, account.address, role))["unlock_at"])


async def withdraw_stake(w3: AsyncWeb3[Any], deployment: Deployment, account: LocalAccount, role: str) -> int:
    """Pay the stake back after `request_unstake`'s delay (at least a day): all of it but what open work
    locks (bonds of open submissions, seats on open panels), the rest by calling this again once that
    work is settled; returns the amount paid in wei."""
    tasks = training(w3, deployment)
    info = await stake_info(w3, deployment, account.address, role)
    amount = int(info["amount"]) - int(info["locked"])
    await clock.catch_up(w3, account)
    await send(w3, account, tasks.functions.withdrawStake(ROLES[role]), what=f"withdrawing the {role} stake")
    return amount


async def stake_info(w3: AsyncWeb3[Any], deployment: Deployment, address: str, role: str) -> dict[str, Any]:
    s = await read_struct(training(w3, deployment), "stakeOf", w3.to_checksum_address(address), ROLES[role])
    return {
        "role": role,
        "amount": int(s["amount"]),
        "locked": int(s["locked"]),
        "unlock_at": int(s["unlockAt"]),
        "open_work": int(s["openWork"]),
        "active": bool(s["active"]),
    }


async def _check_terms(
    w3: AsyncWeb3[Any], deployment: Deployment, requester: LocalAccount, call: Any, reward: int
) -> None:
    """Before the approval is sent: would the task be created (terms in range, not paused), and does the
    requester hold the reward? Refused terms cost nothing, not even an approval."""
    token = token_contract(w3, deployment.token)
    held = int(await token.functions.balanceOf(requester.address).call())
    if held < reward:
        raise TaskError(f"account {requester.address} holds {amount(held, 'EML')}, less than the reward of "
                        f"{amount(reward, 'EML')}")  # fmt: skip
    try:
        await preflight(w3, call, {"from": requester.address}, "createTask")
    except TransactionReverted as exc:
        if exc.error is None or exc.error.name != "ERC20InsufficientAllowance":
            raise  # the allowance is what the approval will give; anything else refuses the task


async def _approve(w3: AsyncWeb3[Any], deployment: Deployment, account: LocalAccount, amount: int) -> None:
    token = token_contract(w3, deployment.token)
    allowance = int(await token.functions.allowance(account.address, deployment.training).call())
    if allowance < amount:
        await send(w3, account, token.functions.approve(deployment.training, amount), what="approving EML")


# ------------------------------------------------------------------ the requester


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
    score_seconds: int,
) -> CreatedTask:
    """Store spec, dataset and test set by CID, commit to the test set, escrow the reward, create the
    task. Its windows start at the block that creates it (periods, not deadlines), so they are as long
    as asked whatever the chain's last block says. The test set's CID and salt are kept in the data
    dir for the reveal."""
    spec_id = str(ipfs.add_bytes(spec.to_json(), 1))
    dataset_cid = str(ipfs.add_bytes(dataset, 1))
    test_cid = str(ipfs.add_bytes(test_set, 1))
    salt = os.urandom(32)
    rules = await read_rules(w3, deployment)
    terms = Terms.for_spec(
        spec,
        dataset_cid=dataset_cid,
        spec_cid=spec_id,
        test_set_commitment=commit_test_set(test_cid, salt),
        reward=reward,
        submit_period=submit_seconds,
        score_period=score_seconds,
        validations=validations,
        min_score=min_score,
        parameters_version=rules.version,
    )
    problems = rules.problems(terms)
    if problems:
        raise TaskError("; ".join(problems))
    tasks = training(w3, deployment)
    call = tasks.functions.createTask(terms.as_tuple())
    await _check_terms(w3, deployment, requester, call, reward)
    await _approve(w3, deployment, requester, reward)
    receipt = await send(w3, requester, call, what="createTask")
    created = tasks.events.TaskCreated().process_receipt(receipt, errors=DISCARD)[0]["args"]
    task_id = int(created["taskId"])
    path = secret_file(data_dir, deployment, "test-set", task_id)
    write_secret(path, {"task": task_id, "test_cid": test_cid, "salt": salt.hex()})
    return CreatedTask(
        task_id,
        spec_id,
        dataset_cid,
        test_cid,
        path,
        int(created["submitDeadline"]),
        int(created["revealDeadline"]),
        int(created["testDeadline"]),
    )


async def reveal_test_set(
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    requester: LocalAccount,
    task_id: int,
    data_dir: Path,
    *,
    wait: bool = False,
    progress: Progress | None = None,
) -> str:
    """Reveal the test set kept by `create_task`, in the contract's window (after the submissions'
    reveal window, until the test deadline); with `wait`, wait for the window to open."""
    task = await read_task(w3, deployment, task_id)
    require_open(task)
    if task.test_revealed:
        raise TaskError(f"task {task_id}'s test set is already revealed ({task.test_cid})")
    path = secret_file(data_dir, deployment, "test-set", task_id)
    secret = read_secret(path)
    if secret is None:
        raise TaskError(f"no test-set secret for task {task_id} in {path} (it is written by `ethml task create`)")
    if wait:
        await clock.wait_past(w3, task.reveal_deadline, f"task {task_id}'s test-set window", progress, requester)
    else:
        await clock.catch_up(w3, requester)
    tasks = training(w3, deployment)
    call = tasks.functions.revealTestSet(task_id, secret["test_cid"], bytes.fromhex(secret["salt"]))
    await send(w3, requester, call, what="revealTestSet")
    return str(secret["test_cid"])


# ------------------------------------------------------------------ settlement


async def finalize_task(
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    account: LocalAccount,
    task_id: int,
    *,
    wait: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Settle the task (anyone may). With `wait`, first wait for whatever it waits for: its windows, the
    draw (made here when due), no-shows' seats (replaced here when due, then drawn again)."""
    tasks = training(w3, deployment)
    if wait:
        while True:
            task = await read_task(w3, deployment, task_id)
            require_open(task)
            ready = await _until_finalizable(w3, deployment, account, task, progress)
            if ready:
                break
    else:
        await clock.catch_up(w3, account)
    await send(w3, account, tasks.functions.finalizeTask(task_id), what="finalizeTask")
    return await task_info(w3, deployment, task_id)


async def _until_finalizable(
    w3: AsyncWeb3[Any], deployment: Deployment, account: LocalAccount, t: TaskState, progress: Progress | None
) -> bool:
    """One step towards a finalizable task (as TrainingSettlement._readiness decides); True when it is."""
    if t.revealed == 0:
        closes = t.submit_deadline if t.submissions == 0 else t.reveal_deadline
        await clock.wait_past(w3, closes, f"task {t.id}'s submissions to close", progress, account)
        return True
    if not t.test_revealed and t.round == 0 and not t.draw_block:
        if await clock.chain_now(w3) > t.test_deadline:
            # Never revealed: this finalizeTask fixes the draw of the panel that checks the submissions
            # on the dataset's holdout; the task settles (Abandoned) after that panel.
            await fix_holdout_draw(w3, deployment, account, t.id)
            return False
        await _wait_or_change(w3, t.test_deadline, f"task {t.id}'s test set", progress, account)
        return False
    if t.draw_block:
        await draw_panel(w3, deployment, account, t.id, progress=progress)
        return False
    if t.committed < t.validations and t.round < MAX_ROUNDS:
        if await clock.chain_now(w3) > t.score_deadline:
            await replace_no_shows(w3, deployment, account, t.id)
        else:
            await _wait_or_change(w3, t.score_deadline, f"task {t.id}'s score commitments", progress, account)
        return False
    if t.votes < t.validations:
        if await clock.chain_now(w3) > t.reveal_closes:
            await clock.wait_past(w3, t.reveal_closes, f"task {t.id}'s score reveals to close", progress, account)
            return True
        await _wait_or_change(w3, t.reveal_closes, f"task {t.id}'s score reveals", progress, account)
        return False
    return True


async def _wait_or_change(
    w3: AsyncWeb3[Any], deadline: int, what: str, progress: Progress | None, account: LocalAccount
) -> None:
    """Wait a few seconds (the task may move meanwhile), or for `deadline` when it is that close."""
    gap = deadline - await clock.chain_now(w3)
    if gap <= 5:
        await clock.wait_past(w3, deadline, what, progress, account)
    else:
        if progress is not None:
            progress(f"waiting for {what} (until {local_time(deadline)})")
        await asyncio.sleep(5)


async def burn_penalties(w3: AsyncWeb3[Any], deployment: Deployment, account: LocalAccount) -> int:
    """Burn the slashes, no-show slices and forfeited bonds collected so far; returns the wei burned."""
    tasks = training(w3, deployment)
    amount = int(await tasks.functions.pendingBurn().call())
    await send(w3, account, tasks.functions.burnPenalties(), what="burnPenalties")
    return amount


# ------------------------------------------------------------------ the view


async def task_info(w3: AsyncWeb3[Any], deployment: Deployment, task_id: int) -> dict[str, Any]:
    t = await read_task(w3, deployment, task_id)
    subs = await submissions(w3, deployment, t)
    panel = await seats(w3, deployment, t)
    judged = t.status not in ("none", "open", "empty")
    contract = training(w3, deployment)
    elsewhere = [bool(await contract.functions.revealedElsewhere(task_id, i).call()) for i in range(len(subs))]
    return {
        "task": task_id,
        "status": t.status,
        "next": phase(t, await clock.chain_now(w3)),
        "requester": t.requester,
        "reward_eml": t.reward / EML,
        "bond_eml": t.bond / EML,
        "dataset_cid": t.dataset_cid,
        "spec_cid": t.spec_cid,
        "test_cid": t.test_cid or None,
        "test_revealed": t.test_revealed,
        "min_score": t.min_score,
        "validations": t.validations,
        "submit_deadline": t.submit_deadline,
        "reveal_deadline": t.reveal_deadline,
        "test_deadline": t.test_deadline,
        "score_deadline": t.score_deadline or None,
        "draw_block": t.draw_block or None,
        "draws": t.round,
        "committed": t.committed,
        "votes": t.votes,
        "accepted_submission": t.accepted - 1 if t.accepted else None,
        "model_id": t.model_id or None,
        "registration": t.registration,
        "submissions": [
            {
                "id": i,
                "trainer": s["trainer"],
                "revealed": bool(s["revealed"]),
                "model_cid": s["modelCid"] or None,
                "sha256": bytes(s["artifactSha256"]).hex() if s["revealed"] else None,
                "claimed": int(s["claim"]) if s["revealed"] else None,
                "score": int(s["score"]) if judged and s["revealed"] and not _undecided(s) else None,
                # Settled without a clear majority on its score: recorded 0 with its bond released.
                "undecided": judged and bool(s["revealed"]) and _undecided(s),
                "revealed_elsewhere": elsewhere[i],
                "bond": BONDS[int(s["bond"])],
            }
            for i, s in enumerate(subs)
        ],
        "panel": [
            {
                "seat": i,
                "validator": p["validator"],
                "state": SEAT_STATES[int(p["state"])],
                "unusable": bool(p["unusable"]) if int(p["state"]) == 3 else None,
                "scores": [int(v) for v in p["scores"][: t.submissions]] if int(p["state"]) == 3 else None,
            }
            for i, p in enumerate(panel)
            if int(p["state"]) != 0
        ],
    }


def _undecided(submission: dict[str, Any]) -> bool:
    """A settled submission's score of 0 with its bond released: no clear majority decided it (a decided
    0 forfeits the bond)."""
    return int(submission["score"]) == 0 and BONDS[int(submission["bond"])] == "released"


def describe(info: dict[str, Any]) -> list[str]:
    """`ethml task show` in lines."""
    lines = [
        f"task {info['task']}: {info['status']}, reward {info['reward_eml']:g} EML, bond {info['bond_eml']:g} EML, "
        f"{info['validations']} validators, minimum score {info['min_score'] / 1e6:.6f}",
        f"  next: {info['next']}",
        f"  dataset {info['dataset_cid']}, spec {info['spec_cid']}, test set {info['test_cid'] or 'hidden'}",
    ]
    for s in info["submissions"]:
        if s["revealed"]:
            score = f", scored {s['score'] / 1e6:.6f}" if s["score"] is not None else ""
            if s["undecided"]:
                score = ", undecided (no clear majority on its score)"
            if s["revealed_elsewhere"]:
                score += " (its artifact was revealed in another task first: never accepted nor paid)"
            lines.append(
                f"  submission {s['id']} by {s['trainer']}: {s['model_cid']} claiming {s['claimed'] / 1e6:.6f}"
                f"{score}, bond {s['bond']}"
            )
        else:
            lines.append(f"  submission {s['id']} by {s['trainer']}: committed, not revealed, bond {s['bond']}")
    for p in info["panel"]:
        vote = ""
        if p["state"] == "revealed":
            vote = ": unusable" if p["unusable"] else ": " + ", ".join(f"{v / 1e6:.6f}" for v in p["scores"])
        lines.append(f"  seat {p['seat']}: {p['validator']} {p['state']}{vote}")
    if info["model_id"]:
        lines.append(f"  accepted submission {info['accepted_submission']}: model id {info['model_id']}")
    elif info["status"] == "accepted":
        lines.append(f"  accepted submission {info['accepted_submission']}: registration {info['registration']}")
    return lines
