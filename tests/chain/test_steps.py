"""The journaled step runner against a real anvil: what a rerun does with each state a step can be left in
(mined but not recorded, signed but never sent, its nonce taken by another transaction, its receipt
unknown), and a transaction that waits too long replaced with higher fees. Each case checks the
account's nonce and the code on chain: a step runs once, a contract is deployed once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from web3 import AsyncWeb3
from web3.utils.address import get_create_address

from ethml.chain import dev_account
from ethml.chain._artifacts import load_artifact
from ethml.chain.journal import Attempt, Journal
from ethml.chain.rpc import http_web3
from ethml.chain.steps import StepEvent, StepRunner
from ethml.chain.tx import fee_fields, sign_call
from tests.conftest import lag_receipts

DEPLOYER = dev_account(3)


@pytest.fixture
async def w3(anvil_url: str) -> Any:
    client: AsyncWeb3[Any] = http_web3(anvil_url)
    yield client
    await client.provider.disconnect()


def registry_constructor(w3: AsyncWeb3[Any]) -> Any:
    artifact = load_artifact("ModelRegistry")
    factory: Any = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    return factory.constructor(DEPLOYER.address)


async def signed_attempt(w3: AsyncWeb3[Any], nonce: int) -> tuple[Attempt, bytes]:
    signed = await sign_call(
        w3, DEPLOYER, registry_constructor(w3), what="ModelRegistry", nonce=nonce, fees=await fee_fields(w3)
    )
    raw = "0x" + signed.raw.hex()
    return Attempt(signed.hash, signed.nonce, signed.gas, signed.max_fee, signed.tip, raw), signed.raw


async def has_code(w3: AsyncWeb3[Any], nonce: int) -> bool:
    return len(await w3.eth.get_code(get_create_address(DEPLOYER.address, nonce))) > 0  # type: ignore[arg-type]


async def test_a_step_mined_before_the_crash_is_not_sent_again(w3: AsyncWeb3[Any], tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.json")
    attempt, raw = await signed_attempt(w3, 0)
    journal.record_attempt("registry", "ModelRegistry", attempt)
    await w3.eth.send_raw_transaction(raw)  # then the process died before it saw the receipt

    events: list[StepEvent] = []
    runner = StepRunner(w3, DEPLOYER, Journal.load(tmp_path / "j.json"), progress=events.append)
    done = await runner.deploy("registry", "ModelRegistry", DEPLOYER.address)
    assert done.tx == attempt.hash and done.address == get_create_address(DEPLOYER.address, 0)
    assert [e.state for e in events] == ["mined"]
    assert await w3.eth.get_transaction_count(DEPLOYER.address) == 1
    assert Journal.load(tmp_path / "j.json").done_keys() == {"registry"}


async def test_a_step_journaled_but_never_sent_is_sent_byte_for_byte(w3: AsyncWeb3[Any], tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.json")
    attempt, _ = await signed_attempt(w3, 0)
    journal.record_attempt("registry", "ModelRegistry", attempt)  # then the process died

    events: list[StepEvent] = []
    runner = StepRunner(w3, DEPLOYER, Journal.load(tmp_path / "j.json"), progress=events.append)
    done = await runner.deploy("registry", "ModelRegistry", DEPLOYER.address)
    assert done.tx == attempt.hash
    assert [e.state for e in events] == ["rebroadcast", "mined"]
    assert await w3.eth.get_transaction_count(DEPLOYER.address) == 1


async def test_a_step_whose_nonce_went_elsewhere_is_signed_again(w3: AsyncWeb3[Any], tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.json")
    attempt, _ = await signed_attempt(w3, 0)
    journal.record_attempt("registry", "ModelRegistry", attempt)
    # Another program sends from the same account with that nonce.
    other = DEPLOYER.sign_transaction(
        {
            "to": DEPLOYER.address,
            "value": 1,
            "nonce": 0,
            "gas": 21_000,
            "chainId": await w3.eth.chain_id,
            **(await fee_fields(w3)),
        }
    )
    await w3.eth.wait_for_transaction_receipt(await w3.eth.send_raw_transaction(other.raw_transaction))

    events: list[StepEvent] = []
    runner = StepRunner(w3, DEPLOYER, Journal.load(tmp_path / "j.json"), progress=events.append, receipt_grace=0.5)
    done = await runner.deploy("registry", "ModelRegistry", DEPLOYER.address)
    assert [e.state for e in events] == ["resigned", "sent", "mined"]
    assert done.tx != attempt.hash and done.address == get_create_address(DEPLOYER.address, 1)
    assert not await has_code(w3, 0) and await has_code(w3, 1)
    assert await w3.eth.get_transaction_count(DEPLOYER.address) == 2


async def journaled_call(w3: AsyncWeb3[Any], tmp_path: Path) -> tuple[Any, Any, str]:
    """A registry deployed (nonce 0), and a registerModel call journaled and mined (nonce 1), as a run killed
    before it saw the receipt leaves them: the registry, the call and the call's hash."""
    registry_tx = await w3.eth.send_raw_transaction((await signed_attempt(w3, 0))[1])
    await w3.eth.wait_for_transaction_receipt(registry_tx)
    artifact = load_artifact("ModelRegistry")
    registry: Any = w3.eth.contract(address=get_create_address(DEPLOYER.address, 0), abi=artifact.abi)
    call = registry.functions.registerModel("Qm", bytes(32), 0, 0, 4)
    signed = await sign_call(w3, DEPLOYER, call, what="registerModel", nonce=1, fees=await fee_fields(w3))
    journal = Journal(tmp_path / "j.json")
    attempt = Attempt(signed.hash, 1, signed.gas, signed.max_fee, signed.tip, "0x" + signed.raw.hex())
    journal.record_attempt("model", "registerModel", attempt)
    await w3.eth.wait_for_transaction_receipt(await w3.eth.send_raw_transaction(signed.raw))
    return registry, call, signed.hash


async def test_a_call_whose_receipt_lags_behind_its_nonce_is_not_sent_twice(w3: AsyncWeb3[Any], tmp_path: Path) -> None:
    """The node counts the nonce as used a moment before it serves the receipt (seen on anvil under load; a
    load-balanced provider a block behind does the same): the step waits for the receipt instead of taking
    the nonce as gone to another transaction and sending the call again."""
    registry, call, tx_hash = await journaled_call(w3, tmp_path)
    refused = lag_receipts(w3, 3)
    events: list[StepEvent] = []
    runner = StepRunner(w3, DEPLOYER, Journal.load(tmp_path / "j.json"), progress=events.append, max_poll=0.1)
    done = await runner.transact("model", call, "registerModel")
    assert refused == [3], "the receipt was missing on the reads after the nonce showed as used"
    assert [e.state for e in events] == ["mined"] and done.tx == tx_hash and done.block > 0
    assert await w3.eth.get_transaction_count(DEPLOYER.address) == 2, "the call was sent once"
    assert await registry.functions.modelCount().call() == 1


async def test_a_receipt_lagging_past_the_grace_is_waited_for_when_the_node_shows_the_block(
    w3: AsyncWeb3[Any], tmp_path: Path
) -> None:
    """Past `receipt_grace` with no receipt, a transaction the node still shows in a block was mined: the step
    waits for its receipt rather than signing the call again."""
    registry, call, tx_hash = await journaled_call(w3, tmp_path)
    refused = lag_receipts(w3, 10**9)  # eth_getTransactionReceipt never answers within the grace
    events: list[StepEvent] = []
    runner = StepRunner(
        w3, DEPLOYER, Journal.load(tmp_path / "j.json"), progress=events.append, max_poll=0.1, receipt_grace=0.3
    )
    done = await runner.transact("model", call, "registerModel")
    assert refused[0] >= 2
    assert [e.state for e in events] == ["mined"] and done.tx == tx_hash and done.block > 0
    assert await w3.eth.get_transaction_count(DEPLOYER.address) == 2, "the call was sent once"
    assert await registry.functions.modelCount().call() == 1


async def test_a_deployment_whose_receipt_lags_is_recorded_with_its_block(w3: AsyncWeb3[Any], tmp_path: Path) -> None:
    """A deployment's contract is at its address before the node serves the receipt: the step still waits for
    the receipt, so the journal records the block and gas (the deployment file's start block for logs)."""
    journal = Journal(tmp_path / "j.json")
    attempt, raw = await signed_attempt(w3, 0)
    journal.record_attempt("registry", "ModelRegistry", attempt)
    await w3.eth.wait_for_transaction_receipt(await w3.eth.send_raw_transaction(raw))
    refused = lag_receipts(w3, 3)
    runner = StepRunner(w3, DEPLOYER, Journal.load(tmp_path / "j.json"), max_poll=0.1)
    done = await runner.deploy("registry", "ModelRegistry", DEPLOYER.address)
    assert refused == [3]
    assert done.tx == attempt.hash and done.block > 0 and done.gas_used > 0
    outcome = Journal.load(tmp_path / "j.json").steps["registry"].done
    assert outcome is not None and outcome.block == done.block
    assert await w3.eth.get_transaction_count(DEPLOYER.address) == 1


async def test_a_deployment_found_by_its_address_when_no_receipt_names_it(w3: AsyncWeb3[Any], tmp_path: Path) -> None:
    """The journal's hash has no receipt, yet the nonce is used and the contract is where that nonce puts it
    (a node that lost the receipt, a replacement signed elsewhere): the step is done, not deployed again."""
    journal = Journal(tmp_path / "j.json")
    attempt, raw = await signed_attempt(w3, 0)
    await w3.eth.wait_for_transaction_receipt(await w3.eth.send_raw_transaction(raw))
    attempt.hash = "0x" + "ab" * 32
    journal.record_attempt("registry", "ModelRegistry", attempt)

    runner = StepRunner(w3, DEPLOYER, Journal.load(tmp_path / "j.json"), receipt_grace=0.5)
    done = await runner.deploy("registry", "ModelRegistry", DEPLOYER.address)
    assert done.address == get_create_address(DEPLOYER.address, 0)
    assert await w3.eth.get_transaction_count(DEPLOYER.address) == 1


async def test_a_pending_transaction_is_replaced_with_higher_fees(w3: AsyncWeb3[Any], tmp_path: Path) -> None:
    await w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    journal = Journal(tmp_path / "j.json")
    events: list[StepEvent] = []
    runner = StepRunner(w3, DEPLOYER, journal, progress=events.append, replace_after=0.3, max_poll=0.1)
    task = asyncio.create_task(runner.deploy("registry", "ModelRegistry", DEPLOYER.address))
    async with asyncio.timeout(60):
        while not any(e.state == "replaced" for e in events):
            await asyncio.sleep(0.05)
    await w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    done = await asyncio.wait_for(task, 60)
    attempts = Journal.load(tmp_path / "j.json").steps["registry"].attempts
    assert len(attempts) >= 2 and len({a.nonce for a in attempts}) == 1
    assert attempts[1].max_fee > attempts[0].max_fee and attempts[1].tip > attempts[0].tip
    assert done.tx in {a.hash for a in attempts[1:]}
    assert await w3.eth.get_transaction_count(DEPLOYER.address) == 1 and await has_code(w3, 0)


async def test_a_dropped_transaction_is_sent_again_while_waiting(w3: AsyncWeb3[Any], tmp_path: Path) -> None:
    await w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    events: list[StepEvent] = []
    runner = StepRunner(w3, DEPLOYER, Journal(tmp_path / "j.json"), progress=events.append, max_poll=0.1)
    task = asyncio.create_task(runner.deploy("registry", "ModelRegistry", DEPLOYER.address))
    async with asyncio.timeout(60):
        while not events:
            await asyncio.sleep(0.02)
    await w3.provider.make_request("anvil_dropAllTransactions", [])  # type: ignore[arg-type]
    await w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
    done = await asyncio.wait_for(task, 60)
    assert [e.state for e in events] == ["sent", "rebroadcast", "mined"]
    assert done.tx == events[0].tx and await w3.eth.get_transaction_count(DEPLOYER.address) == 1
