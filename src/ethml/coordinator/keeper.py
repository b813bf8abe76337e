"""The deadline keeper: moves the live tasks along with the relayer key, each step one anyone may
take once it is due: reveals the test sets this coordinator holds in the contract's window, draws the
panel once its block is mined, replaces drawn validators that did not commit, finalizes what can be
settled. It reads each task's state from the chain and decides as the contract will (`finalizable`).
Deadlines are wall-clock time: on a development chain that mines only on demand, a block is mined
when a deadline has passed on the clock of its next block (the wall clock, plus any time jump) but not
in its latest block, or a draw's block is due. It runs on the leader only (`leader`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from web3.exceptions import TimeExhausted

from ethml.coordinator.chain import Chain, send_raw
from ethml.coordinator.store import Store
from ethml.errors import ChainError, TransactionReverted
from ethml.training import clock
from ethml.training.onchain import MAX_ROUNDS, TaskError, TaskState, finalizable, read_task

log = structlog.get_logger("ethml.coordinator")

LIVE = ("open", "training", "validating")
#: Task documents read from Redis at a time.
PAGE = 200


def _deadlines(t: TaskState) -> list[int]:
    out = [t.submit_deadline, t.reveal_deadline, t.test_deadline]
    if t.score_deadline:
        out += [t.score_deadline, t.reveal_closes]
    return out


_wall = time.time  # (a test moves it)


async def _next_block_clock(chain: Chain) -> int:
    """The time the next block will have, as near as can be told: the pending block's timestamp (a development
    chain's clock, time jumps included), or the wall clock where that is later (the embedded chain fixes its
    pending block's time when the block before it is mined, so on an idle chain it falls behind)."""
    return max(await clock.chain_now(chain.w3), int(_wall()))


async def _chain_time(chain: Chain, tasks: list[TaskState], ahead: int) -> int:
    """The latest block's timestamp, after mining a block on a development chain where a deadline has
    passed on the clock its next block will have, `ahead`, but not in its latest block, or a draw's block is
    still to be mined. That clock is the later of the pending block's (the wall clock plus any time jump,
    `evm_increaseTime`) and the wall clock (`_next_block_clock`), read once per pass. Compared with the wall
    clock alone, a chain moved ahead mined no block while its deadlines passed on its own clock, and a task's
    test-set window went by unrevealed."""
    number, now = await clock.latest(chain.w3)
    if await clock.is_dev_chain(chain.w3):
        due = any(now <= d < ahead for t in tasks for d in _deadlines(t))
        draws = [t.draw_block for t in tasks if t.draw_block and t.draw_block >= number]
        try:
            if draws:
                await clock.mine(chain.w3, max(draws) - number + 1)
            elif due:
                await clock.mine(chain.w3)
        except ChainError as exc:
            log.debug("cannot_mine", error=str(exc))
        number, now = await clock.latest(chain.w3)
    return now


async def _live_docs(store: Store) -> AsyncIterator[dict[str, Any]]:
    """Every task document in a live status, a page at a time (all of them, however many)."""
    for status in LIVE:
        cursor = None
        while True:
            docs, cursor = await store.list_tasks(status, cursor, PAGE)
            for doc in docs:
                yield doc
            if cursor is None:
                break


async def keep_deadlines(chain: Chain, store: Store) -> None:
    """One pass: each live task on chain whose step is due gets it (`_step`). It read only the newest 200 tasks
    of each live status: past them, tasks never had their test set revealed, a panel drawn or a settlement. Now
    every live task is read, except those still in their submission window on the clock of the next block
    (nothing is due for one before its submit deadline), which cost no chain call."""
    ahead = await _next_block_clock(chain)
    live: list[tuple[dict[str, Any], TaskState]] = []
    async for doc in _live_docs(store):
        if doc.get("chain_task_id") is None or int(doc.get("submit_deadline") or 0) >= ahead:
            continue
        try:
            live.append((doc, await read_task(chain.w3, chain.deployment, int(doc["chain_task_id"]))))
        except TaskError as exc:
            log.warning("keeper_read", task=doc["id"], error=str(exc))
    if not live:
        return
    now = await _chain_time(chain, [t for _d, t in live], ahead)
    number = int(await chain.w3.eth.block_number)
    for doc, t in live:
        if not t.open:
            continue
        try:
            await _step(chain, store, doc, t, now, number)
        except TransactionReverted as exc:
            log.warning("keeper", task=doc["id"], error=str(exc), revert=exc.error.generic() if exc.error else None)
            # The journaled transaction reverted (someone else revealed, drew or finalized first): forget it
            # so the next pass decides afresh from the chain's state.
            await store.update_task(doc["id"], _forget_journal)
        except (ChainError, TimeExhausted) as exc:
            # Not mined yet, refused, cancelled, the lock busy: this task's step again next pass, and the other
            # tasks' steps now (a failure that keeps coming for one task must not hold up the others).
            log.warning("keeper_step_failed", task=doc["id"], error=str(exc))


async def _step(chain: Chain, store: Store, doc: dict[str, Any], t: TaskState, now: int, number: int) -> None:
    """The one step this task is due for, if any."""
    tasks = chain.tasks
    secret = doc.get("test_set")
    if not t.test_revealed and secret and t.revealed > 0 and t.reveal_deadline < now <= t.test_deadline:
        call = tasks.functions.revealTestSet(t.id, secret["cid"], bytes.fromhex(secret["salt"][2:]))
        await send_raw(chain, store, call, "revealTestSet", (doc["id"], "reveal"))
    elif t.draw_block and number > t.draw_block:
        await send_raw(chain, store, tasks.functions.drawPanel(t.id), "drawPanel", (doc["id"], f"draw-{t.round + 1}"))
        await store.update_task(doc["id"], lambda d: _forget(d, f"draw-{t.round + 1}"))
    elif t.round and t.committed < t.validations and t.round < MAX_ROUNDS and now > t.score_deadline:
        name = f"replace-{t.round}"
        await send_raw(chain, store, tasks.functions.replaceNoShows(t.id), "replaceNoShows", (doc["id"], name))
    elif finalizable(t, now):
        await send_raw(chain, store, tasks.functions.finalizeTask(t.id), "finalizeTask", (doc["id"], "finalize"))
        # Mined: forgotten, as a draw is. A task whose test set was never revealed needs two: the first fixes the
        # holdout panel's draw, the second settles; a finalize kept in the journal was taken for the second (its
        # receipt found, nothing sent), and the task stayed open for good.
        await store.update_task(doc["id"], lambda d: _forget(d, "finalize"))


def _forget(doc: dict[str, Any], name: str) -> None:
    """Drop a journaled transaction that may be needed again under the same name (a draw fixed anew
    because its block's hash was gone)."""
    doc.get("raw", {}).pop(name, None)
    doc.get("raw_nonce", {}).pop(name, None)
    doc.get("raw_attempts", {}).pop(name, None)


def _forget_journal(doc: dict[str, Any]) -> None:
    for name in list(doc.get("raw", {})):
        if name != "create":
            _forget(doc, name)
