"""A trainer, or a validator, started again while the commitment it sent before waits for a block sends that
commitment, never a new one: on anvil with automine off, standing in for a public chain where blocks come by
themselves."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from ethml.chain import dev_account, training_contract
from ethml.ipfs import Blockstore, IpfsClient
from ethml.ml import Manifest
from ethml.training import clock
from ethml.training import validator as validator_module
from ethml.training.flow import (
    draw_panel,
    reveal_scores,
    reveal_submission,
    reveal_test_set,
    train_and_submit,
    validate_task,
)
from ethml.training.onchain import NotDrawn, read_secret, secret_file
from ethml.training.onchain import settle_pending as real_settle
from ethml.training.validator import score_commitment
from tests.coordinator.conftest import VALIDATORS, coordinator_on
from tests.node.conftest import System, wait_until
from tests.training.test_e2e import FIRST, PERIOD, REQUESTER, REVEAL, _post_wine_task


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


async def _jump(w3: Any, seconds: int) -> None:
    """Move anvil's clock on and mine a block at the new time."""
    await w3.provider.make_request("evm_increaseTime", [seconds])
    await w3.provider.make_request("evm_mine", [])


async def _mine_until_done(w3: Any, job: asyncio.Future[Any], what: str, timeout: float = 300) -> Any:
    """Mine a block every 0.2 s, as a public chain would bring them, until `job` is done; its result."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not job.done():
        assert asyncio.get_running_loop().time() < deadline, f"{what} did not finish within {timeout:g} s"
        await w3.provider.make_request("evm_mine", [])
        await asyncio.sleep(0.2)
    return await job


async def test_a_validator_started_again_while_its_commitment_is_on_its_way_sends_that_one(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The validator's side of the trainer's case above: a drawn validator scores, keeps its vote's secret and
    sends its commitment; killed while that transaction waits for a block, and started again, it does not score
    anew nor write a new secret (new scores and salt would not open the commitment on its way): it waits for its
    transactions on their way and, that commitment mined, takes it as its vote; the kept secret then reveals it."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        w3, dep = c.w3, c.deployment
        system = System(w3, dep, Manifest.load(), tmp_path, IpfsClient(Blockstore(tmp_path / "blocks")))
        task_id = await _post_wine_task(system, tmp_path)
        await train_and_submit(w3, dep, dev_account(FIRST), system.ipfs, task_id, data_dir=tmp_path)
        await _jump(w3, PERIOD + 1)
        assert await reveal_submission(w3, dep, dev_account(FIRST), task_id, tmp_path)
        await _jump(w3, REVEAL + 1)
        await reveal_test_set(w3, dep, dev_account(REQUESTER), task_id, tmp_path)
        assert await draw_panel(w3, dep, dev_account(REQUESTER), task_id)  # the whole panel drawn, automine on
        tasks = training_contract(w3, dep.training or "")
        seated = [w for w in VALIDATORS if int(await tasks.functions.seatOf(task_id, dev_account(w).address).call())]
        assert seated, "the draw seats some of the staked validators"
        validator = dev_account(seated[0])
        seat = int(await tasks.functions.seatOf(task_id, validator.address).call()) - 1
        # Drawn with replacement: a validator may hold all three seats; its commitment then opens the reveals.
        whole_panel = int((await tasks.functions.memberOf(task_id, validator.address).call())[1]) == 3

        async def public_chain(_w3: Any) -> bool:
            return False  # blocks come when this test mines them, as on a public chain (none mined on demand)

        settling: list[str] = []  # the account each call of settle_pending waited for

        async def settle_pending(w3_: Any, address: Any, until: int) -> None:
            settling.append(address)
            await real_settle(w3_, address, until)

        monkeypatch.setattr(clock, "is_dev_chain", public_chain)
        monkeypatch.setattr(validator_module, "settle_pending", settle_pending, raising=False)
        await w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
        try:
            first = asyncio.ensure_future(validate_task(w3, dep, validator, system.ipfs, task_id, data_dir=tmp_path))

            async def on_its_way() -> bool:
                return first.done() or bool(
                    await w3.eth.get_transaction_count(validator.address, "pending")
                    > await w3.eth.get_transaction_count(validator.address)
                )

            await wait_until(on_its_way, timeout=300, what="the score commitment to be sent")
            if first.done():
                pytest.fail(f"the validator's first run ended before its commitment was on its way: {await first}")
            first.cancel()  # the worker killed: its transaction stays in the node's pool
            with contextlib.suppress(asyncio.CancelledError):
                await first
            assert not settling, settling  # the first run had no commitment of its own to wait for
            secret = secret_file(tmp_path, dep, "scores", task_id, validator.address)
            kept = secret.read_text()
            ballot = read_secret(secret) or {}
            _who, state, _unusable, _commitment, _scores = await tasks.functions.getSeat(task_id, seat).call()
            assert int(state) == 1, "the commitment is still on its way (drawn, not committed on chain)"

            said: list[str] = []
            again = asyncio.ensure_future(
                validate_task(w3, dep, validator, system.ipfs, task_id, data_dir=tmp_path, progress=said.append)
            )

            async def settles() -> bool:
                return bool(settling) or again.done()

            # No block is mined before the validator started again has found its commitment on its way: mined
            # earlier, the seat would read committed, and this would not test the restart's choice.
            await wait_until(settles, timeout=300, what="the validator started again to wait for its transaction")
            if again.done():  # raises what stopped it, if anything did
                pytest.fail(f"the validator started again did not wait for its commitment on its way: {await again}")
            assert settling == [validator.address]
            assert any("committed from this data dir before" in line for line in said), said
            result = await _mine_until_done(w3, again, "the validator started again")
            assert not [line for line in said if "scoring" in line or "re-fit" in line or "votes" in line], said
            assert result["committed"] and result["revealed"] == whole_panel, result  # else other seats wait
            assert (result["unusable"], result["scores"]) == (ballot["unusable"], ballot["scores"]), result
            assert secret.read_text() == kept
            _who, state, unusable, commitment, _scores = await tasks.functions.getSeat(task_id, seat).call()
            assert int(state) == (3 if whole_panel else 2), "the commitment sent before the kill is on chain"
            assert bytes(commitment) == score_commitment(
                task_id, validator.address, unusable, list(ballot["scores"]), bytes.fromhex(ballot["salt"])
            )
            assert await w3.eth.get_transaction_count(validator.address) == await w3.eth.get_transaction_count(
                validator.address, "pending"
            ), "nothing else left on its way"
        finally:
            await w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        monkeypatch.undo()
        for who in VALIDATORS:  # the rest of the panel votes, which opens the reveals
            if who != seated[0]:
                with contextlib.suppress(NotDrawn):
                    await validate_task(w3, dep, dev_account(who), system.ipfs, task_id, data_dir=tmp_path)
        assert await reveal_scores(w3, dep, validator, task_id, tmp_path)  # the kept secret opens the commitment
        _who, state, _unusable, _commitment, scores = await tasks.functions.getSeat(task_id, seat).call()
        assert int(state) == 3 and list(scores[: len(ballot["scores"])]) == ballot["scores"]
