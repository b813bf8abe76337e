"""A trainer's steps: check it may submit, train, commit to the submission (bound to its address and
hidden by a salt), then reveal it once the submission window has closed.

The submission's secret (model CID, sha256, claim, salt) is written to the data dir before the
commitment is sent, so a trainer that crashes between the two steps reveals after a restart: running
`train_and_submit` again for a committed task skips the training and reveals. The artifact stays in
the local blockstore until the reveal (`on_reveal` may publish it then: the coordinator's worker
uploads it to its coordinator, with the opening that shows the coordinator it is the committed file),
so nothing announces its CID before the commitments close.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from ethml.chain.deploy import Deployment
from ethml.chain.reverts import local_time
from ethml.chain.tx import preflight, send
from ethml.errors import IpfsError
from ethml.ipfs import IpfsClient
from ethml.pow import keccak256
from ethml.training import clock
from ethml.training.jobs import Compute, TrainingTimeout, fit_and_claim, run_limited
from ethml.training.onchain import (
    NoSubmission,
    TaskError,
    read_secret,
    read_task,
    require_open,
    secret_file,
    settle_pending,
    training,
    write_secret,
)
from ethml.training.spec import TaskSpec, TrainingLimits, parse_spec

ARTIFACT_LIMIT = 64 * 1024 * 1024

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Opening:
    """What revealSubmission opens for a trainer's submission to `task`: the artifact's CID and SHA-256
    (hex), the claim (millionths) and the salt (hex)."""

    task: int
    model_cid: str
    sha256: str
    claim: int
    salt: str

    @classmethod
    def of(cls, task: int, secret: dict[str, Any]) -> Opening:
        """The opening a submission's secret (as `train_and_submit` writes it) holds."""
        return cls(task, str(secret["model_cid"]), str(secret["sha256"]), int(secret["claim"]), str(secret["salt"]))

    def commitment(self, trainer: str) -> bytes:
        """The commitment it opens for `trainer`."""
        sha256, salt = bytes.fromhex(self.sha256), bytes.fromhex(self.salt)
        return submission_commitment(self.task, trainer, self.model_cid, sha256, self.claim, salt)


OnReveal = Callable[[Opening], Awaitable[None]]


def submission_commitment(task_id: int, trainer: str, model_cid: str, sha256: bytes, claim: int, salt: bytes) -> bytes:
    """keccak256(abi.encode(taskId, trainer, modelCid, artifactSha256, claim, salt)), as
    TrainingTasks.submissionCommitment computes it."""
    return keccak256(
        abi_encode(
            ["uint256", "address", "string", "bytes32", "uint256", "bytes32"],
            [task_id, trainer, model_cid, sha256, claim, salt],
        )
    )


async def spec_and_dataset(
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


async def refuse_revealed_elsewhere(w3: AsyncWeb3[Any], deployment: Deployment, task_id: int, sha256: str) -> None:
    """Refuse (TaskError) to commit an artifact already revealed in another task: TrainingTasks accepts
    the reveal but marks it (RevealedElsewhereFirst), and never accepts nor pays it (firstRevealOf)."""
    other, revealed_at = await training(w3, deployment).functions.firstRevealOf(bytes.fromhex(sha256)).call()
    if int(other) != 0 and int(other) != task_id:
        raise TaskError(
            f"this artifact (sha256 {sha256}) was revealed in task {int(other)} at {local_time(int(revealed_at))}: "
            f"a commitment to task {task_id} now would never be paid, so it is not submitted"
        )


async def train_and_submit(
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    trainer: LocalAccount,
    ipfs: IpfsClient,
    task_id: int,
    *,
    data_dir: Path,
    claim: int | None = None,
    compute: Compute | None = None,
    wait: bool = False,
    progress: Progress | None = None,
    on_reveal: OnReveal | None = None,
    max_artifact: int = ARTIFACT_LIMIT,
) -> dict[str, Any]:
    """Train the task's model (on `compute`'s Dask cluster when it has one) and commit to it; then, once
    the submission window has closed, reveal it — at once if it has, after waiting for it with `wait`,
    otherwise later by calling this again (or `reveal_submission`). A task this trainer committed to
    already is not trained again. `claim` overrides the claimed score (for tests of a dishonest
    trainer). A model artifact over `max_artifact` bytes is not committed to: validators fetch at most
    ARTIFACT_LIMIT, and a coordinator's worker can publish no more than the coordinator takes. Returns what
    was done: `committed` and `revealed`, the model, and when the reveal opens."""
    compute = compute or Compute()
    tasks = training(w3, deployment)
    task = await read_task(w3, deployment, task_id)
    require_open(task)
    path = secret_file(data_dir, deployment, "submission", task_id, trainer.address)
    started = time.monotonic()
    trained_now = False
    if int(await tasks.functions.submissionOf(task_id, trainer.address).call()) == 0 and read_secret(path) is not None:
        # Committed to from this data dir before, and not on chain yet: a worker killed after sending its commitment
        # (the job then comes back to it), or a send that failed. That commitment, never a new model and salt: the
        # secret kept is the only one that opens a commitment that may still be mined.
        if progress is not None:
            progress(f"task {task_id} was committed to from this data dir before: waiting for {trainer.address}'s "
                     "transactions on their way, then sending that commitment again if it is not on chain")  # fmt: skip
        await settle_pending(w3, trainer.address, task.submit_deadline)
        if int(await tasks.functions.submissionOf(task_id, trainer.address).call()) == 0:
            kept = read_secret(path) or {}
            commitment = submission_commitment(
                task_id, trainer.address, kept["model_cid"], bytes.fromhex(kept["sha256"]), int(kept["claim"]),
                bytes.fromhex(kept["salt"]),
            )  # fmt: skip
            await clock.catch_up(w3, trainer)
            await send(w3, trainer, tasks.functions.commitSubmission(task_id, commitment), what="commitSubmission")
    if int(await tasks.functions.submissionOf(task_id, trainer.address).call()) == 0:
        # Would the task take a commitment from this trainer now (stake, free stake for the bond, the
        # window, one each)? Asked before the training, which can take minutes; the commitment itself is
        # checked again before it is sent.
        await clock.catch_up(w3, trainer)
        probe = tasks.functions.commitSubmission(task_id, b"\x01" * 32)
        await preflight(w3, probe, {"from": trainer.address}, "commitSubmission")
        spec, dataset = await spec_and_dataset(ipfs, task.spec_cid, task.dataset_cid, compute.limits)
        if progress is not None:
            progress(f"training {spec.estimator.name} for task {task_id}")
        # A model finished after the submission window closed cannot be committed: the fit is stopped at the
        # window's end (then ok: false reaches a coordinator at once, not after max_train_seconds).
        left = task.submit_deadline - await clock.chain_now(w3)
        if left <= 0:
            raise TaskError(f"task {task_id}'s submissions closed while its data was fetched: not trained")
        seconds = min(spec.max_train_seconds, left)
        try:
            trained = await run_limited(
                fit_and_claim, spec, dataset, task_id, compute.limits, compute.cluster, timeout=seconds
            )
        except TrainingTimeout as exc:
            if seconds >= spec.max_train_seconds:
                raise
            raise TaskError(
                f"task {task_id}'s submissions closed while its model was training (the window had {seconds} s "
                f"left of the {spec.max_train_seconds} s the spec allows): stopped, not submitted"
            ) from exc
        claimed = trained.claimed_score if claim is None else claim
        if claimed < task.min_score:
            raise TaskError(
                f"the model scores {claimed / 1e6:.6f} on the holdout, below task {task_id}'s minimum "
                f"{task.min_score / 1e6:.6f}: not submitted (a commitment that cannot be revealed loses its bond)"
            )
        publishable = min(max_artifact, ARTIFACT_LIMIT)
        if len(trained.artifact) > publishable:
            raise TaskError(
                f"the model artifact is {len(trained.artifact):,} bytes, over the {publishable:,} that can be "
                f"published for task {task_id}'s validators: not submitted (a commitment that cannot be revealed "
                "loses its bond)"
            )
        await refuse_revealed_elsewhere(w3, deployment, task_id, trained.sha256)
        model_cid = str(ipfs.add_bytes(trained.artifact, 1))
        salt = os.urandom(32)
        kept = {"task": task_id, "model_cid": model_cid, "sha256": trained.sha256, "claim": claimed}
        write_secret(path, {**kept, "salt": salt.hex()})  # before the commitment: a crash after it can still reveal
        commitment = submission_commitment(
            task_id, trainer.address, model_cid, bytes.fromhex(trained.sha256), claimed, salt
        )
        await send(w3, trainer, tasks.functions.commitSubmission(task_id, commitment), what="commitSubmission")
        trained_now = True
    secret = read_secret(path)
    if secret is None:
        raise TaskError(
            f"trainer {trainer.address} committed to task {task_id}, but {path} holds no secret for it: "
            "it can be revealed only from the data dir it was committed from"
        )
    result: dict[str, Any] = {
        "task": task_id,
        "model_cid": secret["model_cid"],
        "sha256": secret["sha256"],
        "claimed": int(secret["claim"]),
        "committed": True,
        "trained": trained_now,
        "seconds": round(time.monotonic() - started, 2),
        "reveal_opens": task.submit_deadline + 1,
        "reveal_closes": task.reveal_deadline,
    }
    now = await clock.chain_now(w3)
    if not wait and now <= task.submit_deadline:
        result["revealed"] = False
        return result
    result["revealed"] = await reveal_submission(
        w3, deployment, trainer, task_id, data_dir, wait=wait, progress=progress, on_reveal=on_reveal
    )
    return result


async def reveal_submission(
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    trainer: LocalAccount,
    task_id: int,
    data_dir: Path,
    *,
    wait: bool = False,
    progress: Progress | None = None,
    on_reveal: OnReveal | None = None,
) -> bool:
    """Reveal this trainer's committed submission (after the submission deadline, until the reveal
    deadline; with `wait`, waiting for the window). True once revealed (now or before); a TaskError
    says when the window opens if it has not and `wait` is off."""
    tasks = training(w3, deployment)
    task = await read_task(w3, deployment, task_id)
    index = int(await tasks.functions.submissionOf(task_id, trainer.address).call())
    if index == 0:
        raise NoSubmission(f"trainer {trainer.address} has no submission to task {task_id}", task.submit_deadline)
    submission = await tasks.functions.getSubmission(task_id, index - 1).call()
    if submission[3]:  # revealed
        return True
    require_open(task)
    path = secret_file(data_dir, deployment, "submission", task_id, trainer.address)
    secret = read_secret(path)
    if secret is None:
        raise TaskError(f"no secret for trainer {trainer.address}'s submission to task {task_id} in {path}")
    opening = Opening.of(task_id, secret)
    if opening.commitment(trainer.address) != bytes(submission[5]):  # the commitment
        raise TaskError(
            f"the secret in {path} does not open trainer {trainer.address}'s commitment to task {task_id} (one from "
            "another chain with the same address, or another try's salt): it cannot be revealed"
        )
    if wait:
        what = f"task {task_id}'s submission window to close"
        await clock.wait_past(w3, task.submit_deadline, what, progress, trainer)
    elif await clock.chain_now(w3) <= task.submit_deadline:
        raise TaskError(
            f"task {task_id}'s submissions are revealed from {local_time(task.submit_deadline + 1)} until "
            f"{local_time(task.reveal_deadline)}: run this again then, or with --wait"
        )
    await clock.catch_up(w3, trainer)
    _number, stamp = await clock.latest(w3)
    if stamp > task.reveal_deadline:  # a block past the deadline is mined: no reveal can follow it
        raise TaskError(
            f"task {task_id}'s reveal window closed at {local_time(task.reveal_deadline)}: trainer "
            f"{trainer.address}'s submission can no longer be revealed"
        )
    if on_reveal is not None:
        await on_reveal(opening)
    call = tasks.functions.revealSubmission(
        task_id,
        secret["model_cid"],
        bytes.fromhex(secret["sha256"]),
        int(secret["claim"]),
        bytes.fromhex(secret["salt"]),
    )
    await send(w3, trainer, call, what="revealSubmission")
    return True
