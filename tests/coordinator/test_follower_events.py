"""The follower on a real Redis: a reveal of an artifact seen in another task first is recorded on the
submission (scored, never accepted nor paid), and re-applying the event changes nothing; an old event
applied after a newer one (a replay beside the follower) moves nothing backwards."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ethml.coordinator.follower import EVENTS, apply_event
from ethml.coordinator.redis_client import connect
from ethml.coordinator.schemas import Submission
from ethml.coordinator.store import Store
from tests.coordinator.conftest import answering, start_redis
from tests.node.conftest import wait_until


async def test_a_reveal_of_an_artifact_seen_elsewhere_first_is_recorded(tmp_path: Path) -> None:
    assert "RevealedElsewhereFirst" in EVENTS
    async with _store(tmp_path) as store:
        doc: dict[str, Any] = {
            "id": "t1", "chain_task_id": 7, "created_at": 1.0, "status": "training",
            "submissions": [], "transactions": {},
        }  # fmt: skip
        assert await store.import_task(doc)
        revealed = {"taskId": 7, "submissionId": 1, "trainer": "0xabc", "modelCid": "bafk", "claim": 900_000}
        await apply_event(None, store, "SubmissionRevealed", revealed, "0x01")  # type: ignore[arg-type]
        elsewhere = {"taskId": 7, "submissionId": 1, "artifactSha256": b"\x01" * 32, "otherTaskId": 3}
        for _ in range(2):  # idempotent
            await apply_event(None, store, "RevealedElsewhereFirst", elsewhere, "0x01")  # type: ignore[arg-type]
        stored = await store.task("t1")
        assert stored is not None and stored["submissions"][0] is None
        sub = Submission(**stored["submissions"][1])
        assert (sub.revealed, sub.revealed_elsewhere, sub.undecided, sub.bond) == (True, 3, False, "locked")


async def test_an_old_event_applied_after_a_newer_one_moves_nothing_backwards(tmp_path: Path) -> None:
    """A replay of a task's history (an import) runs beside the follower, which may have applied newer
    events already: a test set's reveal applied after the settlement leaves the task settled, and an earlier
    draw's round applied after a later one leaves the later one."""
    async with _store(tmp_path) as store:
        doc: dict[str, Any] = {
            "id": "t1", "chain_task_id": 7, "created_at": 1.0, "status": "accepted",
            "submissions": [], "transactions": {}, "draw": 2,
        }  # fmt: skip
        assert await store.import_task(doc)
        await apply_event(None, store, "TestSetRevealed", {"taskId": 7}, "0x01")  # type: ignore[arg-type]
        await apply_event(None, store, "DrawFixed", {"taskId": 7, "round": 1}, "0x02")  # type: ignore[arg-type]
        stored = await store.task("t1")
        assert stored is not None and (stored["status"], stored["draw"]) == ("accepted", 2), stored
        assert await store.redis.zscore("ethml:tasks:validating", "t1") is None
        await store.update_task("t1", lambda d: d.update(status="training"))
        await apply_event(None, store, "TestSetRevealed", {"taskId": 7}, "0x03")  # type: ignore[arg-type]
        await apply_event(None, store, "DrawFixed", {"taskId": 7, "round": 3}, "0x04")  # type: ignore[arg-type]
        stored = await store.task("t1")
        assert stored is not None and (stored["status"], stored["draw"]) == ("validating", 3), stored


@contextlib.asynccontextmanager
async def _store(tmp_path: Path) -> AsyncIterator[Store]:
    socket = tmp_path / "redis" / "redis.sock"
    server = start_redis(socket)
    try:
        await wait_until(lambda: asyncio.to_thread(socket.exists), timeout=30, what="Redis")
        client = connect(socket=str(socket))
        await wait_until(lambda: answering(client), timeout=30, what="Redis to answer")
        try:
            yield Store(client)
        finally:
            await client.aclose()
    finally:
        server.terminate()
        server.wait(10)
