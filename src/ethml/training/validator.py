"""A validator's steps: see the panel drawn (drawing it when the draw is due: anyone may), and if this
validator holds a seat, score every submission, commit the vote, and reveal it once no seat can be
taken any more. Validators are drawn with replacement: one drawn k times holds k seats and casts one
ballot (committed and revealed once) that counts k times.

A score is the artifact's test-set score, or 0 when it failed its checks. When the revealed test set
is unusable, the vote reports it so and carries each artifact's score on the dataset's holdout
instead; on a task whose test set was never revealed, the panel drawn after the test deadline (the
first finalizeTask fixes its draw; this module sends it when due) votes holdout scores too.

The vote's secret (the scores, whether they are holdout scores, and the salt) is written to the data dir before
the commitment is sent, so a validator that crashes between the two steps reveals after a restart:
running `validate_task` again skips the scoring and reveals.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from ethml.chain.deploy import Deployment
from ethml.chain.reverts import local_time
from ethml.chain.tx import preflight, send
from ethml.errors import IpfsError, TransactionReverted
from ethml.ipfs import IpfsClient
from ethml.pow import keccak256
from ethml.training import clock
from ethml.training.jobs import (
    Assessment,
    Compute,
    TrainingError,
    run_limited,
    score_submissions,
    test_set_problem,
)
from ethml.training.onchain import (
    MAX_ROUNDS,
    NotDrawn,
    TaskError,
    TaskState,
    read_secret,
    read_task,
    require_open,
    secret_file,
    settle_pending,
    submissions,
    training,
    write_secret,
)
from ethml.training.refit import prediction_mismatch, reference_fit, reference_predictions
from ethml.training.spec import TaskSpec
from ethml.training.trainer import ARTIFACT_LIMIT, spec_and_dataset

#: TrainingTasks errors that refuse this validator's vote but are no fault of the call: it holds no
#: seat, or has voted already. A worker reports "nothing to do" for them instead of a failure.
NOT_THIS_VOTE = ("NotOnPanel", "AlreadyCommitted", "AlreadyRevealed")

Progress = Callable[[str], None]


def score_commitment(task_id: int, validator: str, unusable: bool, scores: list[int], salt: bytes) -> bytes:
    """keccak256(abi.encode(taskId, validator, unusable, scores, salt)), as
    TrainingTasks.scoreCommitment computes it."""
    return keccak256(
        abi_encode(["uint256", "address", "bool", "uint32[]", "bytes32"], [task_id, validator, unusable, scores, salt])
    )


async def draw_panel(
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    account: LocalAccount,
    task_id: int,
    *,
    progress: Progress | None = None,
) -> bool:
    """Draw the pending seats of the task's panel (anyone may): waits for the block whose hash draws
    them (mined at once on a development chain). False when no draw was pending (or another account
    drew first)."""
    task = await read_task(w3, deployment, task_id)
    if not task.draw_block:
        return False
    await clock.wait_for_block(w3, task.draw_block, f"task {task_id}'s draw", progress, account)
    try:
        await send(w3, account, training(w3, deployment).functions.drawPanel(task_id), what="drawPanel")
    except TransactionReverted as exc:
        if exc.error is not None and exc.error.name == "NoDrawPending":
            return False  # drawn by someone else meanwhile
        raise
    return True


async def fix_holdout_draw(w3: AsyncWeb3[Any], deployment: Deployment, account: LocalAccount, task_id: int) -> bool:
    """On a task whose test set was never revealed, past its test deadline: the first finalizeTask fixes
    the draw of the panel that checks the submissions on the dataset's holdout (anyone may send it).
    False when someone else fixed it (or settled the task) first."""
    await clock.catch_up(w3, account)
    try:
        await send(w3, account, training(w3, deployment).functions.finalizeTask(task_id), what="finalizeTask")
    except TransactionReverted as exc:
        if exc.error is not None and exc.error.name in ("DrawPending", "TaskClosed", "PanelIncomplete"):
            return False
        raise
    return True


async def replace_no_shows(w3: AsyncWeb3[Any], deployment: Deployment, account: LocalAccount, task_id: int) -> None:
    """Fine and unseat the drawn validators that did not commit in time, and fix the next draw (anyone may)."""
    await clock.catch_up(w3, account)
    await send(w3, account, training(w3, deployment).functions.replaceNoShows(task_id), what="replaceNoShows")


async def _seat(w3: AsyncWeb3[Any], deployment: Deployment, task: TaskState, address: str) -> dict[str, Any] | None:
    tasks = training(w3, deployment)
    seat = int(await tasks.functions.seatOf(task.id, address).call())
    if seat == 0:
        return None
    validator, state, _unusable, _commitment, _scores = await tasks.functions.getSeat(task.id, seat - 1).call()
    return {"seat": seat - 1, "validator": validator, "state": int(state)}


async def validate_task(
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    validator: LocalAccount,
    ipfs: IpfsClient,
    task_id: int,
    *,
    data_dir: Path,
    compute: Compute | None = None,
    wait: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """This validator's vote on the task: the draw made if it is due; if this validator holds a seat,
    every submission scored on the revealed test set (all at once on `compute`'s Dask cluster), or
    the test set reported unusable; the vote committed; and revealed once no seat can be taken any more
    (at once if that is so; with `wait` after waiting for it; otherwise by calling this again).

    A score is the test-set score when the artifact loads through the allow-list, is the promised
    estimator and its claim reproduces; 0 otherwise. Raises NotDrawn when the validator holds no seat
    (with `wait`, after following the draws that could still seat it)."""
    compute = compute or Compute()
    address = validator.address
    while True:
        task = await read_task(w3, deployment, task_id)
        require_open(task)
        if not task.test_revealed:
            if await clock.chain_now(w3) > task.test_deadline:
                # Never revealed: a panel checks the submissions on the dataset's holdout; the first
                # finalizeTask after the test deadline fixes its draw (anyone may send it).
                if task.round == 0 and not task.draw_block:
                    await fix_holdout_draw(w3, deployment, validator, task_id)
                    continue
            elif not wait:
                raise TaskError(
                    f"task {task_id}'s test set is not revealed yet (the requester may reveal it from "
                    f"{local_time(task.reveal_deadline + 1)} until {local_time(task.test_deadline)}; if it "
                    "never is, a panel drawn after that checks the submissions on the dataset's holdout)"
                )
            else:
                if progress is not None:
                    progress(f"waiting for task {task_id}'s test set (until {local_time(task.test_deadline)})")
                gap = task.test_deadline - await clock.chain_now(w3) + 1
                await asyncio.sleep(min(5, max(1, gap)))
                if gap <= 5:
                    await clock.catch_up(w3, validator)
                continue
        if task.draw_block:
            await draw_panel(w3, deployment, validator, task_id, progress=progress)
            continue
        seat = await _seat(w3, deployment, task, address)
        if seat is not None:
            break
        if wait and task.committed < task.validations and task.round < MAX_ROUNDS:
            await _follow_replacements(w3, deployment, validator, task, progress)
            continue
        raise NotDrawn(
            f"validator {address} holds no seat on task {task_id}'s panel ({task.seated} of "
            f"{task.validations} seats filled, draw {task.round} of {MAX_ROUNDS})"
        )
    path = secret_file(data_dir, deployment, "scores", task_id, address)
    result: dict[str, Any] = {"task": task_id, "seat": seat["seat"], "committed": False, "revealed": False}
    if seat["state"] == 3:
        raise TaskError(f"validator {address} already revealed its scores for task {task_id} (AlreadyRevealed)")
    if seat["state"] == 1 and read_secret(path) is not None:
        # Scored and committed from this data dir before, not on chain yet (a worker killed after sending it, or a
        # send that failed): that commitment again, never new scores and salt, which would not open it.
        if progress is not None:
            progress(f"task {task_id}'s scores were committed from this data dir before: waiting for {address}'s "
                     "transactions on their way, then sending that commitment again if it is not on chain")  # fmt: skip
        await settle_pending(w3, address, task.score_deadline)
        now = await _seat(w3, deployment, await read_task(w3, deployment, task_id), address)
        if now is not None and now["state"] == 1:
            kept = read_secret(path) or {}
            commitment = score_commitment(
                task_id, address, bool(kept["unusable"]), list(kept["scores"]), bytes.fromhex(kept["salt"])
            )
            await clock.catch_up(w3, validator)
            tasks = training(w3, deployment)
            await send(w3, validator, tasks.functions.commitScores(task_id, commitment), what="commitScores")
    elif seat["state"] == 1:  # drawn, not committed
        await clock.catch_up(w3, validator)
        probe = training(w3, deployment).functions.commitScores(task_id, b"\x01" * 32)
        await preflight(w3, probe, {"from": address}, "commitScores")  # the window, before scoring
        if progress is not None:
            progress(f"scoring task {task_id}'s {task.submissions} submissions")
        refit = secret_file(data_dir, deployment, "refit", task_id).with_suffix(".skops")
        unusable, scores, reasons, problem = await _score(w3, deployment, ipfs, task, compute, refit, progress)
        salt = os.urandom(32)
        write_secret(
            path, {"task": task_id, "unusable": unusable, "scores": scores, "salt": salt.hex(), "problem": problem}
        )
        commitment = score_commitment(task_id, address, unusable, scores, salt)
        tasks = training(w3, deployment)
        await send(w3, validator, tasks.functions.commitScores(task_id, commitment), what="commitScores")
        result["reasons"] = reasons
    secret = read_secret(path)
    if secret is None:
        raise TaskError(
            f"validator {address} committed scores for task {task_id}, but {path} holds no secret for them: "
            "they can be revealed only from the data dir they were committed from"
        )
    result.update(committed=True, unusable=bool(secret["unusable"]), scores=list(secret["scores"]))
    result["holdout"] = secret.get("problem")  # why the scores are holdout scores (None: test-set scores)
    result.setdefault("reasons", [""] * len(result["scores"]))
    result["revealed"] = await reveal_scores(w3, deployment, validator, task_id, data_dir, wait=wait, progress=progress)
    return result


async def _follow_replacements(
    w3: AsyncWeb3[Any], deployment: Deployment, account: LocalAccount, task: TaskState, progress: Progress | None
) -> None:
    """Seats are uncommitted and draws remain: wait for the commit window, then replace the no-shows
    (anyone may) so the next draw can seat this validator."""
    if await clock.chain_now(w3) <= task.score_deadline:
        if progress is not None:
            progress(f"waiting for task {task.id}'s score commitments (until {local_time(task.score_deadline)})")
        await asyncio.sleep(min(5, max(1, task.score_deadline - await clock.chain_now(w3) + 1)))
        return
    try:
        await replace_no_shows(w3, deployment, account, task.id)
    except TransactionReverted as exc:
        if exc.error is None or exc.error.name not in ("DrawPending", "NothingToReplace", "NoRoundsLeft", "TooEarly"):
            raise


async def _score(
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    ipfs: IpfsClient,
    task: TaskState,
    compute: Compute,
    refit_cache: Path,
    progress: Progress | None,
) -> tuple[bool, list[int], list[str], str | None]:
    """(unusable, one score per submission index, the reason for each 0, what the scores are).

    With a usable test set: each artifact's test-set score when it passes its checks (loads through
    the allow-list, is the promised estimator, predicts as this validator's re-fit of the spec does
    on the test set (ethml.training.refit), and its claim lies within claimSlack of its holdout score,
    as the contract allows a claim), else 0. With an unusable test set (reported as such) or none
    revealed: each artifact's holdout score when it loads, is the promised estimator and predicts as
    the re-fit does on the holdout, else 0; the contract verifies it against the claim."""
    spec, dataset = await spec_and_dataset(ipfs, task.spec_cid, task.dataset_cid, compute.limits)
    test_set: bytes | None = None
    problem: str | None = "the test set was never revealed"
    if task.test_revealed:
        try:
            test_set = await ipfs.cat(task.test_cid, max_size=compute.limits.max_dataset_bytes)
        except IpfsError as exc:
            # Not the requester's fault as far as this validator can tell: no vote (a no-show costs less
            # than being outvoted), and the error says why.
            raise TaskError(f"cannot fetch task {task.id}'s test set: {exc}") from None
        problem = await asyncio.to_thread(test_set_problem, spec, test_set, compute.limits)
        if problem is not None:
            test_set = None
            problem = f"the test set is unusable: {problem}"
    holdout = test_set is None
    subs = await submissions(w3, deployment, task)
    fetched: list[tuple[int, bytes, str, int]] = []
    reasons = ["not revealed"] * task.submissions
    for i, s in enumerate(subs):
        if not s["revealed"]:
            continue
        sha = bytes(s["artifactSha256"]).hex()
        try:
            fetched.append((i, await ipfs.cat(s["modelCid"], max_size=ARTIFACT_LIMIT), sha, int(s["claim"])))
        except IpfsError as exc:
            reasons[i] = str(exc)
    artifacts = [(a, sha, c) for _i, a, sha, c in fetched]
    mismatches = await _refit_mismatches(spec, dataset, test_set, task, compute, refit_cache, fetched, progress)
    found = await score_submissions(spec, artifacts, dataset, test_set, task.id, compute)
    scores = [0] * task.submissions
    for (i, _artifact, sha, claimed), assessment, mismatch in zip(fetched, found, mismatches, strict=True):
        if isinstance(assessment, str):
            reasons[i] = assessment
        elif not isinstance(assessment, Assessment):
            reasons[i] = "no assessment"
        elif mismatch is not None:
            reasons[i] = mismatch
        elif holdout:
            scores[i], reasons[i] = assessment.holdout_score, ""
        elif abs(assessment.holdout_score - claimed) > task.claim_slack:
            reasons[i] = (
                f"claimed {claimed / 1e6:.6f}, the holdout gives {assessment.holdout_score / 1e6:.6f}: further "
                f"apart than the task's claimSlack ({task.claim_slack / 1e6:.6f})"
            )
        else:
            scores[i], reasons[i] = assessment.test_score, ""
        if progress is not None:  # one line per artifact: its vote and why
            verdict = f"{scores[i] / 1e6:.6f}" + (f" because {reasons[i]}" if reasons[i] else "")
            progress(f"task {task.id}, submission {i} (sha256 {sha[:16]}…): votes {verdict}")
    return holdout, scores, reasons, problem


async def _refit_mismatches(
    spec: TaskSpec,
    dataset: bytes,
    test_set: bytes | None,
    task: TaskState,
    compute: Compute,
    cache: Path,
    fetched: list[tuple[int, bytes, str, int]],
    progress: Progress | None,
) -> list[str | None]:
    """Why each fetched artifact was not fit as the spec says (None: it was), against this validator's
    re-fit of the spec (made once per task, kept in the data dir). A re-fit that fails is no artifact's
    fault: no vote (TaskError), rather than a 0 for every trainer."""
    if not fetched:
        return []
    try:
        reference, cached = await reference_fit(spec, dataset, task.id, compute, cache)
    except TrainingError as exc:
        raise TaskError(f"cannot re-fit task {task.id}'s spec to check its artifacts against: {exc}") from None
    if progress is not None and not cached:
        progress(f"re-fitted task {task.id}'s spec (sha256 {reference.sha256[:16]}…) to check its artifacts against")
    try:
        rows, expected, where = await run_limited(
            reference_predictions,
            spec,
            reference.artifact,
            dataset,
            test_set,
            task.id,
            compute.limits,
            timeout=float(spec.max_train_seconds),
        )
    except TrainingError as exc:
        raise TaskError(f"cannot predict with task {task.id}'s re-fit to check its artifacts against: {exc}") from None
    found: list[str | None] = []
    for _i, artifact, sha, _c in fetched:
        if sha == reference.sha256:
            found.append(None)
            continue
        # Each artifact in a child process of its own: one that fails there (an error, a crash, no end within
        # the spec's time) is the artifact's fault and costs its own vote, not this validator's on the others.
        try:
            found.append(
                await run_limited(
                    prediction_mismatch,
                    spec,
                    artifact,
                    sha,
                    task.id,
                    rows,
                    expected,
                    where,
                    timeout=float(spec.max_train_seconds),
                )
            )
        except TrainingError as exc:
            found.append(f"its predictions could not be compared with the spec's re-fit's: {exc}")
    for (i, _artifact, sha, _c), mismatch in zip(fetched, found, strict=True):
        same = "the re-fit's bytes" if sha == reference.sha256 else "the re-fit's predictions"
        if progress is not None:
            progress(f"task {task.id}, submission {i}: " + (f"gives {same}" if mismatch is None else mismatch))
    return found


async def reveal_scores(
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    validator: LocalAccount,
    task_id: int,
    data_dir: Path,
    *,
    wait: bool = False,
    progress: Progress | None = None,
) -> bool:
    """Reveal this validator's committed vote once no seat can be taken any more (every seat committed,
    or the last draw's commit window closed). Without `wait`, False when that time has not come; with
    it, waits (replacing no-shows when their window has passed, so the panel fills). True once
    revealed (now or before)."""
    while True:
        task = await read_task(w3, deployment, task_id)
        seat = await _seat(w3, deployment, task, validator.address)
        if seat is None:
            raise NotDrawn(f"validator {validator.address} holds no seat on task {task_id}'s panel")
        if seat["state"] == 3:
            return True
        require_open(task)
        now = await clock.chain_now(w3)
        if task.committed == task.validations or (task.round >= MAX_ROUNDS and now > task.score_deadline):
            break
        if not wait:
            return False
        if task.draw_block:
            await draw_panel(w3, deployment, validator, task_id, progress=progress)
        elif task.round >= MAX_ROUNDS:
            what = f"task {task_id}'s last commit window to close"
            await clock.wait_past(w3, task.score_deadline, what, progress, validator)
        else:
            await _follow_replacements(w3, deployment, validator, task, progress)
    secret = read_secret(secret_file(data_dir, deployment, "scores", task_id, validator.address))
    if secret is None:
        raise TaskError(f"no secret for validator {validator.address}'s scores on task {task_id} in {data_dir}")
    await clock.catch_up(w3, validator)
    call = training(w3, deployment).functions.revealScores(
        task_id, bool(secret["unusable"]), [int(v) for v in secret["scores"]], bytes.fromhex(secret["salt"])
    )
    await send(w3, validator, call, what="revealScores")
    return True
