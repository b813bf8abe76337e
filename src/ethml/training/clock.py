"""Deadlines as wall-clock time on every chain, an idle devnet included.

TrainingTasks compares its deadlines with `block.timestamp`. On a public chain blocks come every few
seconds and their timestamps follow the wall clock; a development chain that mines only on demand
(anvil, the embedded chain) keeps the timestamp of its last block until something is sent, so a
deadline that has passed on the wall clock has not passed for a call or a pre-flight there. Waiting
for a deadline therefore means: sleep on the wall clock, then on a development chain mine an empty
block (`evm_mine`), on any other chain wait for a block whose timestamp is past it. The same for a
block number: a draw waits for its block, which a development chain mines at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from ethml.errors import ChainError
from ethml.node.miner import DEV_CHAIN_IDS

#: How often a public chain is polled for the block that passes a deadline.
POLL_SECONDS = 2.0

Progress = Callable[[str], None]


async def is_dev_chain(w3: AsyncWeb3[Any]) -> bool:
    return int(await w3.eth.chain_id) in DEV_CHAIN_IDS


async def latest(w3: AsyncWeb3[Any]) -> tuple[int, int]:
    """(number, timestamp) of the latest block."""
    block = await w3.eth.get_block("latest")
    return int(block["number"]), int(block["timestamp"])


async def mine(w3: AsyncWeb3[Any], blocks: int = 1, account: LocalAccount | None = None) -> None:
    """Mine empty blocks on a development chain (anvil, hardhat, ganache, the embedded chain). One
    without `evm_mine` gets a no-op transaction from `account` (a transfer of nothing to itself) per
    block instead, when an account is given."""
    if not await is_dev_chain(w3):
        raise ChainError("only a development chain mines on request")
    if blocks > 1:
        try:
            response = await w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]
            if not (isinstance(response, dict) and response.get("error")):
                return
        except Exception:  # noqa: BLE001 - not anvil: one block at a time
            pass
    for _ in range(blocks):
        try:
            response = await w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
            problem = response.get("error") if isinstance(response, dict) else None
        except Exception as exc:  # noqa: BLE001 - a development chain without evm_mine
            problem = exc
        if problem is None:
            continue
        if account is None:
            raise ChainError(f"this development chain does not mine on request (evm_mine: {problem})")
        await _no_op(w3, account)


async def _no_op(w3: AsyncWeb3[Any], account: LocalAccount) -> None:
    from ethml.chain.tx import fee_fields

    tx: dict[str, Any] = {"from": account.address, "to": account.address, "value": 0, "gas": 21_000}
    tx["chainId"] = int(await w3.eth.chain_id)
    tx["nonce"] = await w3.eth.get_transaction_count(account.address, "pending")
    tx.update(await fee_fields(w3))
    signed = account.sign_transaction(tx)
    await w3.eth.wait_for_transaction_receipt(await w3.eth.send_raw_transaction(signed.raw_transaction))


async def chain_now(w3: AsyncWeb3[Any]) -> int:
    """The time the next transaction will see as `block.timestamp`, as near as can be told without
    sending one: the pending block's timestamp where the node gives it (a development chain's clock,
    time jumps included), else the wall clock or the latest block's timestamp if that is ahead."""
    _number, stamp = await latest(w3)
    try:
        pending = int((await w3.eth.get_block("pending"))["timestamp"])
    except Exception:  # noqa: BLE001 - a node without a pending block: the wall clock
        return max(stamp, int(time.time()))
    return max(stamp, pending)


async def wait_past(
    w3: AsyncWeb3[Any],
    deadline: int,
    what: str,
    progress: Progress | None = None,
    account: LocalAccount | None = None,
) -> None:
    """Return once a block exists whose timestamp is past `deadline` (unix seconds), so a call or a
    pre-flight sees the deadline passed.

    On a development chain: mine an empty block, whose timestamp is the chain's clock now (which runs
    ahead of the wall clock after a time jump); follow that clock on the wall clock, checking every few
    seconds whether someone else's block has passed the deadline already; mine again once the
    deadline has passed on it. Elsewhere: sleep on the wall clock, then poll for a block past it."""
    dev = await is_dev_chain(w3)
    _number, stamp = await latest(w3)
    if stamp > deadline:
        return
    told = False
    if dev:
        await mine(w3, 1, account)
        _number, stamp = await latest(w3)
        sampled, at = stamp, time.monotonic()
        while stamp <= deadline:
            gap = deadline - (sampled + (time.monotonic() - at)) + 1
            if gap > 0:
                if progress is not None and not told and gap > 2:
                    progress(f"waiting {round(gap)} s for {what}")
                    told = True
                await asyncio.sleep(min(gap, 5))
            else:
                await mine(w3, 1, account)
                _number, sampled = await latest(w3)
                at = time.monotonic()
            _number, stamp = await latest(w3)
        return
    while stamp <= deadline:
        gap = deadline - max(stamp, int(time.time())) + 1
        if progress is not None and not told and gap > 2:
            progress(f"waiting {gap} s for {what}")
            told = True
        await asyncio.sleep(min(max(gap, POLL_SECONDS), 60))
        _number, stamp = await latest(w3)


async def wait_for_block(
    w3: AsyncWeb3[Any],
    number: int,
    what: str,
    progress: Progress | None = None,
    account: LocalAccount | None = None,
) -> None:
    """Return once block `number` is mined (the latest block is past it): mined at once on a development
    chain, waited for elsewhere."""
    current, _stamp = await latest(w3)
    if current > number:
        return
    if await is_dev_chain(w3):
        await mine(w3, number - current + 1, account)
        return
    if progress is not None:
        progress(f"waiting for block {number + 1} ({number + 1 - current} to go) for {what}")
    while current <= number:
        await asyncio.sleep(POLL_SECONDS)
        current, _stamp = await latest(w3)


async def catch_up(w3: AsyncWeb3[Any], account: LocalAccount | None = None) -> None:
    """On a development chain whose last block is older than the wall clock, mine an empty one, so the
    pre-flight of the next transaction sees the time it will be mined at; elsewhere nothing (a public
    chain's blocks keep up by themselves)."""
    if not await is_dev_chain(w3):
        return
    _number, stamp = await latest(w3)
    if stamp < time.time() - 1:
        with contextlib.suppress(ChainError):  # cannot mine: the pre-flight then says what it sees
            await mine(w3, 1, account)
