"""The coordinator's side of the chain: the TrainingTasks client and the relayer key's journaled
transactions (signed, stored in the task document, then sent, so a restart re-sends the same one).

The loops that use it have modules of their own: `relayer` (tasks from permits), `follower`
(TrainingTasks events into task documents), `keeper` (test-set reveals and finalization)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from eth_account.signers.local import LocalAccount
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_typing import HexStr
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.exceptions import TimeExhausted, TransactionNotFound, Web3RPCError
from web3.types import TxReceipt

from ethml.chain.deploy import Deployment, token_contract, training_contract
from ethml.chain.tx import (
    BUMP_DENOMINATOR,
    BUMP_NUMERATOR,
    GAS_MARGIN,
    RECEIPT_GRACE,
    abi_of,
    fee_fields,
    mined_receipt,
    preflight,
    receipt_if_mined,
    why_reverted,
)
from ethml.coordinator.lease import LeaseLapsed, LeaseLost, Lock, check_held
from ethml.coordinator.store import Store
from ethml.errors import ChainError, TransactionReverted

log = structlog.get_logger("ethml.coordinator")

#: TrainingTasks keeps scores as millionths.
SCORE_SCALE = 1_000_000


#: Seconds a transaction waits for the relayer lock (held by another instance's send) before RelayerBusy.
RELAYER_LOCK_WAIT = 120.0
#: Seconds a sent transaction is waited for (TimeExhausted after), and between two looks at whether its fees keep
#: it out of blocks (then it is replaced with higher ones).
RECEIPT_WAIT = 300.0
BUMP_AFTER = 60.0


class RelayerBusy(ChainError):
    """The relayer lock stayed with another instance past the wait (nothing was signed or sent here), or was lost
    while held (the send was cut short; a transaction signed before is journaled, and sent again next time)."""


class SendRefused(ChainError):
    """The node refused the transaction (it does not have it after the send): not sent. The journal forgets it,
    so the next send signs afresh (new fees, a new estimate); the contract's nonces keep a creation from
    happening twice even if a copy of the refused one was somewhere else."""


class Cancelled(ChainError):
    """The transaction could not be replaced when its fees kept it out of blocks (its call reverts now, or needs
    more gas than the caller pays), so its nonce went to a cancel (a transfer of nothing to the relayer itself,
    with the raised fees) that was mined: nothing was done, and the journal forgot it. The next send signs
    afresh, and its pre-flight says why it cannot be done (or does it)."""


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
            found = await _journaled(chain, store, task_id, name) if task_id and name else None
            receipt: TxReceipt | None = None
            if found is None:
                if precheck is not None:
                    await precheck()
                check_held()  # (should the cancel of a lost lease not have reached this task)
                raw_hex, hashes = await _sign(chain, store, call, what, task_id, name, max_gas), list[str]()
            else:
                raw_hex, hashes, receipt = found
            if receipt is None:
                check_held()
                await _send(chain, store, what, task_id, name, raw_hex)
    except LeaseLapsed as exc:  # cut short: a transaction signed before it is journaled, and sent again next time
        raise RelayerBusy(f"{what}: the relayer lock was {exc}") from exc
    except LeaseLost as exc:
        raise RelayerBusy(
            f"{what}: the relayer lock is held by another instance for over {RELAYER_LOCK_WAIT:g} s"
        ) from exc
    if receipt is None:
        hashes = [*hashes, _hash(raw_hex)]
        sending = _Sending(chain, store, lock, call, what, (task_id, name), max_gas)
        receipt = await _receipt(sending, raw_hex, hashes)
    if _is_cancel(chain, receipt):
        if task_id and name:
            await store.update_task(task_id, functools.partial(_forget_cancelled, name=name))
        raise Cancelled(
            f"{what}: its transaction, priced out of blocks, could not be replaced (its call reverts now, or needs too "
            "much gas), so it was cancelled: nothing was done"
        )
    if receipt["status"] != 1:
        reason, error = await why_reverted(chain.w3, receipt, abi_of(call))
        raise TransactionReverted(what, reason, error=error, block=int(receipt["blockNumber"]))
    return dict(receipt)


def _hash(raw_hex: str) -> str:
    """The hash of a signed transaction (0x-hex), as the node names it."""
    return "0x" + keccak(bytes.fromhex(raw_hex[2:])).hex()


async def _send(chain: Chain, store: Store, what: str, task_id: str | None, name: str | None, raw_hex: str) -> None:
    """Send a signed transaction (again); SendRefused, the journal forgetting it, when the node does not hold it
    after the send (refused for its funds, fees or gas: no receipt will ever come)."""
    try:
        await chain.w3.eth.send_raw_transaction(bytes.fromhex(raw_hex[2:]))
    except Web3RPCError as exc:
        if not await _node_has(chain, _hash(raw_hex)):
            message = rpc_message(exc)
            log.warning("send_refused", what=what, task=task_id, error=message)
            if task_id and name:
                await store.update_task(task_id, lambda d: _forget_raw(d, name, raw_hex))
            raise SendRefused(f"{what}: the node refused the transaction: {message}") from exc
        log.debug("resend", what=what, error=str(exc))  # "already known", "nonce too low": the receipt decides


@dataclass(frozen=True)
class _Sending:
    """One call being sent with the relayer key: what its receipt wait and its replacements need."""

    chain: Chain
    store: Store
    lock: Lock
    call: Any
    what: str
    journal: tuple[str | None, str | None]  # (task id, name), or (None, None) without a journal
    max_gas: int | None


async def _receipt(sending: _Sending, raw_hex: str, hashes: list[str]) -> TxReceipt:
    """The receipt of whichever of `hashes` (the attempts at one nonce) is mined, within RECEIPT_WAIT seconds
    (TimeExhausted after). Every BUMP_AFTER seconds without one, a transaction its fees keep out of the next block
    (its max fee under the base fee and its tip) is replaced: the same call and nonce, both fees raised by 12.5 %
    at least and to what `fee_fields` asks now, journaled beside the attempts before it is sent."""
    chain, store, what = sending.chain, sending.store, sending.what
    task_id, name = sending.journal
    loop = asyncio.get_running_loop()
    give_up = loop.time() + RECEIPT_WAIT
    while True:
        receipt = await _receipt_of(chain.w3, hashes, min(BUMP_AFTER, max(0.0, give_up - loop.time())))
        if receipt is not None:
            mined = receipt["transactionHash"].to_0x_hex()
            if task_id and name and mined != hashes[-1]:  # an earlier attempt was mined, not its replacement
                await store.update_task(task_id, functools.partial(_mined_as, name=name, tx_hash=mined))
            return receipt
        if loop.time() >= give_up:
            raise TimeExhausted(
                f"{what}: none of its transactions {', '.join(hashes)} is mined after {RECEIPT_WAIT:g} s"
            )
        bumped = await _bump(sending, raw_hex)
        if bumped is not None:
            raw_hex = bumped
            hashes.append(_hash(raw_hex))


async def _receipt_of(w3: AsyncWeb3[Any], hashes: list[str], wait: float) -> TxReceipt | None:
    """The receipt of any of `hashes`, polled for up to `wait` seconds; None when none is mined by then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    pause = 0.05
    while True:
        for tx_hash in hashes:
            if (receipt := await receipt_if_mined(w3, HexStr(tx_hash))) is not None:
                return receipt
        if loop.time() >= deadline:
            return None
        await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
        pause = min(pause * 2, 1.0)


async def _bump(sending: _Sending, raw_hex: str) -> str | None:
    """The replacement of the transaction `raw_hex` when its fees keep it out of the next block, signed, journaled
    and sent under the relayer lock; None when it needs none or none can be made (its nonce used meanwhile, the
    call reverting now, the lock busy, the node refusing it): the attempts stand, and the wait goes on."""
    chain, store, what, journal = sending.chain, sending.store, sending.what, sending.journal
    w3 = chain.w3
    tx = TypedTransaction.from_bytes(HexBytes(raw_hex)).as_dict()
    base = int((await w3.eth.get_block("latest")).get("baseFeePerGas", 0) or 0)
    if int(tx["maxFeePerGas"]) >= base + int(tx["maxPriorityFeePerGas"]):
        return None  # priced for the next block: it waits its turn
    task_id, name = journal
    try:
        async with sending.lock.held(wait=RELAYER_LOCK_WAIT):
            if task_id and name:
                doc = await store.task(task_id) or {}
                if doc.get("raw", {}).get(name) != raw_hex:
                    return None  # replaced or forgotten meanwhile (another instance): the attempts stand
            if int(await w3.eth.get_transaction_count(chain.relayer.address, "latest")) > int(tx["nonce"]):
                return None  # its nonce is used: the receipt wait finds by which attempt
            fees = await fee_fields(w3)
            check_held()
            bumped = {
                key: max(fees[key], int(tx[key]) * BUMP_NUMERATOR // BUMP_DENOMINATOR + 1)
                for key in ("maxFeePerGas", "maxPriorityFeePerGas")
            }
            try:
                new = await _sign(
                    chain,
                    store,
                    sending.call,
                    what,
                    task_id,
                    name,
                    sending.max_gas,
                    nonce=int(tx["nonce"]),
                    fees=bumped,
                    replaces=_hash(raw_hex),
                )
            except (TransactionReverted, GasOverCap) as exc:
                # Mined, the original would revert (or burn the gas cap): its nonce goes to a cancel instead, so the
                # relayer's later transactions are not held up behind it until the base fee falls back.
                log.warning("bump_cancels", what=what, task=task_id, reason=str(exc))
                new = await _sign_cancel(chain, store, journal, int(tx["nonce"]), bumped, _hash(raw_hex))
            except ChainError as exc:  # the node refused the estimate (the relayer's funds): the attempts stand
                log.warning("bump_skipped", what=what, task=task_id, reason=str(exc))
                return None
            log.info("fee_bumped", what=what, task=task_id, tx=_hash(new), max_fee=bumped["maxFeePerGas"])
            try:
                check_held()
                await _send(chain, store, what, task_id, name, new)
            except SendRefused:  # forgotten from the journal: the original goes back in
                if task_id and name:
                    await store.update_task(task_id, lambda d: _restore_raw(d, name, raw_hex, tx["nonce"]))
                return None
            return new
    except LeaseLost:
        return None


async def _sign_cancel(
    chain: Chain,
    store: Store,
    journal: tuple[str | None, str | None],
    nonce: int,
    fees: dict[str, int],
    replaces: str,
) -> str:
    """A cancel at `nonce` (nothing sent to the relayer itself, 21,000 gas, `fees`), journaled as the next attempt."""
    tx: dict[str, Any] = {
        "to": chain.relayer.address,
        "value": 0,
        "gas": 21_000,
        "nonce": nonce,
        "chainId": chain.chain_id,
        **fees,
    }
    return await _signed(chain, store, tx, journal, nonce, replaces)


def _is_cancel(chain: Chain, receipt: TxReceipt) -> bool:
    """Whether the mined transaction is a cancel (`_sign_cancel`): the relayer sends nothing else to itself."""
    to = receipt.get("to")
    return to is not None and str(to).lower() == chain.relayer.address.lower()


def _forget_cancelled(doc: dict[str, Any], *, name: str) -> None:
    for field in ("raw", "raw_nonce", "raw_attempts", "transactions"):
        doc.get(field, {}).pop(name, None)


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
    """Drop the journaled transaction `name` if it is still `raw_hex` (its earlier attempts stay listed: one of
    them may still be mined)."""
    if doc.get("raw", {}).get(name) == raw_hex:
        doc["raw"].pop(name)
        doc.get("raw_nonce", {}).pop(name, None)


def _mined_as(doc: dict[str, Any], *, name: str, tx_hash: str) -> None:
    doc["transactions"][name] = tx_hash


def _restore_raw(doc: dict[str, Any], name: str, raw_hex: str, nonce: int) -> None:
    """Put back the attempt `raw_hex` that a refused replacement was to follow."""
    attempts = doc.setdefault("raw_attempts", {}).get(name, [])
    doc.setdefault("raw", {})[name] = raw_hex
    doc.setdefault("raw_nonce", {})[name] = nonce
    tx_hash = _hash(raw_hex)
    doc["transactions"][name] = tx_hash
    doc["raw_attempts"][name] = [h for h in attempts if h != tx_hash]


async def _journaled(
    chain: Chain, store: Store, task_id: str, name: str
) -> tuple[str, list[str], TxReceipt | None] | None:
    """The task's journaled transaction `name`, the hashes of the attempts it replaced, and the receipt of the one
    mined if its nonce is used, if there is one that may still be mined or was (a node may count its nonce as used
    a moment before it serves the receipt: `mined_receipt` tells)."""
    doc = await store.task(task_id) or {}
    raw_hex: str | None = doc.get("raw", {}).get(name)
    if raw_hex is None:
        return None
    earlier: list[str] = list(doc.get("raw_attempts", {}).get(name, []))
    nonce = doc.get("raw_nonce", {}).get(name)
    if nonce is None:
        return raw_hex, earlier, None
    taken = await chain.w3.eth.get_transaction_count(chain.relayer.address, "latest")
    if nonce >= taken:
        return raw_hex, earlier, None
    receipt = await mined_receipt(chain.w3, [*earlier, _hash(raw_hex)], chain.receipt_grace)
    if receipt is None:
        log.warning("journal_superseded", task=task_id, what=name, nonce=nonce)
        return None  # another transaction took its nonce: it was never mined and never will be
    mined = receipt["transactionHash"].to_0x_hex()
    if doc.get("transactions", {}).get(name) != mined:
        await store.update_task(task_id, functools.partial(_mined_as, name=name, tx_hash=mined))
    return raw_hex, earlier, receipt


async def _sign(
    chain: Chain,
    store: Store,
    call: Any,
    what: str,
    task_id: str | None,
    name: str | None,
    max_gas: int | None,
    *,
    nonce: int | None = None,
    fees: dict[str, int] | None = None,
    replaces: str | None = None,
) -> str:
    """A new signed transaction (0x-hex), journaled in the task document when there is one; GasOverCap when its
    pre-flight needs more than `max_gas`. A replacement (`replaces`, the attempt it follows) takes that one's
    `nonce` and the `fees` given, and the journal lists the attempt it replaces."""
    w3 = chain.w3
    if nonce is None:
        nonce = await w3.eth.get_transaction_count(chain.relayer.address, "pending")
    tx: dict[str, Any] = {"from": chain.relayer.address, "chainId": chain.chain_id, "nonce": nonce}
    tx.update(fees if fees is not None else await fee_fields(w3))
    needed = await preflight(w3, call, tx, what)  # refused here if it would revert
    if max_gas is not None and needed > max_gas:
        raise GasOverCap(f"{what} would need {needed:,} gas, more than the {max_gas:,} the relayer pays for it")
    tx["gas"] = int(needed * GAS_MARGIN) if max_gas is None else min(int(needed * GAS_MARGIN), max_gas)
    return await _signed(chain, store, await call.build_transaction(tx), (task_id, name), nonce, replaces)


async def _signed(
    chain: Chain,
    store: Store,
    tx: dict[str, Any],
    journal: tuple[str | None, str | None],
    nonce: int,
    replaces: str | None,
) -> str:
    """`tx` signed with the relayer key (0x-hex), journaled in the task document when there is one (`_journal`)."""
    raw_hex = "0x" + bytes(chain.relayer.sign_transaction(tx).raw_transaction).hex()
    task_id, name = journal
    if task_id and name:
        await store.update_task(
            task_id, functools.partial(_journal, name=name, raw_hex=raw_hex, nonce=nonce, replaces=replaces)
        )
    return raw_hex


def _journal(doc: dict[str, Any], *, name: str, raw_hex: str, nonce: int, replaces: str | None) -> None:
    """Journal `raw_hex` as the transaction `name` at `nonce`: a new one (its earlier attempts forgotten), or
    the attempt that follows `replaces` (listed beside it: either may be mined)."""
    if replaces is not None:
        doc.setdefault("raw_attempts", {}).setdefault(name, []).append(replaces)
    else:
        doc.get("raw_attempts", {}).pop(name, None)
    doc.setdefault("raw", {})[name] = raw_hex
    doc.setdefault("raw_nonce", {})[name] = nonce
    doc["transactions"][name] = _hash(raw_hex)


def fail(error: str) -> Any:
    """A task-document change: the task failed, for `error`."""

    def change(doc: dict[str, Any]) -> None:
        doc["status"] = "failed"
        doc["error"] = error

    return change
