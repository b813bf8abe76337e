"""GET /api/tasks pages through the tasks newest first: every task once, tasks created in the same instant
included (their creation times are equal scores in the index)."""

from __future__ import annotations

import json

import pytest

from ethml.coordinator import redis_keys as k
from ethml.coordinator.store import Store

#: Five tasks created in the same instant (two instances' clocks, or a clock's resolution), and others.
TIMES = [1796590000.5] * 5 + [1796590000.25, 1796590001.0, 1796589999.0]


async def _tasks(store: Store) -> list[str]:
    """The tasks of TIMES stored and indexed as the server does; their ids newest first (ties: by id, last first)."""
    ids = [f"{(i * 7919) % 97:032x}" for i in range(len(TIMES))]  # not in the order of creation
    for task_id, created in zip(ids, TIMES, strict=True):
        await store.redis.set(k.task(task_id), json.dumps({"id": task_id, "created_at": created, "status": "open"}))
        await store.redis.zadd(k.TASKS, {task_id: created})
        await store.redis.zadd(k.tasks_in("open"), {task_id: created})
    return [i for i, _ in sorted(zip(ids, TIMES, strict=True), key=lambda p: (p[1], p[0]), reverse=True)]


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 7, 8, 50])
@pytest.mark.parametrize("status", [None, "open"])
async def test_pages_skip_no_task_created_in_the_same_instant_as_a_page_s_last(
    redis_store: Store, status: str | None, limit: int
) -> None:
    """The cursor was the last task's creation time, and the next page began after it: a task created in the same
    instant as the last one of a page, but not on it, was skipped. The cursor names the task too now."""
    newest_first = await _tasks(redis_store)
    seen: list[str] = []
    cursor = None
    for _ in range(len(TIMES) + 1):
        docs, cursor = await redis_store.list_tasks(status, cursor, limit)
        seen += [d["id"] for d in docs]
        if cursor is None:
            break
    assert seen == newest_first


async def test_a_cursor_of_a_time_alone_starts_after_every_task_of_that_time(redis_store: Store) -> None:
    """A cursor without a task id (what a server gave before) still pages: from the first task older than it."""
    newest_first = await _tasks(redis_store)
    docs, _ = await redis_store.list_tasks(None, (1796590000.5, None), 50)
    assert [d["id"] for d in docs] == newest_first[-2:]
