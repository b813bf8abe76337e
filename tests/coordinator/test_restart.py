"""Restarts: the server catches up from its checkpoint; Redis going away loses no task."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from web3.exceptions import BlockNotFound

from ethml.chain import Deployment, Parameters, deploy_system, dev_account
from ethml.chain.rpc import http_web3
from ethml.coordinator import server as coordinator_server
from ethml.coordinator.appkeys import CHAIN, FATAL
from ethml.coordinator.deployment import AnotherDeployment, DeploymentWatch, Fatal, identity
from ethml.coordinator.permit import sign_login
from ethml.coordinator.redis_server import socket_path
from ethml.coordinator.server import make_app
from ethml.coordinator.store import Store
from ethml.errors import ChainError
from ethml.ipfs import Blockstore, IpfsClient, IpfsConfig
from ethml.ml import Manifest
from ethml.training.flow import train_and_submit
from tests.conftest import free_port, missing_service
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
    # While it is down, a trainer commits a submission on chain by itself.
    ipfs = IpfsClient(Blockstore(c.root / "server" / "blocks"), IpfsConfig())
    await train_and_submit(c.w3, c.deployment, dev_account(5), ipfs, 1, data_dir=c.root / "trainer")
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
                body = _valid(c, now, nonce)
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


def _redis_pids(socket: Path) -> set[int]:
    """Processes whose command line names `socket` (the private Redis of a data dir)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(socket).encode() in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


async def test_serve_killed_with_9_restarts_at_once_with_the_same_data_dir(anvil_url: str, tmp_path: Path) -> None:
    """kill -9 of `ethml serve`: its private Redis goes with it, and a restart on the same port and data
    dir at once just works, with the tasks it had; a second serve on a data dir in use is refused."""
    if not sys.platform.startswith("linux"):
        missing_service("Linux /proc (to find the private Redis's process)")
    async with coordinator_on(anvil_url, tmp_path) as c:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        data = tmp_path / "serve"
        socket = socket_path(data / "coordinator" / "redis")
        first = c.spawn_serve(data, port)
        await c.wait_healthy(url, first)
        c.url, c.admin_key = url, (data / "coordinator" / "admin.key").read_text().strip()
        key = await c.requester_key()
        task_id, _ = await post_wine_task(c, key)
        await wait_status(c, task_id, "open", timeout=60)
        redis_pids = _redis_pids(socket)
        assert len(redis_pids) == 1, redis_pids

        intruder = c.spawn_serve(data, free_port())  # the same data dir, while the first one runs
        assert await asyncio.to_thread(intruder.wait, 90) == 1
        log = intruder.log_path.read_text()  # type: ignore[attr-defined]
        assert "another ethml serve" in log and "Traceback" not in log, log
        assert (await task(c, task_id))["status"] == "open"  # the first one is untouched

        first.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 10)
        second = c.spawn_serve(data, port)  # at once: same port, same data dir
        await c.wait_healthy(url, second)
        doc = await task(c, task_id)
        assert doc["status"] == "open" and doc["chain_task_id"] == 1  # the old tasks are still there
        status, page, _ = await c.api("GET", "/api/tasks")
        assert status == 200 and [t["id"] for t in page["tasks"]] == [task_id]
        now_running = _redis_pids(socket)  # the killed server's Redis is gone (with it, or taken over)
        assert len(now_running) == 1 and not now_running & redis_pids, (redis_pids, now_running)


async def test_a_server_started_for_another_deployment_on_the_same_state_refuses_to_start(
    anvil_url: str, tmp_path: Path
) -> None:
    """Redis keys are not per deployment: `ethml serve` started with the data dir of a server for another deployment
    (a devnet started afresh and deployed again, say) took the old tasks, jobs and chain checkpoint for the new
    chain's, and its new task 1 was linked to the old task 1, whose training jobs were never queued again. The state
    records the deployment it belongs to, and a server of another one refuses to start, saying whose it is and what
    to do; a server of the same deployment starts on it as before."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        runner, _url = await c.start_server()
        key = await c.requester_key()
        await c.stop_server(runner)
        redeployed = await deploy_system(
            c.w3,
            dev_account(0),
            parameters=Parameters(min_difficulty=1 << 10, max_difficulty=1 << 10),
            models=Manifest.load().registry_specs(),
        )
        app = make_app(c.config(port=free_port(), deployment=redeployed))
        refused = web.AppRunner(app, shutdown_timeout=2)
        try:
            with pytest.raises(AnotherDeployment) as refusal:
                await refused.setup()
        finally:
            await refused.cleanup()
        message = str(refusal.value)
        assert c.deployment.training is not None and redeployed.training is not None
        assert c.deployment.training.lower() in message and redeployed.training.lower() in message
        assert str(tmp_path / "server" / "coordinator" / "redis") in message  # what to remove, or another --data-dir
        await c.start_server()  # its own deployment starts on it, with the state it left
        status, body, _ = await c.api("GET", "/api/tasks", key=key)
        assert status == 200, body


async def test_the_state_belongs_to_the_deployment_that_first_used_it(redis_store: Store) -> None:
    """A devnet (or a fork) started afresh and deployed again has the same chain id and, deployed by the same key,
    the same TrainingTasks address: the hash of the block its contracts were deployed in tells it apart."""
    first = {"chain_id": 31337, "training": "0x" + "ab" * 20, "block": 1, "block_hash": "0x" + "11" * 32}
    assert await redis_store.bind_deployment(first) is None
    assert await redis_store.bind_deployment(dict(first)) is None  # the same deployment, again
    assert await redis_store.bind_deployment({**first, "block_hash": "0x" + "22" * 32}) == first
    assert await redis_store.bind_deployment({**first, "training": "0x" + "cd" * 20}) == first


async def test_a_deployment_block_the_chain_lacks_or_a_node_that_does_not_answer_is_one_clear_error(
    anvil_url: str,
) -> None:
    """Reading the deployment's block at start: a chain without it (a stale deployment file) or a node that does
    not answer is a ChainError, one line from `ethml serve`, not a traceback."""
    stale = Deployment(31337, *(["0x" + "ab" * 20] * 5), block=10**9, training="0x" + "cd" * 20)
    w3 = http_web3(anvil_url)
    with pytest.raises(ChainError, match=r"this chain has no block 1000000000.*deploy again"):
        await identity(w3, 31337, stale)
    await w3.provider.disconnect()  # type: ignore[attr-defined]
    nobody = http_web3(f"http://127.0.0.1:{free_port()}", timeout=10)
    with pytest.raises(ChainError, match="the node did not give block 1 "):
        await identity(nobody, 31337, dataclasses.replace(stale, block=1))
    await nobody.provider.disconnect()  # type: ignore[attr-defined]


class _Blocks:
    """A node's `eth.get_block` for the deployment watch: the hashes (or errors) it gives, one a read."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)

    async def get_block(self, number: int) -> dict[str, bytes]:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return {"hash": bytes.fromhex(str(answer)[2:])}


async def test_the_watch_takes_the_chain_as_replaced_only_after_reads_in_a_row_find_another_block() -> None:
    """A read that fails counts neither way, and the right block between two others starts the count again: a node
    behind a load balancer that lags or answers once from elsewhere does not stop a server."""
    ours, other = "0x" + "11" * 32, "0x" + "22" * 32
    expected = {"chain_id": 31337, "training": "0x" + "ab" * 20, "block": 5, "block_hash": ours}
    stub = Deployment(31337, *(["0x" + "ab" * 20] * 5), block=5, training="0x" + "ab" * 20)
    reads = [other, other, ours, other, TimeoutError(), other, BlockNotFound("gone"), other]
    fatal = Fatal()
    w3: Any = type("W3", (), {"eth": _Blocks(*reads)})()
    watch = DeploymentWatch(w3, stub, expected, fatal)
    for n in range(len(reads)):
        await watch.step()
        if n < 6:
            assert fatal.message is None, n
    assert fatal.message is not None and fatal.event.is_set()
    assert "the chain under this server was replaced" in fatal.message and "block 5 is gone" in fatal.message


async def test_a_server_whose_chain_is_replaced_under_it_stops_its_loops(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A devnet started afresh under a running server was not noticed: the server went on relaying and following
    on the old state. The deployment's block is read again while it runs; once it is another, the server's loops
    stop and `ethml serve` stops with the reason."""
    monkeypatch.setattr(coordinator_server, "WATCH_INTERVAL", 0.1)
    async with coordinator_on(anvil_url, tmp_path) as c:
        runner, _url = await c.start_server()
        app = runner.app
        assert app is not None
        eth = app[CHAIN].w3.eth
        get_block = eth.get_block

        async def replaced(number: Any, *args: Any, **kwargs: Any) -> Any:
            block = await get_block(number, *args, **kwargs)
            if number == c.deployment.block:
                return {**block, "hash": b"\x33" * 32}
            return block

        loops = {"leader", "dispatch", "observe", "artifacts", "relayer", "deployment"}
        assert loops <= {t.get_name() for t in asyncio.all_tasks() if not t.done()}
        monkeypatch.setattr(eth, "get_block", replaced)
        await asyncio.wait_for(app[FATAL].event.wait(), 120)
        assert app[FATAL].message is not None and "was replaced" in app[FATAL].message
        assert "block " + str(c.deployment.block) + " is 0x3333" in app[FATAL].message

        async def stopped() -> bool:
            return not loops & {t.get_name() for t in asyncio.all_tasks() if not t.done()}

        await wait_until(stopped, timeout=60, what="the server's loops stopped")


async def test_a_server_stops_at_once_with_workers_and_event_streams_connected(anvil_url: str, tmp_path: Path) -> None:
    """A worker's connection and the dashboard's event stream never end by themselves: stopping `ethml serve`
    waited out aiohttp's shutdown timeout for them (about 11 s to stop on SIGTERM with one worker connected,
    against 1.3 s with none), and only then closed the workers. Now they are closed as the server begins to
    stop: here the timeout is long enough that waiting it out would fail the test."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        port = free_port()
        runner = web.AppRunner(make_app(c.config(port=port)), shutdown_timeout=300)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(url.replace("http://", "ws://") + "/ws/worker")
            challenge = await ws.receive_json(timeout=30)
            trainer = dev_account(5)
            signature = sign_login(trainer.key, challenge["server"], challenge["nonce"], "trainer")
            await ws.send_json({"type": "auth", "role": "trainer", "address": trainer.address, "signature": signature})
            assert (await ws.receive_json(timeout=30))["type"] == "welcome"
            stream = await session.get(url + "/api/dashboard/events")
            assert stream.status == 200
            first = await asyncio.wait_for(stream.content.readline(), 30)
            assert first.startswith(b"data: "), first

            await asyncio.wait_for(runner.cleanup(), 120)  # not the 300 s of the timeout

            closed = await ws.receive(timeout=30)
            assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == 1001, closed  # going away: reconnect
            rest = await asyncio.wait_for(stream.content.read(), 30)  # the stream ended after a whole event
            assert (first + rest).endswith(b"\n\n"), rest
            await ws.close()
            stream.close()
