"""Which tasks the deadline keeper reads from the chain in a pass."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from ethml.chain import dev_account
from ethml.chain.embedded import time_travel
from ethml.coordinator import keeper as keeper_module
from ethml.coordinator import redis_keys as k
from ethml.coordinator.chain import Chain
from ethml.coordinator.store import Store
from ethml.training.flow import reveal_submission, task_info, train_and_submit
from ethml.training.onchain import TaskError, read_task
from tests.node.conftest import make_system
from tests.training.test_e2e import FIRST, PERIOD, REVEAL, _panel_votes, _post_wine_task, _stake_everyone

NOW = 1_800_000_000
RELAYER = 2  # (no role: it pays gas; the test's other accounts send their own transactions)


async def _store_tasks(store: Store, status: str, first: int, count: int, submit_deadline: int | None) -> list[int]:
    """`count` task documents in `status`, on-chain ids from `first`, as the follower leaves them."""
    ids = list(range(first, first + count))
    for chain_id in ids:
        task_id = f"{chain_id:032x}"
        doc = {"id": task_id, "created_at": NOW - 10_000 + chain_id, "status": status, "chain_task_id": chain_id}
        if submit_deadline is not None:
            doc["submit_deadline"] = submit_deadline
        await store.redis.set(k.task(task_id), json.dumps(doc))
        await store.redis.zadd(k.TASKS, {task_id: doc["created_at"]})
        await store.redis.zadd(k.tasks_in(status), {task_id: doc["created_at"]})
    return ids


async def test_the_keeper_reads_every_live_task_past_its_submission_window_and_no_other(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper read only the newest 200 tasks of each live status: past them, a task never had its test set
    revealed, a panel drawn or a settlement. It now reads them all, except those still in their submission
    window on the next block's clock (nothing is due for them yet; each read is a chain call) and those settled."""
    due = await _store_tasks(redis_store, "open", 1, 230, NOW - 5)  # the newest 200 and 30 more
    due += await _store_tasks(redis_store, "training", 300, 20, NOW - 5)
    due += await _store_tasks(redis_store, "validating", 400, 3, None)  # (no deadline known: read)
    await _store_tasks(redis_store, "open", 500, 40, NOW)  # in their window: the deadline is not past yet
    await _store_tasks(redis_store, "accepted", 600, 5, NOW - 5)  # settled
    read: list[int] = []

    async def read_task(_w3: Any, _deployment: Any, task_id: int) -> Any:
        read.append(task_id)
        raise TaskError("read only to count it")

    async def chain_now(_w3: Any) -> int:
        return NOW

    monkeypatch.setattr(keeper_module, "read_task", read_task)
    monkeypatch.setattr(keeper_module.clock, "chain_now", chain_now)
    chain = types.SimpleNamespace(w3=None, deployment=None)
    await keeper_module.keep_deadlines(chain, redis_store)  # type: ignore[arg-type]
    assert sorted(read) == sorted(due)


async def test_the_keeper_settles_a_task_whose_test_set_was_never_revealed(redis_store: Store, tmp_path: Path) -> None:
    """Such a task takes two finalizeTask: the first fixes the draw of a panel that checks the artifacts on the
    dataset's holdout, the second settles it once the panel has voted. The keeper journaled both under one name,
    found the first one's receipt when the second was due, took it for the second and sent nothing: the task
    stayed open for good. Its requester's test set is not revealed here; the keeper sends both."""
    system = await make_system(tmp_path)
    w3, dep = system.w3, system.deployment
    await _stake_everyone(system)
    task_id = await _post_wine_task(system, tmp_path)
    await train_and_submit(w3, dep, dev_account(FIRST), system.ipfs, task_id, data_dir=tmp_path)
    time_travel(w3, PERIOD + 1)
    await reveal_submission(w3, dep, dev_account(FIRST), task_id, tmp_path)
    time_travel(w3, 2 * REVEAL + 2)  # past the submissions' reveals and the test-set window
    state = await read_task(w3, dep, task_id)
    doc = {"id": "a" * 32, "created_at": NOW, "status": "training", "chain_task_id": task_id, "transactions": {}}
    await redis_store.redis.set(k.task(doc["id"]), json.dumps({**doc, "submit_deadline": state.submit_deadline}))
    await redis_store.redis.zadd(k.TASKS, {doc["id"]: NOW})
    await redis_store.redis.zadd(k.tasks_in("training"), {doc["id"]: NOW})
    chain = await Chain.connect(w3, dep, dev_account(RELAYER))

    await keeper_module.keep_deadlines(chain, redis_store)  # the first finalizeTask: the panel's draw is fixed
    state = await read_task(w3, dep, task_id)
    assert state.open and state.draw_block and not state.test_revealed, state
    votes = await _panel_votes(system, tmp_path, task_id)  # drawn (by a validator), scored, committed, revealed
    assert all(v["holdout"] == "the test set was never revealed" for v in votes.values()), votes

    await keeper_module.keep_deadlines(chain, redis_store)  # the second: the task settles
    info = await task_info(w3, dep, task_id)
    assert info["status"] == "abandoned", info
