"""A trainer started again while the commitment it sent before waits for a block sends that commitment, never a
new one: on anvil with automine off, standing in for a public chain where blocks come by themselves."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from ethml.chain import dev_account
from ethml.ipfs import Blockstore, IpfsClient
from ethml.ml import Manifest
from ethml.training import clock
from ethml.training.flow import reveal_submission, train_and_submit
from ethml.training.onchain import secret_file
from tests.coordinator.conftest import coordinator_on
from tests.node.conftest import System, wait_until
from tests.training.test_e2e import FIRST, PERIOD, _post_wine_task


async def test_a_trainer_started_again_while_its_commitment_is_on_its_way_sends_that_one(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed after sending its commitment, while the transaction waits for a block, and started again:
    the job comes back to it (it keeps its id). Where the node's pre-flight does not count the transaction on its
    way, the trainer trained anew and wrote a new secret (a new model, a new salt) over the one that commitment was
    made from: once it was mined, the new secret could not open it, and the reveal (and the bond) was lost; where
    the pre-flight counts it (anvil), the job failed. Now the secret kept is never replaced: the trainer waits for
    its transactions on their way, and sends that same commitment again only if it is not on chain."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        w3, dep = c.w3, c.deployment
        system = System(w3, dep, Manifest.load(), tmp_path, IpfsClient(Blockstore(tmp_path / "blocks")))
        task_id = await _post_wine_task(system, tmp_path)
        trainer = dev_account(FIRST)

        async def public_chain(_w3: Any) -> bool:
            return False  # blocks come when this test mines them, as on a public chain (none mined on demand)

        monkeypatch.setattr(clock, "is_dev_chain", public_chain)
        await w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
        try:

            async def on_its_way() -> bool:
                return bool(
                    await w3.eth.get_transaction_count(trainer.address, "pending")
                    > await w3.eth.get_transaction_count(trainer.address)
                )

            first = asyncio.ensure_future(train_and_submit(w3, dep, trainer, system.ipfs, task_id, data_dir=tmp_path))
            await wait_until(on_its_way, timeout=300, what="the commitment to be sent")
            first.cancel()  # the worker killed: its transaction stays in the node's pool
            with contextlib.suppress(asyncio.CancelledError):
                await first
            secret = secret_file(tmp_path, dep, "submission", task_id, trainer.address)
            kept = secret.read_text()

            said: list[str] = []
            again = asyncio.ensure_future(
                train_and_submit(w3, dep, trainer, system.ipfs, task_id, data_dir=tmp_path, progress=said.append)
            )

            async def spoke() -> bool:
                return bool(said) or again.done()

            await wait_until(spoke, timeout=300, what="the trainer started again to say what it does")
            assert said and "committed to from this data dir before" in said[0], said  # (not "training ...")
            deadline = asyncio.get_running_loop().time() + 300
            while not again.done():
                assert asyncio.get_running_loop().time() < deadline, "the trainer did not finish within 300 s"
                await w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
                await asyncio.sleep(0.2)
            result = await again
            assert result["committed"] and not result["trained"], result
            assert secret.read_text() == kept
        finally:
            await w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        monkeypatch.undo()
        await w3.provider.make_request("evm_increaseTime", [PERIOD + 1])  # type: ignore[arg-type]
        await w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        assert await reveal_submission(w3, dep, trainer, task_id, tmp_path)  # the kept secret opens it
