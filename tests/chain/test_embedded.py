"""The embedded chain's gas estimate: two runs of the transaction instead of py-evm's binary search, and
still an upper bound the transaction succeeds with, within a few percent of the exact minimum."""

from __future__ import annotations

from typing import Any

from eth.estimators.gas import binary_gas_search_exact
from web3 import AsyncWeb3

from ethml.chain import (
    EML,
    ModelKind,
    ModelSpec,
    consumer_contract,
    deploy_system,
    dev_account,
    embedded_chain,
    ethml_contract,
    send,
)
from ethml.chain.embedded import estimate_gas
from ethml.requester import consumer_deposit

IRIS = ModelSpec(
    "iris", "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "0x" + "ab" * 32, ModelKind.CLASSIFICATION, 0, 4
)
#: Runtime code that reverts unless more than 1,000,000 gas is left when it starts, and then uses almost
#: none: GAS PUSH3 1000000 LT PUSH1 14 JUMPI PUSH1 0 PUSH1 0 REVERT JUMPDEST STOP.
NEEDS_A_MILLION = "5a620f424010600e5760006000fd5b00"
#: Init code returning that runtime (16 bytes copied from offset 11).
DEPLOY_NEEDS_A_MILLION = "0x6010" + "80" + "600b" + "6000" + "39" + "6000" + "f3" + NEEDS_A_MILLION


def _chain(w3: AsyncWeb3[Any]) -> Any:
    return w3.provider.ethereum_tester.backend.chain  # type: ignore[attr-defined]


async def _exact(w3: AsyncWeb3[Any], tx: dict[str, Any]) -> int:
    chain = _chain(w3)
    chain.gas_estimator = binary_gas_search_exact
    try:
        return int(await w3.eth.estimate_gas(tx))  # type: ignore[arg-type]
    finally:
        chain.gas_estimator = estimate_gas


async def test_the_estimate_is_an_upper_bound_close_to_the_exact_minimum() -> None:
    w3 = await embedded_chain()
    assert _chain(w3).gas_estimator is estimate_gas
    deployment = await deploy_system(w3, dev_account(0), models=[IRIS])
    ethml = ethml_contract(w3, deployment.ethml)
    user = dev_account(9)
    deposit = await consumer_deposit(w3, deployment)
    calls = [
        # Through the consumer contract (a call into the oracle, a callback paid for): opens round 1.
        (consumer_contract(w3, deployment.consumer).functions.request(1, "QmA", 0), deposit),
        (ethml.functions.requestPrediction(1, "QmB", 2 * EML, 0), 0),  # a token pull, queued behind it
    ]
    for call, value in calls:
        tx = await call.build_transaction({"from": user.address, "value": value, "gas": 1})
        tx.pop("gas")
        estimate = int(await w3.eth.estimate_gas(tx))  # type: ignore[arg-type]
        exact = await _exact(w3, tx)
        assert exact <= estimate <= exact * 1.05 + 2_500, (estimate, exact)
        receipt = await send(w3, user, call, value=value)  # sent with the margin over the estimate
        assert receipt["status"] == 1
    transfer = {"from": user.address, "to": dev_account(8).address, "value": 1}
    assert await w3.eth.estimate_gas(transfer) == 21_000  # type: ignore[arg-type]


async def test_a_transaction_that_checks_the_gas_left_gets_the_binary_search() -> None:
    w3 = await embedded_chain(1)
    funder = (await w3.eth.accounts)[0]
    created = await w3.eth.wait_for_transaction_receipt(
        await w3.eth.send_transaction({"from": funder, "data": DEPLOY_NEEDS_A_MILLION, "gas": 100_000})
    )
    target = created["contractAddress"]
    assert (await w3.eth.get_code(target)).hex() == NEEDS_A_MILLION
    tx = {"from": funder, "to": target}
    estimate = int(await w3.eth.estimate_gas(tx))  # type: ignore[arg-type]
    assert estimate > 1_000_000  # what it used (a few gas) times 64/63 would not do
    assert estimate >= await _exact(w3, tx)
    ok = await w3.eth.wait_for_transaction_receipt(await w3.eth.send_transaction({**tx, "gas": estimate}))
    assert ok["status"] == 1
    short = await w3.eth.wait_for_transaction_receipt(await w3.eth.send_transaction({**tx, "gas": 500_000}))
    assert short["status"] == 0, "the contract does check the gas left"
