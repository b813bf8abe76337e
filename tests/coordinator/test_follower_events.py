"""The follower on a real Redis: a reveal of an artifact seen in another task first is recorded on the
submission (scored, never accepted nor paid), and re-applying the event changes nothing; an old event
applied after a newer one (a replay beside the follower) moves nothing backwards."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from web3.exceptions import Web3RPCError

from ethml.coordinator import follower as follower_module
from ethml.coordinator import redis_keys as k
from ethml.coordinator.follower import EVENTS, Settlement, apply_event
from ethml.coordinator.redis_client import connect
from ethml.coordinator.schemas import Submission
from ethml.coordinator.store import Store
from tests.coordinator.conftest import answering, start_redis
from tests.node.conftest import wait_until


async def test_a_reveal_of_an_artifact_seen_elsewhere_first_is_recorded(tmp_path: Path) -> None:
    assert "RevealedElsewhereFirst" in EVENTS
    async with _store(tmp_path) as store:
        await _imported(store, "t1", "training")
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
        await _imported(store, "t1", "accepted", draw=2)
        await apply_event(None, store, "TestSetRevealed", {"taskId": 7}, "0x01")  # type: ignore[arg-type]
        await apply_event(None, store, "DrawFixed", {"taskId": 7, "round": 1, "drawBlock": 50}, "0x02")  # type: ignore[arg-type]
        stored = await store.task("t1")
        assert stored is not None and (stored["status"], stored["draw"]) == ("accepted", 2), stored
        assert await store.redis.zscore("ethml:tasks:validating", "t1") is None
        await store.update_task("t1", lambda d: d.update(status="training"))
        await apply_event(None, store, "TestSetRevealed", {"taskId": 7}, "0x03")  # type: ignore[arg-type]
        await apply_event(None, store, "DrawFixed", {"taskId": 7, "round": 3, "drawBlock": 90}, "0x04")  # type: ignore[arg-type]
        stored = await store.task("t1")
        assert stored is not None and (stored["status"], stored["draw"]) == ("validating", 3), stored


@pytest.mark.parametrize("order", ["follower_first", "replay_first"])
async def test_seats_of_an_earlier_draw_replayed_beside_a_later_draw_keep_their_own_job_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    """A replay of a task's history (cut short and finished later, or slow) applies the first draw of its
    panel while the follower applies the second: the node still has the state of the second draw's
    block (the follower's are recent) but not of the first's. Each seat is labelled with its own draw and
    queued under that draw's job id, so the second draw's validator in seat 0 gets its job, whether the
    follower applied the second draw's DrawFixed before the replay started (`follower_first`) or the
    follower had passed it before the link and only the replay brings it (`replay_first`)."""
    rounds = {205: 2}  # the round after each block whose state the node still has

    async def round_at(_chain: Any, _task: int, block: int) -> int | None:
        return rounds.get(block)

    monkeypatch.setattr(follower_module, "_round_at", round_at)
    async with _store(tmp_path) as store:
        await _imported(store, "t1", "validating")
        first, second = "0x" + "a1" * 20, "0x" + "b2" * 20

        async def event(name: str, args: dict[str, Any], block: int) -> None:
            await apply_event(object(), store, name, {"taskId": 7, **args}, f"0x{block:02x}", block)  # type: ignore[arg-type]

        fixed_2 = ("DrawFixed", {"round": 2, "drawBlock": 200}, 195)
        seat_2 = ("ValidatorDrawn", {"seat": 0, "validator": second, "scoreDeadline": 9_000}, 205)
        if order == "follower_first":
            await event(*fixed_2)
        await event("DrawFixed", {"round": 1, "drawBlock": 100}, 95)  # the replay, from the creation on
        await event("ValidatorDrawn", {"seat": 0, "validator": first, "scoreDeadline": 5_000}, 105)
        await event(*seat_2)  # the follower, before the replay gets there
        for again in (fixed_2, seat_2):  # the rest of the replay: nothing changes
            await event(*again)

        stored = await store.task("t1")
        assert stored is not None and stored["draw"] == 2, stored
        assert [(e["validator"], e["draw"]) for e in stored["panel"]] == [(first, 1), (second, 2)], stored
        jobs = {
            f[b"job"].decode(): f[b"address"].decode() for _id, f in await store.redis.xrange("ethml:jobs:validator")
        }
        assert jobs == {"7:validate:0": first, "7:validate:9": second}, jobs


class _Killed(Exception):
    """The follower's process killed at this point."""


@pytest.mark.parametrize("case", ["taken-over-meanwhile", "killed-before-the-check", "still-the-import's"])
async def test_a_settlement_applied_to_an_import_while_a_posted_task_takes_it_over_leaves_the_import_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """The follower reads the link of chain task 7 (its import), then the settled scores over RPC; meanwhile a
    relayer finds the task created from terms posted here and takes the link over, marking the import
    failed. The settlement, applied after, must not bring the import back beside the task that tracks the
    chain task now, even when the follower is killed before its check and applies the event again from its
    checkpoint, the link naming the posted task by then. Without a takeover the import is settled as usual."""
    posted = "f" * 32
    async with _store(tmp_path) as store:
        doc = await _imported(store, "chain-7", "validating")
        mine = {**doc, "id": posted, "chain_task_id": None, "status": "pending_chain", "created_at": 2.0}
        await store.redis.set(k.task(posted), orjson.dumps(mine))  # the posted task, its creation found
        claims: list[str] = []

        async def settlement(_chain: Any, _task: int, _count: int, _block: int | None = None) -> Settlement:
            if case != "still-the-import's" and not claims:  # the relayer's claim, while the follower waits
                claims.append(await store.claim_chain_id(posted, 7))
                assert (await store.task("chain-7") or {}).get("status") == "failed"
            return Settlement([], "none", 0)

        monkeypatch.setattr(follower_module, "_settlement", settlement)
        if case == "killed-before-the-check":
            finish = store.finish_takeover

            async def killed(chain_task_id: int, holder: str | None = None) -> None:
                if holder is None:  # the follower's own check, not the claim's
                    monkeypatch.setattr(store, "finish_takeover", finish)
                    raise _Killed
                await finish(chain_task_id, holder)

            monkeypatch.setattr(store, "finish_takeover", killed)
            with pytest.raises(_Killed):
                await apply_event(None, store, "TaskSettled", {"taskId": 7, "status": 2}, "0xf1")  # type: ignore[arg-type]
            assert (await store.task("chain-7") or {}).get("status") == "accepted"  # what the kill left
        await apply_event(None, store, "TaskSettled", {"taskId": 7, "status": 2}, "0xf1")  # type: ignore[arg-type]
        stored = await store.task("chain-7")
        assert stored is not None
        if case == "still-the-import's":
            assert stored["status"] == "accepted", stored
            assert stored["transactions"]["finalize"] == "0xf1"
            assert await store.redis.zscore(k.tasks_in("accepted"), "chain-7") is not None
            return
        assert claims == [posted]
        assert stored["status"] == "failed", stored
        assert stored["error"] == f"task 7 is tracked as task {posted}, which was posted with its signed terms"
        assert await store.redis.zscore(k.tasks_in("failed"), "chain-7") is not None
        assert await store.redis.zscore(k.tasks_in("accepted"), "chain-7") is None
        tracking = await store.task_by_chain_id(7)
        assert tracking is not None and tracking["id"] == posted


@pytest.mark.parametrize("node", ["archive", "recent-state-only"])
async def test_a_settled_task_reads_its_registered_model_with_its_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node: str
) -> None:
    """The settlement's transaction registers the accepted model, and emits TaskSettled, then ModelRegistered:
    applied one after the other, a task polled between them read accepted without its model. The settlement now
    carries its registration, read at its block: after TaskSettled alone the task reads accepted with its model.
    A replay of an old settlement, whose registration was deferred and made later, reads the deferral at the
    settlement's block (the later registration's own event sets it); a node without that block's state gives
    the latest state."""
    asked: list[tuple[str, int | None]] = []
    deferred_at, registered_at = 40, 55

    async def read_struct(_contract: Any, fn: str, *args: Any, block: int | None = None) -> dict[str, Any]:
        asked.append((fn, block))
        if block is not None and node == "recent-state-only":
            raise Web3RPCError("missing trie node")
        if fn == "getTask":
            registered = block is None or block >= registered_at
            return {
                "status": 2,
                "submissions": 1,
                "registration": 1 if registered else 3,
                "modelId": 9 if registered else 0,
            }
        return {"revealed": True, "score": 910_000, "bond": 1}

    monkeypatch.setattr(follower_module, "read_struct", read_struct)
    chain: Any = SimpleNamespace(tasks=object())
    async with _store(tmp_path) as store:
        await _imported(store, "t1", "validating", submissions=[{"trainer": "0xabc", "revealed": True}])
        await apply_event(chain, store, "TaskSettled", {"taskId": 7, "status": 2}, "0xf1", registered_at)
        stored = await store.task("t1")
        assert stored is not None
        assert (stored["status"], stored.get("model_id"), stored.get("registration")) == ("accepted", 9, "registered")
        assert stored["submissions"][0]["score"] == 910_000
        assert ("getTask", registered_at) in asked  # read at the settlement's block first

        await store.update_task("t1", lambda d: d.update(status="validating", model_id=None, registration=None))
        await apply_event(chain, store, "TaskSettled", {"taskId": 7, "status": 2}, "0xf1", deferred_at)
        stored = await store.task("t1")
        assert stored is not None
        if node == "archive":  # the deferral, as it stood after the settlement
            assert (stored["status"], stored.get("model_id"), stored.get("registration")) == (
                "accepted",
                None,
                "deferred",
            )
        else:  # the latest state: the registration made since
            assert (stored["status"], stored.get("model_id"), stored.get("registration")) == (
                "accepted",
                9,
                "registered",
            )
        await apply_event(chain, store, "ModelRegistered", {"taskId": 7, "modelId": 9}, "0xf2", registered_at)
        stored = await store.task("t1")
        assert stored is not None and (stored.get("model_id"), stored.get("registration")) == (9, "registered")


async def _imported(store: Store, task_id: str, status: str, **fields: Any) -> dict[str, Any]:
    """A document stored as the import of chain task 7 (with its link), with no submissions yet."""
    doc: dict[str, Any] = {
        "id": task_id, "chain_task_id": 7, "created_at": 1.0, "status": status,
        "submissions": [], "transactions": {}, **fields,
    }  # fmt: skip
    assert await store.import_task(doc)
    return doc


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
