"""The embedded chain: py-evm in this process (web3[tester]), with the dev accounts funded."""

from __future__ import annotations

from typing import Any

from web3 import AsyncWeb3
from web3.providers.eth_tester import AsyncEthereumTesterProvider
from web3.types import Wei

from ethml.chain.accounts import dev_accounts

DEV_ETH = 1_000 * 10**18
#: What a CALL with value must keep in hand beyond what it uses (geth adds it to its first guess too).
CALL_STIPEND = 2_300


async def embedded_chain(accounts: int = 10) -> AsyncWeb3[Any]:
    """A fresh in-process chain where the first `accounts` dev-mnemonic accounts hold ETH for gas."""
    w3 = AsyncWeb3(AsyncEthereumTesterProvider())
    chain = w3.provider.ethereum_tester.backend.chain  # type: ignore[attr-defined]
    # The class was made for this chain alone; a chain rebuilt from it (a reverted snapshot) keeps this.
    type(chain).gas_estimator = staticmethod(estimate_gas)
    chain.gas_estimator = estimate_gas
    funder = (await w3.eth.accounts)[0]
    for account in dev_accounts(accounts):
        tx_hash = await w3.eth.send_transaction({"from": funder, "to": account.address, "value": Wei(DEV_ETH)})
        await w3.eth.wait_for_transaction_receipt(tx_hash)
    return w3


def estimate_gas(state: Any, transaction: Any) -> int:
    """A gas limit the transaction succeeds with, in two runs of it where py-evm's own estimator takes
    about ten (a binary search from the intrinsic gas to the block's limit, every run a full execution in
    Python: most of the time nodes and deployments spend on this chain).

    The first run, at the block's gas limit, gives the gas used (or the error, raised as py-evm's estimator
    raises it); a limit of that gas, its refund and a call stipend, times 64/63 (what each nested call must
    leave behind, EIP-150), is what geth tries first, and is confirmed by the second run. A transaction
    that fails at that limit (one that checks `gasleft()` itself) gets py-evm's binary search instead.
    Like every estimate, an upper bound: the transaction uses at most this, and succeeds with it.
    """
    from eth.estimators.gas import binary_gas_search_intrinsic_tolerance
    from eth.vm.spoof import SpoofTransaction

    intrinsic = int(transaction.intrinsic_gas)
    snapshot = state.snapshot()
    try:
        computation = state.apply_transaction(SpoofTransaction(transaction, gas=state.gas_limit, gas_price=0))
        if computation.is_error:
            raise computation.error
        used = int(computation.get_gas_used())
        refund = int(computation.get_gas_refund())
    finally:
        state.revert(snapshot)
    if used == 0:
        return intrinsic  # nothing ran beyond the intrinsic cost (a plain transfer)
    guess = min(int(state.gas_limit), (intrinsic + used + refund + CALL_STIPEND) * 64 // 63)
    snapshot = state.snapshot()
    try:
        confirmed = not state.apply_transaction(SpoofTransaction(transaction, gas=guess)).is_error
    finally:
        state.revert(snapshot)
    return guess if confirmed else int(binary_gas_search_intrinsic_tolerance(state, transaction))


def time_travel(w3: AsyncWeb3[Any], seconds: int) -> None:
    """Move an embedded chain's clock forward (the next block is `seconds` later): deadlines in tests,
    demos and benchmarks without waiting."""
    tester = w3.provider.ethereum_tester  # type: ignore[attr-defined]
    latest = tester.get_block_by_number("latest")
    tester.time_travel(int(latest["timestamp"]) + seconds)
