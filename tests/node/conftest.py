from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from web3 import AsyncWeb3
from web3.logs import DISCARD
from web3.providers.eth_tester import AsyncEthereumTesterProvider

from ethml.chain import (
    Deployment,
    Parameters,
    consumer_contract,
    deploy_system,
    dev_account,
    embedded_chain,
    ethml_contract,
    registry_contract,
    send,
    token_contract,
)
from ethml.ipfs import Blockstore, IpfsClient
from ethml.ml import Manifest, ModelStore
from ethml.node import Node, NodeConfig
from ethml.requester import consumer_deposit

DIFFICULTY = 1 << 12


@dataclass
class System:
    w3: AsyncWeb3[Any]
    deployment: Deployment
    manifest: Manifest
    data_dir: Path
    ipfs: IpfsClient
    nodes: list[Node] = field(default_factory=list)

    @property
    def ethml(self) -> Any:
        return ethml_contract(self.w3, self.deployment.ethml)

    @property
    def token(self) -> Any:
        return token_contract(self.w3, self.deployment.token)

    @property
    def registry(self) -> Any:
        return registry_contract(self.w3, self.deployment.registry)

    @property
    def consumer(self) -> Any:
        return consumer_contract(self.w3, self.deployment.consumer)

    def config(self, **overrides: Any) -> NodeConfig:
        base: dict[str, Any] = {
            "threads": 1,
            "poll_interval": 0.05,
            "data_dir": self.data_dir,
            "fetch_retry_seconds": 1.0,
        }
        base.update(overrides)
        return NodeConfig(**base)

    def node(self, index: int, **overrides: Any) -> Node:
        return Node(w3=self.w3, deployment=self.deployment, account=dev_account(index), config=self.config(**overrides))

    @asynccontextmanager
    async def running(self, indices: range | list[int], **overrides: Any) -> AsyncIterator[list[Node]]:
        nodes = [self.node(i, **overrides) for i in indices]
        for n in nodes:
            await n.start()
        try:
            yield nodes
        finally:
            await stop_all(nodes)

    def add_point(self, model: str, index: int) -> tuple[str, bytes]:
        entry = self.manifest.by_name(model)
        raw = self.manifest.data_point_path(entry.data_points[index]).read_bytes()
        return str(self.ipfs.add_bytes(raw)), raw

    async def request(self, model_id: int, cid: str, *, requester: int = 9) -> int:
        deposit = await consumer_deposit(self.w3, self.deployment)
        receipt = await send(
            self.w3, dev_account(requester), self.consumer.functions.request(model_id, cid, 0), value=deposit
        )
        events = self.ethml.events.PredictionRequested().process_receipt(receipt, errors=DISCARD)
        return int(events[0]["args"]["requestId"])

    async def answer(self, request_id: int) -> tuple[int, int, bool]:
        _requester, prediction, status, _agreeing, received, _reclaimed, _tip = await self.consumer.functions.answers(
            request_id
        ).call()
        return int(prediction), int(status), bool(received)

    def expected(self, model: str, raw: bytes) -> int:
        store = ModelStore(self.manifest)
        try:
            return store.get(model).predict_one(raw)
        finally:
            store.close()


async def stop_all(nodes: list[Node]) -> None:
    """Stop nodes together, as an application running several would: each stop drains its node for up to
    a second, so one after the other costs a second per node."""
    await asyncio.gather(*(n.stop() for n in nodes))


async def round_of(system: System, request_id: int) -> int:
    """The round that closed `request_id` (0 while it is open)."""
    round_id, _mask = await system.ethml.functions.closingRound(request_id).call()
    return int(round_id)


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float = 120.0, what: str = "condition") -> None:
    """Poll an async condition until it holds; fail the test after `timeout` seconds. The deadline is also
    checked between polls: a cancel can be lost inside a condition's own timeout (redis-py's, on Python 3.11),
    and a condition that never holds would then be polled for good."""
    started = time.monotonic()

    async def loop() -> None:
        while not await condition():
            if time.monotonic() - started >= timeout:
                raise TimeoutError
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(loop(), timeout)
    except TimeoutError:
        pytest.fail(f"{what} did not happen within {timeout:g} s (waited {time.monotonic() - started:.1f} s)")


async def make_system(tmp_path: Path, difficulty: int = DIFFICULTY, **parameters: Any) -> System:
    """A fresh embedded chain with the bundled models registered, at a fixed difficulty."""
    w3 = await embedded_chain()
    manifest = Manifest.load()
    deployment = await deploy_system(
        w3,
        dev_account(0),
        parameters=Parameters(min_difficulty=difficulty, max_difficulty=difficulty, **parameters),
        models=manifest.registry_specs(),
    )
    return System(w3, deployment, manifest, tmp_path, IpfsClient(Blockstore(tmp_path / "blocks")))


@dataclass
class DeployedChain:
    """An embedded chain with the system deployed, and the snapshot each test starts from."""

    tester: Any  # eth_tester.EthereumTester
    snapshot: int
    deployment: Deployment
    manifest: Manifest


@pytest.fixture(scope="module")
def deployed_chain() -> DeployedChain:
    """One deployment per test module: deploying on py-evm takes a second or two of CPU, and a test that
    gets the chain reverted to the snapshot taken right after it cannot tell it from a fresh one (same
    blocks, balances, nonces, request and round ids)."""

    async def deploy(tmp: Path) -> System:
        return await make_system(tmp)

    made = asyncio.run(deploy(Path("unused")))
    tester = made.w3.provider.ethereum_tester  # type: ignore[attr-defined]
    return DeployedChain(tester, tester.take_snapshot(), made.deployment, made.manifest)


@pytest.fixture
async def system(deployed_chain: DeployedChain, tmp_path: Path) -> System:
    """The deployed system at its snapshot, with a data dir of its own."""
    deployed_chain.tester.revert_to_snapshot(deployed_chain.snapshot)
    provider = AsyncEthereumTesterProvider()
    provider.ethereum_tester = deployed_chain.tester  # a client of its own (bound to this test's event loop)
    return System(
        AsyncWeb3(provider),
        deployed_chain.deployment,
        deployed_chain.manifest,
        tmp_path,
        IpfsClient(Blockstore(tmp_path / "blocks")),
    )
