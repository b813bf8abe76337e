"""Restarts: the server catches up from its checkpoint; Redis going away loses no task."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ethml.chain import dev_account
from ethml.coordinator.client import sign_permit
from ethml.ipfs import Blockstore, IpfsClient, IpfsConfig
from ethml.training.flow import train_and_submit
from tests.coordinator.conftest import Coordinator, coordinator_on, start_redis
from tests.coordinator.test_api import _valid
from tests.coordinator.test_flow import chain_now, post_wine_task, task, wait_status
from tests.node.conftest import wait_until


async def test_a_restarted_server_catches_up_from_its_checkpoint(coordinator: Coordinator) -> None:
    c = coordinator
    key = await c.requester_key()
    task_id, _ = await post_wine_task(c, key)
    await wait_status(c, task_id, "open", timeout=60)
    await c.stop_server(c.runners[0])  # the server and its private Redis stop
    # While it is down, a trainer submits on chain by itself.
    ipfs = IpfsClient(Blockstore(c.root / "server" / "blocks"), IpfsConfig())
    await train_and_submit(c.w3, c.deployment, dev_account(5), ipfs, 1)
    await c.start_server()  # same data dir: the same Redis data, the same checkpoint

    async def caught_up() -> bool:
        doc = await task(c, task_id)
        return bool(doc["status"] == "training" and len(doc["submissions"]) == 1)

    await wait_until(caught_up, timeout=90, what="the follower to catch up")
    doc = await task(c, task_id)
    assert doc["submissions"][0]["trainer"] == dev_account(5).address
    assert doc["chain_task_id"] == 1  # the same task, not a second one


async def test_redis_restarted_mid_run_loses_no_task(anvil_url: str, tmp_path: Path) -> None:
    socket = tmp_path / "redis" / "redis.sock"

    redis = start_redis(socket, "--appendfsync", "always")
    try:
        async with coordinator_on(anvil_url, tmp_path) as c:
            await c.start_server(redis_url=f"unix://{socket}")
            key = await c.requester_key()
            now = await chain_now(c)
            posted = []
            for nonce in range(3):
                body = _valid(c, now)
                body["permit"] = sign_permit(dev_account(9), c.domain, int(body["reward"]), nonce, now + 3600)
                status, created, _ = await c.api("POST", "/api/tasks", key=key, body=body)
                assert status == 201, created
                posted.append(created["id"])
                if nonce == 0:
                    redis.terminate()  # Redis goes away (and comes back) mid-run
                    redis.wait(timeout=10)
                    status, reply, headers = await c.api("POST", "/api/tasks", key=key, body=body)
                    assert status == 503 and headers["Retry-After"] == "1", reply  # a clear error, not a 500
                    redis = start_redis(socket, "--appendfsync", "always")
                    await _wait_socket(socket)
            for task_id in posted:
                await wait_status(c, task_id, "open", timeout=120)
            _status, page, _ = await c.api("GET", "/api/tasks")
            assert sorted(t["id"] for t in page["tasks"]) == sorted(posted)
            assert sorted(t["chain_task_id"] for t in page["tasks"]) == [1, 2, 3]
    finally:
        redis.terminate()
        redis.wait(timeout=10)


async def _wait_socket(socket: Path) -> None:
    for _ in range(200):
        if await asyncio.to_thread(socket.exists):
            return
        await asyncio.sleep(0.05)
