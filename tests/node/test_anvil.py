"""Against a real anvil: a reorg that removes a request, and the RPC going away and coming back."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from web3 import AsyncWeb3

from ethml.chain import DEV_MNEMONIC, Parameters, consumer_contract, deploy_system, dev_account, ethml_contract, send
from ethml.chain.rpc import http_web3
from ethml.devnet import start_devnet
from ethml.ipfs import Blockstore, IpfsClient
from ethml.ml import Manifest, ModelStore
from ethml.node import Node, NodeConfig, NodeWarning
from ethml.requester import consumer_deposit
from tests.conftest import find_anvil, free_port, missing_service
from tests.node.conftest import stop_all, wait_until

DIFFICULTY = 1 << 12


def start_anvil(port: int, state: Path | None = None) -> subprocess.Popen[bytes]:
    binary = find_anvil()
    if binary is None:
        missing_service("anvil (npm ci)")
    args = [binary, "--port", str(port), "--mnemonic", DEV_MNEMONIC, "--silent"]
    if state is not None:
        args += ["--state", str(state)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket

    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "anvil did not start"
            time.sleep(0.05)


def stop_anvil(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)


async def deploy(w3: AsyncWeb3[Any]) -> Any:
    manifest = Manifest.load()
    return manifest, await deploy_system(
        w3,
        dev_account(0),
        parameters=Parameters(min_difficulty=DIFFICULTY, max_difficulty=DIFFICULTY),
        models=manifest.registry_specs(),
    )


def expected(manifest: Manifest, model: str, raw: bytes) -> int:
    store = ModelStore(manifest)
    try:
        return store.get(model).predict_one(raw)
    finally:
        store.close()


async def submissions(w3: AsyncWeb3[Any], deployment: Any, miner: str, round_id: int) -> int:
    """Commitments `miner` has on the chain for `round_id`."""
    logs = await ethml_contract(w3, deployment.ethml).events.Committed().get_logs(from_block=0)
    return len([e for e in logs if e["args"]["miner"] == miner and e["args"]["roundId"] == round_id])


async def request(w3: AsyncWeb3[Any], deployment: Any, model_id: int, cid: str) -> None:
    consumer = consumer_contract(w3, deployment.consumer)
    deposit = await consumer_deposit(w3, deployment)
    await send(w3, dev_account(9), consumer.functions.request(model_id, cid, 0), value=deposit)


async def test_reorg_drops_removed_work_and_handles_the_new_fork_once(tmp_path: Path) -> None:
    port = free_port()
    proc = start_anvil(port)
    w3: AsyncWeb3[Any] = http_web3(f"http://127.0.0.1:{port}")
    try:
        manifest, deployment = await deploy(w3)
        ipfs = IpfsClient(Blockstore(tmp_path / "blocks"))
        iris = manifest.by_name("iris")
        raw_a = manifest.data_point_path(iris.data_points[3]).read_bytes()  # label 0
        raw_b = manifest.data_point_path(iris.data_points[0]).read_bytes()  # label 1
        cid_a, cid_b = str(ipfs.add_bytes(raw_a)), str(ipfs.add_bytes(raw_b))
        snapshot = await w3.provider.make_request("evm_snapshot", [])  # type: ignore[arg-type]
        config = NodeConfig(threads=1, poll_interval=0.05, data_dir=tmp_path)
        async with Node(w3=w3, deployment=deployment, account=dev_account(1), config=config) as node:
            events = node.events()
            await request(w3, deployment, iris.id, cid_a)
            await wait_until(lambda: _ready(node.stats.accepted == 1), what="the submission on the old fork")
            assert await submissions(w3, deployment, dev_account(1).address, 1) == 1
            journal = node._ctx.journal  # type: ignore[union-attr]
            secret = journal.latest_secret(1)
            assert secret is not None and secret.answers == [expected(manifest, "iris", raw_a)]

            await w3.provider.make_request("evm_revert", [snapshot["result"]])  # type: ignore[arg-type]
            await w3.provider.make_request("anvil_mine", [3])  # type: ignore[arg-type]
            await request(w3, deployment, iris.id, cid_b)  # request 1 again
            await wait_until(lambda: _ready(node.stats.accepted == 2), what="the submission on the new fork")
            secret = journal.latest_secret(1)
            assert secret is not None and secret.answers == [expected(manifest, "iris", raw_b)]
            warnings = [e.message for e in events.drain() if isinstance(e, NodeWarning)]
            await events.aclose()
            await asyncio.sleep(0.3)  # a few more polls: nothing else may be sent
            assert node.stats.submissions == 2
        assert any("reorganisation" in w for w in warnings), warnings
        # On the surviving chain: exactly one commitment for request 1 (made for the new fork's data).
        assert await submissions(w3, deployment, dev_account(1).address, 1) == 1
    finally:
        await w3.provider.disconnect()
        stop_anvil(proc)


async def test_rpc_outage_and_restart_every_request_handled_once(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "anvil-state.json"
    proc = start_anvil(port, state)
    url = f"http://127.0.0.1:{port}"
    w3: AsyncWeb3[Any] = http_web3(url)
    manifest, deployment = await deploy(w3)
    ipfs = IpfsClient(Blockstore(tmp_path / "blocks"))
    wine = manifest.by_name("wine")
    points = [manifest.data_point_path(p).read_bytes() for p in wine.data_points]
    cids = [str(ipfs.add_bytes(raw)) for raw in points]
    consumer = consumer_contract(w3, deployment.consumer)
    config = NodeConfig(threads=1, poll_interval=0.05, data_dir=tmp_path, max_backoff=0.5)
    nodes = [Node(rpc_url=url, deployment=deployment, account=dev_account(i), config=config) for i in range(5)]
    try:
        for n in nodes:
            await n.start()
        await request(w3, deployment, wine.id, cids[0])
        await wait_until(lambda: _answered(consumer, 1), what="the first answer")

        stop_anvil(proc)  # the RPC goes away (anvil saves its state)
        await wait_until(lambda: _ready(all(n.stats.last_error for n in nodes)), what="every node noticing")
        proc = start_anvil(port, state)  # and comes back with the same chain
        await request(w3, deployment, wine.id, cids[1])
        await request(w3, deployment, wine.id, cids[2])
        for rid in (2, 3):
            await wait_until(lambda rid=rid: _answered(consumer, rid), timeout=60, what=f"answer {rid}")
    finally:
        await stop_all(nodes)
        await w3.provider.disconnect()
        stop_anvil(proc)
    w3 = http_web3(url)
    proc = start_anvil(port, state)
    try:
        for rid, raw in zip((1, 2, 3), points, strict=False):
            answer = await consumer_contract(w3, deployment.consumer).functions.answers(rid).call()
            assert answer[1] == expected(manifest, "wine", raw)
            for i in range(5):
                assert await submissions(w3, deployment, dev_account(i).address, rid) == 1
    finally:
        await w3.provider.disconnect()
        stop_anvil(proc)


async def test_a_round_open_across_a_devnet_restart_closes(tmp_path: Path) -> None:
    """After `ethml devnet --state FILE` restarts, anvil's BLOCKHASH answers another hash for the blocks
    before the restart than its RPC and logs do, so the challenge a node derives from the RoundOpened log
    is not the contract's: the contract refuses those nonces (InvalidNonce). Nodes must then take the
    contract's challenge and grind again, and the round closes."""
    if find_anvil() is None:
        missing_service("anvil (npm ci)")
    port = free_port()
    state = tmp_path / "devnet-state.json"
    data_dir = tmp_path / "data"
    net = await start_devnet(port=port, state=state, difficulty=DIFFICULTY, data_dir=data_dir)
    deployment = net.deployment
    manifest = Manifest.load()
    iris = manifest.by_name("iris")
    raw = manifest.data_point_path(iris.data_points[1]).read_bytes()
    cid = str(IpfsClient(Blockstore(data_dir / "blocks")).add_bytes(raw))
    url = net.url
    w3: AsyncWeb3[Any] = http_web3(url)
    config = NodeConfig(threads=1, poll_interval=0.05, data_dir=data_dir, max_backoff=0.5)
    early = [Node(rpc_url=url, deployment=deployment, account=dev_account(i), config=config) for i in range(2)]
    late: list[Node] = []
    try:
        await request(w3, deployment, iris.id, cid)  # round 1 opens
        for node in early:
            await node.start()
        await wait_until(lambda: _ready(all(n.stats.accepted == 1 for n in early)), what="two commitments")
        ethml = ethml_contract(w3, deployment.ethml)
        before = (await ethml.functions.getCurrentRound().call())[1]
        net.stop()  # anvil saves its state; the round waits for three more commitments
        net = await start_devnet(port=port, state=state, difficulty=DIFFICULTY, data_dir=data_dir)
        assert net.reused and net.deployment.ethml == deployment.ethml
        after = (await ethml.functions.getCurrentRound().call())[1]
        assert bytes(after) != bytes(before), "anvil answers another hash for the opening block"
        late = [Node(rpc_url=url, deployment=deployment, account=dev_account(i), config=config) for i in range(2, 5)]
        for node in late:
            await node.start()
        consumer = consumer_contract(w3, deployment.consumer)
        await wait_until(lambda: _answered(consumer, 1), timeout=120, what="the answer after the restart")
        answer = await consumer.functions.answers(1).call()
        assert answer[1] == expected(manifest, "iris", raw)
        # The three late nodes were refused once each, then committed with the contract's challenge.
        for node in late:
            assert node.stats.accepted == 1 and any("grinding again" in w for w in node.stats.warnings)
    finally:
        await stop_all(early + late)
        await w3.provider.disconnect()
        net.stop()


async def _ready(value: bool) -> bool:
    return value


async def _answered(consumer: Any, rid: int) -> bool:
    try:
        return bool((await consumer.functions.answers(rid).call())[4])
    except Exception:  # noqa: BLE001 - the RPC may be restarting
        return False


pytestmark = pytest.mark.anvil
