"""The follower on a real Redis: a reveal of an artifact seen in another task first is recorded on the
submission (scored, never accepted nor paid), and re-applying the event changes nothing."""

from __future__ import annotations

import asyncio
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
    socket = tmp_path / "redis" / "redis.sock"
    server = start_redis(socket)
    try:
        await wait_until(lambda: asyncio.to_thread(socket.exists), timeout=30, what="Redis")
        client = connect(socket=str(socket))
        await wait_until(lambda: answering(client), timeout=30, what="Redis to answer")
        store = Store(client)
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
        await client.aclose()
    finally:
        server.terminate()
        server.wait(10)
