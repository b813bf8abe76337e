"""The embedded chain: py-evm in this process (web3[tester]), with the dev accounts funded."""

from __future__ import annotations

from typing import Any

from web3 import AsyncWeb3
from web3.providers.eth_tester import AsyncEthereumTesterProvider
from web3.types import Wei

from ethml.chain.accounts import dev_accounts

DEV_ETH = 1_000 * 10**18


async def embedded_chain(accounts: int = 10) -> AsyncWeb3[Any]:
    """A fresh in-process chain where the first `accounts` dev-mnemonic accounts hold ETH for gas."""
    w3 = AsyncWeb3(AsyncEthereumTesterProvider())
    funder = (await w3.eth.accounts)[0]
    for account in dev_accounts(accounts):
        tx_hash = await w3.eth.send_transaction({"from": funder, "to": account.address, "value": Wei(DEV_ETH)})
        await w3.eth.wait_for_transaction_receipt(tx_hash)
    return w3


def time_travel(w3: AsyncWeb3[Any], seconds: int) -> None:
    """Move an embedded chain's clock forward (the next block is `seconds` later): deadlines in tests,
    demos and benchmarks without waiting."""
    tester = w3.provider.ethereum_tester  # type: ignore[attr-defined]
    latest = tester.get_block_by_number("latest")
    tester.time_travel(int(latest["timestamp"]) + seconds)
