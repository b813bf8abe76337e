"""Run a deployment as named steps, one transaction each, resumable from a journal (ethml.chain.journal).

Each step is signed (after the pre-flight against the pending block), written to the journal, then
broadcast, and waited for. While it waits, and when a rerun finds it in the journal unfinished, the
runner asks the node what became of it:

- one of the step's transactions is mined: the step is done (never sent again);
- the node no longer knows it and its nonce is still free (dropped from the mempool, or the process
  died between journaling and sending): the same signed bytes are broadcast again;
- it has waited `replace_after` seconds, or its fee cap fell below the base fee: it is replaced, same
  nonce, fees up by at least 12.5 % (what nodes require of a replacement);
- its nonce went to another transaction of the account and none of the step's is mined: the step is
  signed afresh with the next nonce. A contract deployment is recognised by its address (sender and
  nonce) too, so a contract is never deployed twice. Since a node may count a nonce as used a moment
  before it serves the receipt, that is concluded only when no receipt has appeared for `receipt_grace`
  seconds and the node shows none of the step's transactions in a block (`mined_receipt`).

Steps run one at a time, each waiting for the one before: the chain of nonces has no gap to fill.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.exceptions import TransactionNotFound, Web3RPCError
from web3.types import Nonce, TxReceipt

from ethml.chain._artifacts import load_artifact
from ethml.chain.journal import Attempt, Journal, Outcome, StepRecord
from ethml.chain.tx import (
    RECEIPT_GRACE,
    SignedTx,
    check_receipt,
    fee_fields,
    mined_receipt,
    receipt_if_mined,
    sign_call,
)
from ethml.errors import ChainError, DeploymentError, TransactionReverted

#: Replacement fees: nodes (geth, reth, anvil) accept a same-nonce replacement only above +10 %.
REPLACEMENT_BUMP = 1.125
#: How long a transaction may wait in the mempool before it is re-priced (a public chain's default).
REPLACE_AFTER = 180.0

State = Literal["sent", "mined", "done-before", "rebroadcast", "replaced", "resigned"]


@dataclass(frozen=True)
class StepEvent:
    """What the runner reports as it goes (`progress`): a step sent, mined, found done, recovered."""

    index: int
    key: str
    what: str
    state: State
    tx: str | None = None
    nonce: int | None = None
    block: int | None = None
    gas_used: int | None = None
    address: str | None = None


@dataclass(frozen=True)
class Done:
    """A step's outcome; `receipt` when it was mined in this run (fetch it with `StepRunner.receipt`)."""

    tx: str
    block: int
    gas_used: int
    address: str | None = None
    receipt: TxReceipt | None = None

    @property
    def contract(self) -> str:
        if self.address is None:
            raise DeploymentError(f"transaction {self.tx} created no contract")
        return self.address


class StepRunner:
    def __init__(
        self,
        w3: AsyncWeb3[Any],
        account: LocalAccount,
        journal: Journal | None = None,
        *,
        progress: Callable[[StepEvent], None] | None = None,
        priority_gwei: float = 1.0,
        replace_after: float = REPLACE_AFTER,
        max_poll: float = 2.0,
        receipt_grace: float = RECEIPT_GRACE,
    ) -> None:
        self.w3 = w3
        self.account = account
        self.journal = journal if journal is not None else Journal()
        self.progress = progress
        self.priority_gwei = priority_gwei
        self.replace_after = replace_after
        self.max_poll = max_poll
        self.receipt_grace = receipt_grace
        self.index = 0
        self._chain_id: int | None = None

    async def deploy(self, key: str, contract: str, *args: Any, what: str | None = None) -> Done:
        """Deploy the shipped artifact `contract` with constructor `args` as step `key`."""
        artifact = load_artifact(contract)
        factory: Any = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        done = await self.transact(key, factory.constructor(*args), what or contract, deploys=True)
        if done.address is None:
            raise DeploymentError(f"{what or contract}: its transaction {done.tx} created no contract")
        return done

    async def transact(self, key: str, call: Any, what: str, *, deploys: bool = False) -> Done:
        """Run step `key` (the contract call or constructor `call`) once, whatever happened before."""
        self.index += 1
        record = self.journal.step(key)
        if record is not None and record.done is not None:
            o = record.done
            self._emit(key, what, "done-before", tx=o.tx, block=o.block, gas_used=o.gas_used, address=o.address)
            return Done(o.tx, o.block, o.gas_used, o.address)
        if record is not None and record.live_attempts():
            done = await self._settle(key, record, call, what, deploys)
            if done is not None:
                return done
            self._emit(key, what, "resigned", nonce=record.live_attempts()[-1].nonce)
        nonce = await self.w3.eth.get_transaction_count(self.account.address, "pending")
        fees = await fee_fields(self.w3, priority_gwei=self.priority_gwei)
        signed = await sign_call(
            self.w3, self.account, call, what=what, nonce=nonce, fees=fees, chain_id=await self.chain_id()
        )
        record = self.journal.record_attempt(key, what, _attempt(signed))
        await self._broadcast(key, record, call, what)
        self._emit(key, what, "sent", tx=signed.hash, nonce=signed.nonce)
        done = await self._settle(key, record, call, what, deploys)
        if done is None:
            raise DeploymentError(
                f"{what}: nonce {signed.nonce} of {self.account.address} went to another transaction while this "
                "one waited; is another program sending from this account? Run the same command again to continue"
            )
        return done

    async def receipt(self, done: Done) -> TxReceipt:
        return done.receipt if done.receipt is not None else await self.w3.eth.get_transaction_receipt(done.tx)  # type: ignore[arg-type]

    async def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(await self.w3.eth.chain_id)
        return self._chain_id

    # ------------------------------------------------------------------ waiting and recovering

    async def _settle(self, key: str, record: StepRecord, call: Any, what: str, deploys: bool) -> Done | None:
        """Wait until one of the step's transactions is mined (its Done), or its nonce went to another
        transaction of the account (None), broadcasting again or replacing on the way."""
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        pause = 0.02
        while True:
            done = await self._mined(key, record, call, what)
            if done is not None:
                return done
            newest = record.live_attempts()[-1]
            confirmed = await self.w3.eth.get_transaction_count(self.account.address, "latest")
            if confirmed > newest.nonce:
                return await self._nonce_used(key, record, call, what, deploys)
            if not await self._known(newest.hash):
                await self._check_no_gap(newest, what)
                await self._broadcast(key, record, call, what, again=True)
                last_sent = loop.time()
            elif loop.time() - last_sent > self.replace_after:
                await self._replace(key, record, call, what)
                last_sent = loop.time()
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.max_poll)

    async def _nonce_used(self, key: str, record: StepRecord, call: Any, what: str, deploys: bool) -> Done | None:
        """The step's newest nonce is used: its Done if one of its transactions was mined (`mined_receipt`:
        a receipt read again for up to `receipt_grace` seconds, or one the node shows in a block; for a
        deployment, failing those, its contract at the address), else None."""
        attempts = record.live_attempts()
        receipt = await mined_receipt(self.w3, [a.hash for a in attempts], self.receipt_grace, max_poll=self.max_poll)
        if receipt is not None:
            mined = HexBytes(receipt["transactionHash"]).to_0x_hex()
            attempt = next((a for a in attempts if a.hash.lower() == mined.lower()), attempts[-1])
            return await self._done(key, attempt, receipt, call, what)
        return await self._deployed_anyway(key, record, what) if deploys else None

    async def _mined(self, key: str, record: StepRecord, call: Any, what: str) -> Done | None:
        for attempt in reversed(record.live_attempts()):
            if (receipt := await receipt_if_mined(self.w3, attempt.hash)) is not None:
                return await self._done(key, attempt, receipt, call, what)
        return None

    async def _done(self, key: str, attempt: Attempt, receipt: TxReceipt, call: Any, what: str) -> Done:
        """The step done by `attempt`, mined with `receipt`: journaled and reported (TransactionReverted if
        it reverted, marked so in the journal)."""
        try:
            await check_receipt(self.w3, receipt, call, what)
        except TransactionReverted:
            self.journal.mark_reverted(key, attempt.hash)
            raise
        address = receipt.get("contractAddress")
        outcome = Outcome(attempt.hash, int(receipt["blockNumber"]), int(receipt["gasUsed"]), _opt(address))
        self.journal.record_done(key, what, outcome)
        self._emit(
            key,
            what,
            "mined",
            tx=outcome.tx,
            block=outcome.block,
            gas_used=outcome.gas_used,
            address=outcome.address,
        )
        return Done(outcome.tx, outcome.block, outcome.gas_used, outcome.address, receipt)

    async def _deployed_anyway(self, key: str, record: StepRecord, what: str) -> Done | None:
        """A deployment step whose nonces are all used but none of whose transactions has a receipt:
        if a contract sits at the address one of them would have created, that is this step's."""
        from web3.utils.address import get_create_address

        for attempt in record.live_attempts():
            address = get_create_address(self.account.address, Nonce(attempt.nonce))
            if len(await self.w3.eth.get_code(address)) > 0:
                outcome = Outcome(attempt.hash, 0, 0, str(address))
                self.journal.record_done(key, what, outcome)
                self._emit(key, what, "mined", tx=attempt.hash, address=outcome.address)
                return Done(outcome.tx, 0, 0, outcome.address)
        return None

    async def _check_no_gap(self, attempt: Attempt, what: str) -> None:
        """A journaled transaction whose nonce is beyond the account's next one would wait forever: the
        chain has lost the account's earlier transactions (a devnet restarted under the same chain id)."""
        following = await self.w3.eth.get_transaction_count(self.account.address, "pending")
        if attempt.nonce > following:
            raise DeploymentError(
                f"{what}: its transaction has nonce {attempt.nonce} but {self.account.address} has sent only "
                f"{following} on this chain, which has lost the earlier ones (was it reset?): start afresh"
            )

    async def _known(self, tx_hash: str) -> bool:
        try:
            await self.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return False
        return True

    async def _broadcast(self, key: str, record: StepRecord, call: Any, what: str, *, again: bool = False) -> None:
        newest = record.live_attempts()[-1]
        try:
            await self.w3.eth.send_raw_transaction(HexStr(newest.raw))
        except Web3RPCError as exc:
            message = str(getattr(exc, "message", None) or exc).lower()
            if "already known" in message or "known transaction" in message or "already imported" in message:
                return
            if "nonce too low" in message:
                return  # the nonce is taken: _settle sees it and looks for whose
            if "underpriced" in message or "base fee" in message or "fee cap" in message:
                await self._replace(key, record, call, what)
                return
            raise ChainError(f"{what}: the node refused transaction {newest.hash}: {message}") from exc
        if again:
            self._emit(key, what, "rebroadcast", tx=newest.hash, nonce=newest.nonce)

    async def _replace(self, key: str, record: StepRecord, call: Any, what: str) -> None:
        """Sign the step again with the same nonce and higher fees, journal it, broadcast it."""
        old = record.live_attempts()[-1]
        fresh = await fee_fields(self.w3, priority_gwei=self.priority_gwei)
        tip = max(fresh["maxPriorityFeePerGas"], int(old.tip * REPLACEMENT_BUMP) + 1)
        max_fee = max(fresh["maxFeePerGas"], int(old.max_fee * REPLACEMENT_BUMP) + 1, tip)
        signed = await sign_call(
            self.w3,
            self.account,
            call,
            what=what,
            nonce=old.nonce,
            gas=old.gas,
            fees={"maxFeePerGas": max_fee, "maxPriorityFeePerGas": tip},
            chain_id=await self.chain_id(),
        )
        record = self.journal.record_attempt(key, what, _attempt(signed))
        try:
            await self.w3.eth.send_raw_transaction(signed.raw)
        except Web3RPCError as exc:
            message = str(getattr(exc, "message", None) or exc).lower()
            if "nonce too low" in message:
                return  # an earlier attempt was mined meanwhile: _settle finds it
            if "already known" not in message:
                raise ChainError(f"{what}: the node refused the replacement {signed.hash}: {message}") from exc
        self._emit(key, what, "replaced", tx=signed.hash, nonce=signed.nonce)  # once the node has it, like "sent"

    def _emit(self, key: str, what: str, state: State, **fields: Any) -> None:
        if self.progress is not None:
            self.progress(StepEvent(self.index, key, what, state, **fields))


def _attempt(signed: SignedTx) -> Attempt:
    return Attempt(signed.hash, signed.nonce, signed.gas, signed.max_fee, signed.tip, "0x" + signed.raw.hex())


def _opt(address: object) -> str | None:
    return str(address) if address else None
