"""The coordinator's side of the chain: the TrainingTasks client and the relayer key's journaled
transactions (signed, stored in the task document, then sent, so a restart re-sends the same one).

The loops that use it have modules of their own: `relayer` (tasks from permits), `follower`
(TrainingTasks events into task documents), `keeper` (test-set reveals and finalization)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.exceptions import TransactionNotFound, Web3RPCError

from ethml.chain.deploy import Deployment, token_contract, training_contract
from ethml.chain.tx import GAS_MARGIN, RECEIPT_GRACE, abi_of, fee_fields, mined_receipt, preflight, why_reverted
from ethml.coordinator.lease import LeaseLost, Lock
from ethml.coordinator.store import Store
from ethml.errors import ChainError, TransactionReverted

log = structlog.get_logger("ethml.coordinator")

#: TrainingTasks keeps scores as millionths.
SCORE_SCALE = 1_000_000


#: Seconds a transaction waits for the relayer lock (held by another instance's send) before RelayerBusy.
RELAYER_LOCK_WAIT = 120.0


class RelayerBusy(ChainError):
    """The relayer lock stayed with another instance past the wait: nothing was signed or sent here."""


class SendRefused(ChainError):
    """The node refused the transaction (it does not have it after the send): not sent. The journal forgets it,
    so the next send signs afresh (new fees, a new estimate); the contract's nonces keep a creation from
    happening twice even if a copy of the refused one was somewhere else."""


class GasOverCap(ChainError):
    """The pre-flight needs more gas than the caller pays for this transaction: nothing was signed or sent."""


@dataclass
class Chain:
    w3: AsyncWeb3[Any]
    deployment: Deployment
    relayer: LocalAccount
    chain_id: int
    tasks: Any  # the TrainingTasks contract
    token: Any  # the EML token (permits)
    #: The latest block number seen (by start-up and the observer loop); None until then.
    head: int | None = None
    #: How long a journaled transaction's receipt is read again once its nonce is used (`mined_receipt`).
    receipt_grace: float = RECEIPT_GRACE
    #: Blocks a creation must be behind the head before the relayer links a document to it (`--confirmations`,
    #: as the follower applies events): a reorg within them cannot leave a document on another task.
    confirmations: int = 0

    async def confirmed_head(self) -> int:
        """The newest block at least `confirmations` behind the head (the head itself without)."""
        return int(await self.w3.eth.block_number) - self.confirmations

    async def confirms(self, block: int) -> bool:
        """Whether `block` is `confirmations` deep (always, without confirmations: no call to the node)."""
        return not self.confirmations or block <= await self.confirmed_head()

    @classmethod
    async def connect(cls, w3: AsyncWeb3[Any], deployment: Deployment, relayer: LocalAccount) -> Chain:
        assert deployment.training is not None
        return cls(
            w3,
            deployment,
            relayer,
            int(await w3.eth.chain_id),
            training_contract(w3, deployment.training),
            token_contract(w3, deployment.token),
        )


async def send_raw(
    chain: Chain,
    store: Store,
    call: Any,
    what: str,
    journal: tuple[str, str] | None,
    *,
    precheck: Callable[[], Awaitable[None]] | None = None,
    max_gas: int | None = None,
) -> dict[str, Any]:
    """Sign and send with the relayer key under the relayer lock; returns the receipt.

    With `journal` (task id, name), the signed transaction and its nonce are stored in the task
    document before it is sent, and whoever sends for that task next (a retry, a restart, another
    instance that took the relay over) re-sends that same transaction instead of signing a new one, so
    a task is never created twice. The journal is read under the lock, so two instances never both sign.
    A journaled transaction whose nonce another transaction has taken can never be mined: it is
    replaced. `precheck` runs under the lock before a new transaction is signed; what it raises
    refuses the transaction, as GasOverCap does when its pre-flight needs more than `max_gas`. RelayerBusy
    when another instance holds the lock for over RELAYER_LOCK_WAIT."""
    task_id, name = journal if journal else (None, None)
    lock = Lock(store, f"relayer:{chain.relayer.address}", ttl=10)
    try:
        async with lock.held(wait=RELAYER_LOCK_WAIT):
            raw_hex = await _journaled(chain, store, task_id, name) if task_id and name else None
            if raw_hex is None:
                if precheck is not None:
                    await precheck()
                raw_hex = await _sign(chain, store, call, what, task_id, name, max_gas)
            raw = bytes.fromhex(raw_hex[2:])
            tx_hash = chain.w3.keccak(raw)
            try:
                await chain.w3.eth.send_raw_transaction(raw)
            except Web3RPCError as exc:
                if not await _node_has(chain, tx_hash):  # refused (funds, fees, gas): no receipt will ever come
                    message = rpc_message(exc)
                    log.warning("send_refused", what=what, task=task_id, error=message)
                    if task_id and name:
                        await store.update_task(task_id, lambda d: _forget_raw(d, name, raw_hex))
                    raise SendRefused(f"{what}: the node refused the transaction: {message}") from exc
                log.debug("resend", what=what, error=str(exc))  # "already known", "nonce too low": the receipt decides
    except LeaseLost as exc:
        raise RelayerBusy(
            f"{what}: the relayer lock is held by another instance for over {RELAYER_LOCK_WAIT:g} s"
        ) from exc
    receipt = await chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=300)
    if receipt["status"] != 1:
        reason, error = await why_reverted(chain.w3, receipt, abi_of(call))
        raise TransactionReverted(what, reason, error=error, block=int(receipt["blockNumber"]))
    return dict(receipt)


def rpc_message(exc: Web3RPCError) -> str:
    """The node's own message, one line of at most 200 characters (for the log)."""
    rpc = exc.rpc_response.get("error") if isinstance(exc.rpc_response, dict) else None
    text = rpc.get("message") if isinstance(rpc, dict) else None
    text = " ".join(str(text or exc).split())
    return text if len(text) <= 200 else text[:199] + "…"


async def _node_has(chain: Chain, tx_hash: Any) -> bool:
    """Whether the node holds the transaction, pending or mined."""
    try:
        await chain.w3.eth.get_transaction(tx_hash)
    except TransactionNotFound:
        return False
    return True


def _forget_raw(doc: dict[str, Any], name: str, raw_hex: str) -> None:
    """Drop the journaled transaction `name` if it is still `raw_hex`."""
    if doc.get("raw", {}).get(name) == raw_hex:
        doc["raw"].pop(name)
        doc.get("raw_nonce", {}).pop(name, None)


async def _journaled(chain: Chain, store: Store, task_id: str, name: str) -> str | None:
    """The task's journaled transaction `name`, if there is one that may still be mined or was (a node may
    count its nonce as used a moment before it serves the receipt: `mined_receipt` tells)."""
    doc = await store.task(task_id) or {}
    raw_hex: str | None = doc.get("raw", {}).get(name)
    nonce = doc.get("raw_nonce", {}).get(name)
    if raw_hex is None or nonce is None:
        return raw_hex
    taken = await chain.w3.eth.get_transaction_count(chain.relayer.address, "latest")
    if nonce < taken:
        tx_hash = chain.w3.keccak(bytes.fromhex(raw_hex[2:]))
        if await mined_receipt(chain.w3, [tx_hash], chain.receipt_grace) is None:
            log.warning("journal_superseded", task=task_id, what=name, nonce=nonce)
            return None  # another transaction took its nonce: it was never mined and never will be
    return raw_hex


async def _sign(
    chain: Chain, store: Store, call: Any, what: str, task_id: str | None, name: str | None, max_gas: int | None
) -> str:
    """A new signed transaction (0x-hex), journaled in the task document when there is one; GasOverCap when its
    pre-flight needs more than `max_gas`."""
    w3 = chain.w3
    nonce = await w3.eth.get_transaction_count(chain.relayer.address, "pending")
    tx: dict[str, Any] = {"from": chain.relayer.address, "chainId": chain.chain_id, "nonce": nonce}
    tx.update(await fee_fields(w3))
    needed = await preflight(w3, call, tx, what)  # refused here if it would revert
    if max_gas is not None and needed > max_gas:
        raise GasOverCap(f"{what} would need {needed:,} gas, more than the {max_gas:,} the relayer pays for it")
    tx["gas"] = int(needed * GAS_MARGIN) if max_gas is None else min(int(needed * GAS_MARGIN), max_gas)
    built = await call.build_transaction(tx)
    signed = chain.relayer.sign_transaction(built)
    raw_hex = "0x" + bytes(signed.raw_transaction).hex()
    if task_id and name:

        def keep(d: dict[str, Any]) -> None:
            d.setdefault("raw", {})[name] = raw_hex
            d.setdefault("raw_nonce", {})[name] = nonce
            d["transactions"][name] = "0x" + bytes(signed.hash).hex()

        await store.update_task(task_id, keep)
    return raw_hex


def fail(error: str) -> Any:
    """A task-document change: the task failed, for `error`."""

    def change(doc: dict[str, Any]) -> None:
        doc["status"] = "failed"
        doc["error"] = error

    return change
