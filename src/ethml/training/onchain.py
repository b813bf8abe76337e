"""Reading TrainingTasks: a task, its submissions and seats, stakes, as typed values; where a task
stands, in words; the secrets a party keeps between committing and revealing (DATA_DIR/training)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_typing import ChecksumAddress
from web3 import AsyncWeb3

from ethml.chain.deploy import Deployment, training_contract
from ethml.chain.reverts import is_revert, local_time
from ethml.chain.tx import revert_reason
from ethml.errors import EthmlError

ROLES = {"trainer": 0, "validator": 1}
STATUSES = ("none", "open", "accepted", "rejected", "unusable", "abandoned", "empty", "undecided")
REGISTRATIONS = ("none", "registered", "below the minimum reward", "deferred", "failed", "closed")
SEAT_STATES = ("empty", "drawn", "committed", "revealed")
BONDS = ("locked", "released", "forfeited")
#: TrainingTasks.MAX_ROUNDS: the first draw and up to two for no-shows' seats.
MAX_ROUNDS = 3


class TaskError(EthmlError, ValueError):
    """A training task step that cannot be taken; the message says why and what to do."""


class NotDrawn(TaskError):
    """The validator holds no seat on the task's panel."""


class NoSubmission(TaskError):
    """The trainer has no submission to the task: yet, while a commitment it sent may still be mined (until
    `submit_deadline`, chain time), or at all after it."""

    def __init__(self, message: str, submit_deadline: int) -> None:
        super().__init__(message)
        self.submit_deadline = submit_deadline


def training(w3: AsyncWeb3[Any], deployment: Deployment) -> Any:
    if deployment.training is None:
        raise TaskError("this deployment has no TrainingTasks contract (redeploy with a current ethml)")
    return training_contract(w3, deployment.training)


def _named(components: list[dict[str, Any]], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c, v in zip(components, value, strict=True):
        out[c["name"]] = _named(c["components"], v) if c["type"] == "tuple" else v
    return out


async def read_struct(contract: Any, fn: str, *args: Any, block: int | None = None) -> dict[str, Any]:
    """A view returning one struct, as a dict by field name (at `block`, the latest by default); a revert
    (UnknownTask, ...) becomes a TaskError in words."""
    try:
        call = getattr(contract.functions, fn)(*args)
        value = await (call.call() if block is None else call.call(block_identifier=block))
    except Exception as exc:
        if not is_revert(exc):
            raise
        raise TaskError(revert_reason(exc, contract.abi)) from None
    item = next(i for i in contract.abi if i.get("type") == "function" and i.get("name") == fn)
    return _named(item["outputs"][0]["components"], value)


@dataclass(frozen=True)
class TaskState:
    """`TrainingTasks.getTask`, with the task id and the reveal period of its rules."""

    id: int
    requester: str
    reward: int
    submit_deadline: int
    reveal_deadline: int
    test_deadline: int
    score_deadline: int
    min_score: int
    score_period: int
    status: str
    validations: int
    submissions: int
    revealed: int
    draw_block: int
    round: int
    seated: int
    committed: int
    votes: int
    test_revealed: bool
    accepted: int  # submission index + 1, 0 for none
    registration: str
    model_id: int
    bond: int
    reveal_period: int
    #: How far (millionths) a holdout score may lie from its claim (TrainingSettlement's claimSlack).
    claim_slack: int
    dataset_cid: str
    spec_cid: str
    test_cid: str

    @property
    def open(self) -> bool:
        return self.status == "open"

    @property
    def reveal_closes(self) -> int:
        """The end of the score reveals of the current panel."""
        return self.score_deadline + self.reveal_period

    @property
    def reveals_open(self) -> bool:
        """Whether no seat can be taken any more (scores may be revealed, if the window has not closed)."""
        return self.committed == self.validations or self.round >= MAX_ROUNDS


async def read_task(w3: AsyncWeb3[Any], deployment: Deployment, task_id: int) -> TaskState:
    t = await read_struct(training(w3, deployment), "getTask", task_id)
    return TaskState(
        id=task_id,
        requester=t["requester"],
        reward=int(t["reward"]),
        submit_deadline=int(t["submitDeadline"]),
        reveal_deadline=int(t["revealDeadline"]),
        test_deadline=int(t["testDeadline"]),
        score_deadline=int(t["scoreDeadline"]),
        min_score=int(t["minScore"]),
        score_period=int(t["scorePeriod"]),
        status=STATUSES[int(t["status"])],
        validations=int(t["validations"]),
        submissions=int(t["submissions"]),
        revealed=int(t["revealed"]),
        draw_block=int(t["drawBlock"]),
        round=int(t["round"]),
        seated=int(t["seated"]),
        committed=int(t["committed"]),
        votes=int(t["votes"]),
        test_revealed=bool(t["testRevealed"]),
        accepted=int(t["accepted"]),
        registration=REGISTRATIONS[int(t["registration"])],
        model_id=int(t["modelId"]),
        bond=int(t["rules"]["bond"]),
        reveal_period=int(t["rules"]["revealPeriod"]),
        claim_slack=int(t["rules"]["claimSlack"]),
        dataset_cid=t["datasetCid"],
        spec_cid=t["specCid"],
        test_cid=t["testCid"],
    )


def require_open(task: TaskState) -> None:
    if not task.open:
        raise TaskError(f"task {task.id} is closed ({task.status})")


async def submissions(w3: AsyncWeb3[Any], deployment: Deployment, task: TaskState) -> list[dict[str, Any]]:
    contract = training(w3, deployment)
    return [await read_struct(contract, "getSubmission", task.id, i) for i in range(task.submissions)]


async def seats(w3: AsyncWeb3[Any], deployment: Deployment, task: TaskState) -> list[dict[str, Any]]:
    contract = training(w3, deployment)
    return [await read_struct(contract, "getSeat", task.id, i) for i in range(task.validations)]


def finalizable(t: TaskState, now: int) -> bool:
    """Whether finalizeTask would succeed at time `now` (TrainingSettlement._readiness)."""
    if not t.open:
        return False
    if t.revealed == 0:
        return now > (t.submit_deadline if t.submissions == 0 else t.reveal_deadline)
    if not t.test_revealed:
        if now <= t.test_deadline:
            return False
        if t.round == 0 and not t.draw_block:
            return True  # this finalizeTask fixes the draw of the holdout panel; the task settles after it
    if t.draw_block or (t.committed < t.validations and t.round < MAX_ROUNDS):
        return False
    return t.votes >= t.validations or now > t.reveal_closes


def phase(task: TaskState, now: int) -> str:
    """What the task waits for next, in words, with the times (local wall clock)."""
    t = task
    if not t.open:
        return f"settled: {t.status}"
    if now <= t.submit_deadline:
        return f"trainers commit until {local_time(t.submit_deadline)}; they reveal after it"
    if t.revealed == 0 and now <= t.reveal_deadline:
        return f"trainers reveal their submissions until {local_time(t.reveal_deadline)}"
    if t.revealed == 0:
        return "no submission was revealed: anyone may finalize it (the requester is refunded)"
    if now <= t.reveal_deadline:
        return (
            f"trainers reveal until {local_time(t.reveal_deadline)}; then the test set is revealed "
            f"(until {local_time(t.test_deadline)})"
        )
    if not t.test_revealed:
        if now <= t.test_deadline:
            return f"the requester reveals the test set until {local_time(t.test_deadline)}"
        if t.round == 0 and not t.draw_block:
            return (
                "the test set was never revealed: the next finalizeTask (anyone may) fixes the draw of a panel "
                "that checks the submissions on the dataset's holdout; the earliest verified one is paid"
            )
    if t.draw_block:
        return f"validators are drawn from block {t.draw_block}'s hash once it is mined (anyone may draw them)"
    if t.committed < t.validations and t.round < MAX_ROUNDS:
        if now <= t.score_deadline:
            return (
                f"drawn validators commit their scores until {local_time(t.score_deadline)} "
                f"({t.committed} of {t.validations})"
            )
        return "some drawn validators did not commit: anyone may replace them (replaceNoShows)"
    if t.votes < t.validations and now <= t.reveal_closes:
        return f"validators reveal their scores until {local_time(t.reveal_closes)} ({t.votes} of {t.validations})"
    return "ready to finalize"


# ------------------------------------------------------------------ secrets kept between commit and reveal


def secrets_dir(data_dir: Path, deployment: Deployment) -> Path:
    """Where this deployment's training secrets live: one directory per chain and TrainingTasks, so a
    redeployed devnet's task 1 is not an earlier one's."""
    return data_dir / "training" / f"{deployment.chain_id}-{(deployment.training or '').lower()}"


def secret_file(data_dir: Path, deployment: Deployment, kind: str, task_id: int, address: str | None = None) -> Path:
    """`kind` is test-set (the requester's), submission or scores (by account)."""
    suffix = f"-{address.lower()}" if address else ""
    return secrets_dir(data_dir, deployment) / f"{kind}-{task_id}{suffix}.json"


def write_secret(path: Path, data: dict[str, Any]) -> None:
    """Written before the commitment is sent, readable only by its owner, replaced atomically. A secret that is
    there already is never replaced (TaskError): a commitment made from it may be on its way to the chain (sent by
    a process killed before it was mined), and a new secret would not open it: its reveal, and the bond, lost."""
    if read_secret(path) is not None:
        raise TaskError(f"{path} holds the secret of a commitment that may be on its way already: it is not replaced")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _hex32(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _cid_text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 128


#: What each kind of secret (the start of its file's name) must hold for its reveal, each field checked.
SECRET_FIELDS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "submission": {"model_cid": _cid_text, "sha256": _hex32, "claim": _count, "salt": _hex32},
    "scores": {
        "unusable": lambda v: isinstance(v, bool),
        "scores": lambda v: isinstance(v, list) and all(map(_count, v)),
        "salt": _hex32,
    },
    "test-set": {"test_cid": _cid_text, "salt": _hex32},
}


def read_secret(path: Path) -> dict[str, Any] | None:
    """The secret in `path`, or None when there is none (no file, or not JSON). One that lacks a field its
    reveal needs, or holds it malformed, raises a TaskError naming the file: it cannot be revealed (a file
    edited by hand, or written by another program), and retrying would not change that."""
    data = None
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
    if not isinstance(data, dict):
        return None
    kind = next((k for k in SECRET_FIELDS if path.name.startswith(f"{k}-")), None)
    for name, check in SECRET_FIELDS.get(kind or "", {}).items():
        if name not in data or not check(data[name]):
            problem = "lacks" if name not in data else "holds a malformed"
            raise TaskError(f"the {kind} secret in {path} {problem} {name!r}: it cannot be revealed")
    return data


async def settle_pending(w3: AsyncWeb3[Any], address: ChecksumAddress, until: int) -> None:
    """Wait until `address` has no transaction pending (its pending nonce is its latest block's), or until the
    chain's clock passes `until`: a transaction sent by a process of this account that was killed before it was
    mined is mined, or dropped, before the same step is taken again."""
    from ethml.training import clock

    while await w3.eth.get_transaction_count(address, "pending") > await w3.eth.get_transaction_count(address):
        if await clock.chain_now(w3) > until:
            return
        await asyncio.sleep(1.0)
