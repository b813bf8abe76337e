"""Which tasks the deadline keeper reads from the chain in a pass."""

from __future__ import annotations

import json
import types
from typing import Any

import pytest

from ethml.coordinator import keeper as keeper_module
from ethml.coordinator import redis_keys as k
from ethml.coordinator.store import Store
from ethml.training.onchain import TaskError

NOW = 1_800_000_000


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
