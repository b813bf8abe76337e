"""Locally signed transactions with EIP-1559 fees, a pre-flight against the pending block, and revert
reasons in words (ethml.chain.reverts).

One path for every sender (`send` here, the miner node's TxSender, the coordinator's relayer): `preflight`
estimates the gas against the pending block, where the transaction will run, so a transaction that would
revert is refused with its reason before it costs gas; `why_reverted` reads the reason of one that was
mined and reverted anyway (another transaction landed first) by replaying it in its block.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.exceptions import (
    MethodUnavailable,
    TimeExhausted,
    TransactionIndexingInProgress,
    TransactionNotFound,
    Web3RPCError,
)
from web3.types import TxReceipt

from ethml.chain.reverts import Moment, Revert, decode_revert, explain, is_revert, revert_data
from ethml.errors import ChainError, TransactionReverted

__all__ = [
    "GAS_MARGIN",
    "RECEIPT_GRACE",
    "SignedTx",
    "check_receipt",
    "decode_revert",
    "fee_fields",
    "is_revert",
    "mined_receipt",
    "preflight",
    "receipt_if_mined",
    "revert_reason",
    "send",
    "sign_call",
    "why_reverted",
]

GAS_MARGIN = 1.25
#: How long a transaction's receipt is read again once its nonce shows as used, before concluding that the
#: nonce went to another transaction. A node may count the nonce as used before it serves the receipt
#: (anvil under load does, for a moment; a load-balanced provider may answer from a node a block behind):
#: one mainnet slot.
RECEIPT_GRACE = 12.0

#: Clients known to refuse estimates against the pending block (the embedded eth-tester chain).
_NO_PENDING_ESTIMATES: weakref.WeakSet[Any] = weakref.WeakSet()


def abi_of(call: Any) -> Sequence[Mapping[str, Any]] | None:
    """The ABI of the contract a call goes to, so its own error declarations decode first."""
    abi = getattr(call, "contract_abi", None)
    return abi if isinstance(abi, list) else None


def revert_reason(
    exc: BaseException, abi: Sequence[Mapping[str, Any]] | None = None, moment: Moment | None = None
) -> str:
    """The revert reason of a failed call in words, from whichever layer raised it."""
    data = revert_data(exc)
    if data is not None:
        return explain(decode_revert(data, abi), moment)
    message = getattr(exc, "message", None) or str(exc)
    return "no reason given" if message.strip().lower() in ("execution reverted", "") else str(message)


async def moment_of(w3: AsyncWeb3[Any], block: str | int) -> Moment:
    """The timestamp and number of `block` ("pending", "latest" or a number); the wall clock if the
    node will not say."""
    try:
        found = await w3.eth.get_block(block)  # type: ignore[arg-type]
        return Moment(int(found["timestamp"]), int(found["number"]))
    except Exception:  # noqa: BLE001 - the explanation then has no gap to show, nothing worse
        return Moment(int(time.time()), None)


async def preflight(w3: AsyncWeb3[Any], call: Any, tx: Mapping[str, Any], what: str) -> int:
    """The gas `call` uses in the next block (an estimate against the pending block, where clients
    offer it); TransactionReverted with the decoded reason if it would revert there.

    Raises:
        TransactionReverted: the transaction would revert; nothing was sent, no gas spent.
        ChainError: the node refused the estimate for another reason (funds, a malformed call).
    """
    pending = w3 not in _NO_PENDING_ESTIMATES
    try:
        if pending:
            try:
                return int(await call.estimate_gas(dict(tx), block_identifier="pending"))
            except MethodUnavailable:
                _NO_PENDING_ESTIMATES.add(w3)
                pending = False
        return int(await call.estimate_gas(dict(tx)))
    except Exception as exc:
        if not is_revert(exc):
            if isinstance(exc, Web3RPCError):
                raise ChainError(f"{what}: the node refused it: {getattr(exc, 'message', None) or exc}") from exc
            raise
        moment = await moment_of(w3, "pending" if pending else "latest")
        error = decode_revert(revert_data(exc), abi_of(call))
        reason = revert_reason(exc, abi_of(call), moment)
        raise TransactionReverted(what, reason, error=error, preflight=True) from exc


async def why_reverted(
    w3: AsyncWeb3[Any], receipt: Mapping[str, Any], abi: Sequence[Mapping[str, Any]] | None = None
) -> tuple[str, Revert | None]:
    """The reason a mined transaction reverted, in words, and its decoded error: the receipt carries
    none, so the transaction is replayed with eth_call in its block (on that block's state, where
    whatever made it fail has landed too)."""
    number = int(receipt["blockNumber"])
    moment = await moment_of(w3, number)
    try:
        tx = await w3.eth.get_transaction(receipt["transactionHash"])
    except Exception:  # noqa: BLE001 - the explanation is best effort; the revert itself is certain
        return "no reason available (the node no longer has the transaction)", None
    if int(receipt.get("gasUsed", 0)) >= int(tx["gas"]):
        return f"it ran out of gas (all {int(tx['gas']):,} gas used)", None
    replay: dict[str, Any] = {"from": tx["from"], "to": tx.get("to"), "data": tx["input"], "value": tx["value"]}
    replay["gas"] = tx["gas"]
    try:
        await w3.eth.call(replay, block_identifier=number)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - a revert is what we look for; anything else leaves no reason
        if not is_revert(exc):
            return f"no reason available (replaying it failed: {type(exc).__name__})", None
        data = revert_data(exc)
        error = decode_revert(data, abi) if data is not None else None
        return revert_reason(exc, abi, moment), error
    return "no reason available (replayed in its block, it succeeds)", None


#: A replacement must raise both fees by at least 10 %; 12.5 % clears every client's rule.
BUMP_NUMERATOR, BUMP_DENOMINATOR = 9, 8


async def fee_fields(w3: AsyncWeb3[Any], *, priority_gwei: float = 1.0) -> dict[str, int]:
    """EIP-1559 fees: max fee = 2 x base fee + tip, so a transaction survives a few full blocks."""
    block = await w3.eth.get_block("latest")
    base = int(block.get("baseFeePerGas", 0) or 0)
    tip = int(priority_gwei * 10**9)
    return {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip}


@dataclass(frozen=True)
class SignedTx:
    """A transaction signed locally, not yet sent: what a journal records before broadcasting it."""

    raw: bytes
    hash: str
    nonce: int
    gas: int
    max_fee: int
    tip: int


async def sign_call(
    w3: AsyncWeb3[Any],
    account: LocalAccount,
    call: Any,
    *,
    what: str,
    nonce: int | None = None,
    gas: int | None = None,
    value: int = 0,
    fees: Mapping[str, int] | None = None,
    chain_id: int | None = None,
) -> SignedTx:
    """Pre-flight `call` against the pending block, then sign it with EIP-1559 fees (`fee_fields` unless
    `fees` gives maxFeePerGas and maxPriorityFeePerGas).

    Raises:
        TransactionReverted: it would revert; nothing was signed or sent.
    """
    tx: dict[str, Any] = {"from": account.address, "value": value}
    tx["chainId"] = chain_id if chain_id is not None else await w3.eth.chain_id
    tx["nonce"] = nonce if nonce is not None else await w3.eth.get_transaction_count(account.address, "pending")
    tx.update(fees if fees is not None else await fee_fields(w3))
    estimate = await preflight(w3, call, tx, what)
    # Nodes' estimates can sit exactly at the edge (a deployment's code deposit, refunds): keep a margin.
    tx["gas"] = gas if gas is not None else int(estimate * GAS_MARGIN)
    built = await call.build_transaction(tx)
    signed = account.sign_transaction(built)
    return SignedTx(
        raw=bytes(signed.raw_transaction),
        hash="0x" + bytes(signed.hash).hex(),
        nonce=int(tx["nonce"]),
        gas=int(tx["gas"]),
        max_fee=int(tx["maxFeePerGas"]),
        tip=int(tx["maxPriorityFeePerGas"]),
    )


#: How long a receipt is waited for once the node names the block its transaction is in.
RECEIPT_SETTLE = 120.0


async def mined_receipt(
    w3: AsyncWeb3[Any],
    hashes: Sequence[Any],
    grace: float,
    *,
    max_poll: float = 2.0,
    settle: float = RECEIPT_SETTLE,
) -> TxReceipt | None:
    """The receipt of whichever of `hashes` (the attempts at one nonce, which the account has now used) was
    mined, or None if none was and the nonce went to another transaction.

    The receipts are read again for up to `grace` seconds, since a node may count a nonce as used before it
    serves the receipt. Past that, one the node still shows in a block (eth_getTransactionByHash) is mined
    whatever the receipts say: its receipt is waited for up to `settle` seconds more.

    Raises:
        ChainError: a transaction the node shows in a block has no receipt after `settle` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    pause = 0.05
    while True:
        for tx_hash in hashes:
            if (receipt := await receipt_if_mined(w3, tx_hash)) is not None:
                return receipt
        if loop.time() >= deadline:
            break
        await asyncio.sleep(min(pause, max(deadline - loop.time(), 0.0)))
        pause = min(pause * 2, max_poll)
    for tx_hash in hashes:
        try:
            tx = await w3.eth.get_transaction(tx_hash)
        except TransactionNotFound:
            continue
        if tx.get("blockNumber") is None:
            continue
        try:
            return await w3.eth.wait_for_transaction_receipt(tx_hash, timeout=settle, poll_latency=max_poll)
        except TimeExhausted as exc:
            raise ChainError(
                f"the node shows transaction {HexBytes(tx_hash).to_0x_hex()} in block {tx['blockNumber']} but "
                f"serves no receipt for it after {grace + settle:.0f} s; try again once the node has caught up"
            ) from exc
    return None


async def receipt_if_mined(w3: AsyncWeb3[Any], tx_hash: Any) -> TxReceipt | None:
    """The receipt of `tx_hash` if the node serves one with a block; None if not (yet)."""
    try:
        receipt = await w3.eth.get_transaction_receipt(tx_hash)
    except (TransactionNotFound, TransactionIndexingInProgress):
        return None
    return receipt if receipt is not None and receipt.get("blockNumber") is not None else None


async def check_receipt(w3: AsyncWeb3[Any], receipt: TxReceipt, call: Any, what: str) -> TxReceipt:
    """`receipt` if its transaction succeeded; TransactionReverted with the reason in words if not."""
    if receipt["status"] != 1:
        reason, error = await why_reverted(w3, receipt, abi_of(call))
        raise TransactionReverted(what, reason, error=error, block=int(receipt["blockNumber"]))
    return receipt


async def send(
    w3: AsyncWeb3[Any],
    account: LocalAccount,
    call: Any,
    *,
    what: str | None = None,
    gas: int | None = None,
    nonce: int | None = None,
    value: int = 0,
) -> TxReceipt:
    """Sign `call` (a contract function call or a deploy constructor) locally, send it, wait for it.

    The pre-flight runs even with an explicit `gas`: a transaction that would revert is never sent.

    Raises:
        TransactionReverted: it would revert (nothing sent), or it was mined and reverted; either
            way the reason is decoded and said in words.
    """
    label = what or getattr(call, "fn_name", None) or "transaction"
    signed = await sign_call(w3, account, call, what=label, nonce=nonce, gas=gas, value=value)
    tx_hash = await w3.eth.send_raw_transaction(signed.raw)
    receipt = await w3.eth.wait_for_transaction_receipt(tx_hash)
    return await check_receipt(w3, receipt, call, label)
