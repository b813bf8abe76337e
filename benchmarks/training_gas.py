"""Gas of every TrainingTasks transaction, typical and worst cases, on the embedded py-evm chain (no node
needed): each row is the `gasUsed` of a real receipt (intrinsic cost included, refunds applied), the
largest of its kind where there are several.

    python benchmarks/training_gas.py [--out docs/gas-table.md]

With --out, the "## Training tasks" section of that file is replaced (or appended when it has none), so
this can run after benchmarks/gas_table.py (`make gas`) or alone. The worst settlements are at the
maximum of 16 submissions and 9 seats held by 9 different validators (validators are drawn with
replacement: a draw that seats one twice is made again from another block, so the worst case is
measured): accepted with every validator slashed and 15 bonds forfeited; an unusable test set and a
test set never revealed (16 different artifacts verified on the holdout, the earliest paid the
trainers' part, 9 validators paid one by one); a panel that committed and never revealed (9 slashed).
forge's TrainingGasTest (`--isolate`) measures the same cases in the contract tests' fixture and fails
any above 3,000,000 gas; its rows differ where the first of a kind here writes cold storage (the first
task, the first validator's places in the draw tree) or the draw is another.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3.logs import DISCARD

from ethml.chain import EML, dev_account, embedded_chain, send, token_contract, training_contract
from ethml.chain.accounts import dev_accounts
from ethml.chain.deploy import Deployment, Parameters, TrainingParameters, deploy_system
from ethml.chain.embedded import time_travel
from ethml.coordinator.client import sign_permit
from ethml.coordinator.permit import PermitDomain
from ethml.pow import keccak256
from ethml.training import clock
from ethml.training.flow import commit_test_set
from ethml.training.onchain import read_task
from ethml.training.terms import Terms, TermsDomain, sign_terms
from ethml.training.trainer import submission_commitment
from ethml.training.validator import score_commitment

TEST_CID = "bafkreitestsetcidxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
DATASET = "bafkreidatasetcidxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
MODEL = "bafkreimodelcidxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
SALT = b"\x01" * 32
STAKE = 100 * EML
REWARD = 50 * EML
#: Accounts: 0 the deployer and requester, 1-16 trainers, 17-56 validators, 57 a relayed requester. Forty
#: validators of equal stake seat nine different ones in about one draw of three.
TRAINERS = range(1, 17)
VALIDATORS = range(17, 57)
RELAYED = 57
SECTION = "## Training tasks"


def cid64(i: int) -> str:
    """A 64-byte CIDv1, distinct per `i` (the longest a model CID may be)."""
    return f"bafkrei{1000 + i}" + "a" * 53


class Bench:
    def __init__(self, w3: Any, deployment: Deployment, accounts: list[LocalAccount]) -> None:
        self.w3, self.dep, self.accounts = w3, deployment, accounts
        self.tasks = training_contract(w3, deployment.training or "")
        self.token = token_contract(w3, deployment.token)
        self.by_address = {a.address: a for a in accounts}
        self.rows: dict[str, int] = {}
        self.salts: dict[tuple[int, str], tuple[bool, list[int]]] = {}
        self.version = 1

    async def tx(self, label: str | None, who: LocalAccount | int, call: Any) -> Any:
        account = self.accounts[who] if isinstance(who, int) else who
        receipt = await send(self.w3, account, call)
        if label is not None:
            self.rows[label] = max(self.rows.get(label, 0), int(receipt["gasUsed"]))
        return receipt

    async def stake(self, who: int, role: int, label: str | None = None) -> None:
        await self.tx("approve (once per account)" if label else None, who, self.token.functions.approve(
            self.dep.training, 2**255))  # fmt: skip
        await self.tx(label, who, self.tasks.functions.stake(role, STAKE))

    def terms(self, validations: int, reward: int = REWARD) -> Terms:
        test = commit_test_set(TEST_CID, SALT)
        return Terms(DATASET, MODEL, test, reward, 100, 100, validations, 800_000, 0, 0, 13, self.version)

    async def create(self, validations: int, label: str | None = None) -> int:
        receipt = await self.tx(label, 0, self.tasks.functions.createTask(self.terms(validations).as_tuple()))
        return int(self.tasks.events.TaskCreated().process_receipt(receipt, errors=DISCARD)[0]["args"]["taskId"])

    def sha(self, task: int, trainer: int) -> bytes:
        """A different artifact per task and trainer (an artifact revealed in another task is refused)."""
        return keccak256(task.to_bytes(32, "big") + trainer.to_bytes(32, "big"))

    async def commit(self, task: int, trainer: int, cid: str, label: str | None = "commitSubmission") -> None:
        who = self.accounts[trainer]
        commitment = submission_commitment(task, who.address, cid, self.sha(task, trainer), 900_000, SALT)
        await self.tx(label, who, self.tasks.functions.commitSubmission(task, commitment))

    async def reveal(self, task: int, trainer: int, cid: str, label: str) -> None:
        call = self.tasks.functions.revealSubmission(task, cid, self.sha(task, trainer), 900_000, SALT)
        await self.tx(label, trainer, call)

    async def past(self, deadline: int) -> None:
        latest = int((await self.w3.eth.get_block("latest"))["timestamp"])
        if latest <= deadline:
            time_travel(self.w3, deadline - latest + 1)

    async def to_test_window(self, task: int) -> None:
        await self.past((await read_task(self.w3, self.dep, task)).reveal_deadline)
        await self.tx("revealTestSet", 0, self.tasks.functions.revealTestSet(task, TEST_CID, SALT))

    async def draw(self, task: int, label: str, distinct: bool = False) -> list[LocalAccount]:
        """Mine to the draw's block and draw. With `distinct`, until every seat is another validator's:
        a draw that seats one twice is undone (a snapshot) and made again from a block with another
        timestamp, hence another hash."""
        tester = self.w3.provider.ethereum_tester
        state = await read_task(self.w3, self.dep, task)
        snapshot = tester.take_snapshot() if distinct else None
        for attempt in range(40):
            if attempt:
                tester.revert_to_snapshot(snapshot)
                time_travel(self.w3, attempt)
            await clock.mine(self.w3, state.draw_block - int(await self.w3.eth.block_number) + 1)
            receipt = await send(self.w3, self.accounts[0], self.tasks.functions.drawPanel(task))
            seated = await self.seated(task)
            if not distinct or len(seated) == state.validations:
                self.rows[label] = max(self.rows.get(label, 0), int(receipt["gasUsed"]))
                return seated
        raise RuntimeError(f"no draw of task {task} seated {state.validations} different validators")

    async def seated(self, task: int) -> list[LocalAccount]:
        """The panel's validators, each once (one drawn k times holds k seats and votes once)."""
        state = await read_task(self.w3, self.dep, task)
        seats = [await self.tasks.functions.getSeat(task, i).call() for i in range(state.validations)]
        out: list[LocalAccount] = []
        for s in seats:
            if int(s[1]) != 0 and self.by_address[s[0]] not in out:
                out.append(self.by_address[s[0]])
        return out

    async def commit_vote(self, task: int, who: LocalAccount, unusable: bool, scores: list[int]) -> None:
        commitment = score_commitment(task, who.address, unusable, scores, SALT)
        self.salts[(task, who.address)] = (unusable, scores)
        await self.tx("commitScores", who, self.tasks.functions.commitScores(task, commitment))

    async def reveal_vote(self, task: int, who: LocalAccount, label: str) -> None:
        unusable, scores = self.salts[(task, who.address)]
        await self.tx(label, who, self.tasks.functions.revealScores(task, unusable, scores, SALT))

    async def top_up(self) -> None:
        """Stakes back to the minimum after slashes and forfeited bonds (a validator re-enters the draw)."""
        for index in (*TRAINERS, *VALIDATORS):
            role = 0 if index in TRAINERS else 1
            amount, _locked, unlock, _work, _slot, _active = await self.tasks.functions.stakeOf(
                self.accounts[index].address, role
            ).call()
            if amount < STAKE and unlock == 0:
                await self.tx(None, index, self.tasks.functions.stake(role, STAKE - amount))
        await clock.mine(self.w3)  # stakes count for draws fixed from the next block on

    async def big_task(self, abandoned: bool = False) -> tuple[int, list[LocalAccount]]:
        """9 seats held by 9 different validators, 16 revealed submissions with 64-byte CIDs, the test
        set revealed (or, `abandoned`, never: the first finalizeTask after its deadline fixes the draw
        of the panel that checks the submissions on the holdout)."""
        await self.top_up()
        task = await self.create(9)
        for i, trainer in enumerate(TRAINERS):
            await self.commit(task, trainer, cid64(i))
        await self.past((await read_task(self.w3, self.dep, task)).submit_deadline)
        for i, trainer in enumerate(TRAINERS):
            await self.reveal(task, trainer, cid64(i), "revealSubmission (64-byte CID)")
        if abandoned:
            await self.past((await read_task(self.w3, self.dep, task)).test_deadline)
            await self.tx("finalizeTask: test set never revealed, fixes the check's draw", 0,
                          self.tasks.functions.finalizeTask(task))  # fmt: skip
        else:
            await self.to_test_window(task)
        return task, await self.draw(task, "drawPanel, 9 seats", distinct=True)

    async def all_vote(self, task: int, seated: list[LocalAccount], unusable: bool, scores: list[int]) -> None:
        for who in seated:
            await self.commit_vote(task, who, unusable, scores)
        for who in seated:
            await self.reveal_vote(task, who, "revealScores, 16 submissions")


def scores16(first: int, rest: int) -> list[int]:
    return [first] + [rest] * 15


async def measure() -> list[tuple[str, int]]:
    accounts = dev_accounts(RELAYED + 1)
    w3 = await embedded_chain(accounts=len(accounts))
    params = TrainingParameters(registrations_per_period=3)
    deployment = await deploy_system(
        w3,
        dev_account(0),
        parameters=Parameters(),
        holders={a.address: 10_000 * EML for a in accounts},
        training=params,
    )
    b = Bench(w3, deployment, accounts)
    b.version = int(await b.tasks.functions.parametersVersion().call())
    await b.stake(1, 0, "stake, trainer, first time")
    for trainer in TRAINERS[1:]:
        await b.stake(trainer, 0)
    await b.stake(VALIDATORS[0], 1, "stake, validator, first time (enters the draw)")
    for validator in VALIDATORS[1:]:
        await b.stake(validator, 1)
    await b.tx(None, 0, b.token.functions.approve(deployment.training, 2**255))
    await clock.mine(w3)
    await b.tx("stake, validator, adding to its stake", VALIDATORS[0], b.tasks.functions.stake(1, EML))
    await clock.mine(w3)

    # A task from creation to settlement: 3 seats, 2 submissions, accepted, one bond forfeited.
    task = await b.create(3, "createTask")
    await b.commit(task, 1, MODEL)
    await b.commit(task, 2, MODEL + "j")
    await b.past((await read_task(w3, deployment, task)).submit_deadline)
    await b.reveal(task, 1, MODEL, "revealSubmission")
    await b.reveal(task, 2, MODEL + "j", "revealSubmission")
    await b.to_test_window(task)
    for who in await b.draw(task, "drawPanel, 3 seats"):
        await b.commit_vote(task, who, False, [950_000, 0])  # the second failed its checks: bond forfeited
    for who in await b.seated(task):
        await b.reveal_vote(task, who, "revealScores, 2 submissions")
    label = "finalizeTask: 3 seats, 2 submissions, accepted and registered, 1 bond forfeited"
    await b.tx(label, 0, b.tasks.functions.finalizeTask(task))
    await b.tx("burnPenalties", 0, b.tasks.functions.burnPenalties())

    # Relayed: terms signed by another account, paid by its permit, sent by a third.
    requester = accounts[RELAYED]
    domain = PermitDomain(deployment.chain_id, deployment.token, deployment.training or "")
    expiry = int((await w3.eth.get_block("latest"))["timestamp"]) + 3600
    terms = b.terms(3)
    signature = sign_terms(requester.key, TermsDomain(deployment.chain_id, deployment.training or ""), terms, 0, expiry)
    permit = sign_permit(requester, domain, REWARD, 0, expiry)
    p = (permit["deadline"], permit["v"], bytes.fromhex(permit["r"][2:]), bytes.fromhex(permit["s"][2:]))
    call = b.tasks.functions.createTaskFor(terms.as_tuple(), requester.address, expiry, signature, p)
    await b.tx("createTaskFor (relayed, signed terms and permit)", VALIDATORS[-1], call)
    await b.tx("useNonce", requester, b.tasks.functions.useNonce())

    # The worst settlements, at 16 submissions and 9 seats of 9 different validators.
    task, seated = await b.big_task()
    for v, who in enumerate(seated):  # each validator alone far on one submission: all 9 slashed
        scores = scores16(950_000, 0)
        scores[v + 1] = 1_000_000
        await b.commit_vote(task, who, False, scores)
    for who in seated:
        await b.reveal_vote(task, who, "revealScores, 16 submissions")
    label = "finalizeTask: 9 seats, 16 submissions, 9 slashed, 15 bonds forfeited, registered"
    await b.tx(label, 0, b.tasks.functions.finalizeTask(task))
    assert (await read_task(w3, deployment, task)).status == "accepted"
    task, seated = await b.big_task()
    await b.all_vote(task, seated, True, [900_000] * 16)  # unusable; 16 artifacts verified on the holdout
    label = "finalizeTask: 9 seats, 16 submissions, unusable, 16 verified (the earliest paid, 9 seats paid)"
    await b.tx(label, 0, b.tasks.functions.finalizeTask(task))
    assert (await read_task(w3, deployment, task)).status == "unusable"
    task, seated = await b.big_task(abandoned=True)
    await b.all_vote(task, seated, True, [900_000] * 16)
    label = "finalizeTask: 9 seats, 16 submissions, abandoned, 16 verified (the earliest paid, 9 seats paid)"
    await b.tx(label, 0, b.tasks.functions.finalizeTask(task))
    assert (await read_task(w3, deployment, task)).status == "abandoned"
    task, seated = await b.big_task()
    for who in seated:
        await b.commit_vote(task, who, False, scores16(950_000, 100_000))
    await b.past((await read_task(w3, deployment, task)).reveal_closes)
    label = "finalizeTask: 9 seats committed, none revealed (9 slashed), 16 submissions"
    await b.tx(label, 0, b.tasks.functions.finalizeTask(task))
    # The largest draw: 9 seats while the requester and all 16 trainers hold validator stakes the draw
    # must leave out; then 9 no-shows replaced and the 9 seats drawn again.
    for who in (0, *TRAINERS):
        await b.stake(who, 1)
    task, _seated = await b.big_task()
    await b.past((await read_task(w3, deployment, task)).score_deadline)
    await b.tx("replaceNoShows, 9 no-shows", 0, b.tasks.functions.replaceNoShows(task))
    await b.draw(task, "drawPanel, 9 seats", distinct=True)
    for who in (0, *TRAINERS):  # the trainers' and requester's validator stakes leave the draw again
        await b.tx(None, who, b.tasks.functions.setActive(False))
    for index in VALIDATORS:  # the benched no-shows step back in
        active = (await b.tasks.functions.stakeOf(accounts[index].address, 1).call())[5]
        if not active:
            await b.tx(None, index, b.tasks.functions.setActive(True))

    # Leaving, and the registration cap (three a day here): the fourth accepted task is deferred.
    await b.top_up()
    for i in range(2):
        task = await b.create(1)
        await b.commit(task, 1, MODEL, label=None)
        await b.past((await read_task(w3, deployment, task)).submit_deadline)
        await b.reveal(task, 1, MODEL, "revealSubmission")
        await b.to_test_window(task)
        for who in await b.draw(task, "drawPanel, 1 seat"):
            await b.commit_vote(task, who, False, [950_000])
            await b.reveal_vote(task, who, "revealScores, 1 submission")
        label = "finalizeTask: registration deferred by the cap" if i else None  # the first one takes the last
        await b.tx(label, 0, b.tasks.functions.finalizeTask(task))
    state = await read_task(w3, deployment, task)
    assert state.registration == "deferred", state
    time_travel(w3, params.registration_period + 1)
    await b.tx("retryRegistration", 0, b.tasks.functions.retryRegistration(task))

    # Stepping out of the draw and back; leaving (a validator with no open work: its weight leaves the draw).
    await b.top_up()
    await b.tx("setActive", VALIDATORS[0], b.tasks.functions.setActive(False))
    await clock.mine(w3)
    await b.tx("setActive", VALIDATORS[0], b.tasks.functions.setActive(True))
    await b.stake(RELAYED, 1)
    await clock.mine(w3)
    await b.tx("requestUnstake", RELAYED, b.tasks.functions.requestUnstake(1))
    time_travel(w3, params.unstake_delay + 1)  # at least a day
    await b.tx("withdrawStake", RELAYED, b.tasks.functions.withdrawStake(1))
    return list(b.rows.items())


def section(rows: list[tuple[str, int]], seconds: float) -> str:
    table = "\n".join(["| TrainingTasks transaction | gas |", "|---|---:|", *(f"| {k} | {v:,} |" for k, v in rows)])
    return (
        f"{SECTION}\n\n"
        "Measured by `python benchmarks/training_gas.py` (part of `make gas`) on the embedded py-evm chain: the\n"
        "`gasUsed` of real receipts (intrinsic cost included, refunds applied), the largest of each kind. The\n"
        "worst settlements are at the maximum of 16 submissions and 9 seats held by 9 different validators\n"
        "(drawn with replacement, a validator holding k seats is paid and settled once, so 9 different ones\n"
        "cost the most); the worst draw leaves the requester and 16 trainers with validator stakes out. The\n"
        "first task and the first validator stake here write cold storage (a fresh market). forge's\n"
        "`TrainingGasTest` (`node_modules/.bin/forge test --match-contract TrainingGasTest --isolate -vv`)\n"
        "measures the same cases and fails any training transaction above 3,000,000 gas. A block holds 30-36 M\n"
        "gas; a validator's stake change costs about 0.5 M (the draw tree keeps the history of every node it\n"
        f"touches, which lets a draw read a past block's stakes). The run took {seconds:.0f} s.\n\n"
        f"{table}\n"
    )


def write(out: Path, text: str) -> None:
    """Replace the training section of `out` (up to the next `## ` heading), or append it."""
    old = out.read_text() if out.exists() else ""
    match = re.search(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", old, flags=re.S | re.M)
    if match:
        new = old[: match.start()] + text + ("\n" + old[match.end() :] if old[match.end() :] else "")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text
    out.write_text(new)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the training section into this Markdown file")
    parser.add_argument("--append", action="store_true", help="(kept for `make gas`; the section is replaced)")
    args = parser.parse_args()
    os.environ.setdefault("ETHML_LOG_LEVEL", "warning")
    started = time.monotonic()
    measured = asyncio.run(measure())
    text = section(measured, time.monotonic() - started)
    print(text)
    if args.out:
        write(args.out, text)
