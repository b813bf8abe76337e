"""TxSubmitter: local signing, own nonce, EIP-1559 fees with bumping, pre-flight, journal first."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from hexbytes import HexBytes
from web3.exceptions import TransactionNotFound

from ethml.chain.tx import GAS_MARGIN, fee_fields, is_revert, revert_reason
from ethml.node.context import NodeContext, is_connection_error
from ethml.node.events import NodeWarning, SubmissionDropped, SubmissionMined, Submitted
from ethml.node.jobs import Job
from ethml.node.journal import Submission

#: Gas the fifth (finalizing) submission may need besides the consumer's callback gas: rewards,
#: the queue pop and the next challenge (about 210,000 at 1,000 queued requests, see docs/contracts.md).
FINALIZE_GAS = 320_000


def _final_gas(callback_gas: int) -> int:
    """The gas limit that lets this submission be the finalizing one (EIP-150 margin included)."""
    return FINALIZE_GAS + callback_gas + callback_gas // 63 + 10_000


_SEND_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def _send_lock(w3: Any) -> asyncio.Lock:
    """Nodes that share one client (one process) take turns from pre-flight to send, so one of them
    can never land the fifth submission between another's pre-flight and its send."""
    lock = _SEND_LOCKS.get(w3)
    if lock is None:
        lock = _SEND_LOCKS[w3] = asyncio.Lock()
    return lock


#: A replacement must raise both fees by at least 10 %; 12.5 % clears every client's rule.
BUMP_NUMERATOR, BUMP_DENOMINATOR = 9, 8


class TxSubmitter:
    def __init__(self, ctx: NodeContext, inq: asyncio.Queue[Job]) -> None:
        self.ctx = ctx
        self.inq = inq
        self._fees: dict[int, dict[str, int]] = {}  # the fees of each request's latest transaction
        self._callback_limits: dict[int, int] = {}

    async def run(self) -> None:
        await self.recover()
        while True:
            job = await self.inq.get()
            if job.is_cancelled:
                continue
            await self.submit(job)

    def _call(self, request_id: int, prediction: int, pow_nonce: int) -> Any:
        return self.ctx.contract.functions.submitMiningSolution(request_id, prediction, pow_nonce)

    def _calldata(self, request_id: int, prediction: int, pow_nonce: int) -> str:
        return str(self.ctx.contract.encode_abi("submitMiningSolution", args=[request_id, prediction, pow_nonce]))

    async def _preflight(self, call: Any, callback_gas: int) -> tuple[int | None, str]:
        """(gas limit, "") when the submission would succeed now; (None, reason) otherwise.

        The estimate is for the chain as it is now, but other miners' submissions may land first and
        make ours the finalizing fifth, which pays the rewards and calls the consumer back with its
        callback gas (the contract reverts rather than short-change it). The limit covers that case;
        only the gas actually used is paid.
        """
        try:
            gas = await call.estimate_gas({"from": self.ctx.address})
        except Exception as exc:
            if is_connection_error(exc):
                raise
            if is_revert(exc) or "revert" in str(exc).lower():
                return None, revert_reason(exc)
            raise
        return max(int(gas * GAS_MARGIN), _final_gas(callback_gas)), ""

    async def _callback_gas(self, request_id: int) -> int:
        cached = self._callback_limits.get(request_id)
        if cached is None:
            _requester, _model, _cid, cached, _status = await self.ctx.contract.functions.getRequest(request_id).call()
            self._callback_limits[request_id] = cached = int(cached)
        return cached

    # ------------------------------------------------------------------ submit

    async def submit(self, job: Job) -> None:
        challenge = job.challenge.hex()
        if self.ctx.journal.has(job.request_id, challenge):
            self.ctx.log.info("already_submitted", request_id=job.request_id)
            return
        assert job.prediction is not None and job.nonce is not None
        call = self._call(job.request_id, job.prediction, job.nonce)
        backoff = 1.0
        while True:
            if job.is_cancelled:
                self._dropped(job.request_id, job.reason or "cancelled")
                return
            try:
                chain_id = await self.ctx.w3.eth.chain_id
                fees = await fee_fields(self.ctx.w3)
                balance = await self.ctx.w3.eth.get_balance(self.ctx.account.address)
                tx_nonce = await self.ctx.w3.eth.get_transaction_count(self.ctx.account.address, "pending")
                callback_gas = await self._callback_gas(job.request_id)
                if balance < _final_gas(callback_gas) * fees["maxFeePerGas"]:
                    # Checked before the pre-flight too: a node may not even estimate without funds.
                    self._warn_no_eth(balance, _final_gas(callback_gas) * fees["maxFeePerGas"])
                    sent: tuple[Submission, str, int] | bool | None = False
                else:
                    async with _send_lock(self.ctx.w3):
                        sent = await self._preflight_sign_send(
                            job, call, callback_gas, balance, fees, chain_id, tx_nonce
                        )
                if sent is None:
                    return
                if isinstance(sent, bool):
                    if await self.ctx.sleep(min(backoff, self.ctx.config.max_backoff)):
                        return
                    backoff *= 2
                    continue
                entry, tx_hash, gas = sent
                break
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                self.ctx.emit(NodeWarning(f"RPC unreachable while submitting ({type(exc).__name__}); retrying"))
                journaled = self.ctx.journal.get(job.request_id, challenge)
                if journaled is not None:
                    entry, tx_hash, gas = journaled, journaled.tx_hashes[-1], 0
                    break  # signed and journaled: the receipt wait (or a restart) takes it from here
                if await self.ctx.sleep(min(backoff, self.ctx.config.max_backoff)):
                    return
                backoff *= 2
        self.ctx.stats.submissions += 1
        self.ctx.emit(Submitted(job.request_id, tx_hash, job.prediction))
        self.ctx.log.info("solution_submitted", request_id=job.request_id, tx=tx_hash, nonce=entry.tx_nonce, gas=gas)
        await self._await_receipt(entry)

    async def _preflight_sign_send(
        self,
        job: Job,
        call: Any,
        callback_gas: int,
        balance: int,
        fees: dict[str, int],
        chain_id: int,
        tx_nonce: int,
    ) -> tuple[Submission, str, int] | bool | None:
        """Pre-flight, sign, journal, send. None: dropped; False: wait for funds; else what was sent."""
        assert job.prediction is not None and job.nonce is not None
        gas, reason = await self._preflight(call, callback_gas)
        if gas is None:
            self._dropped(job.request_id, f"pre-flight says it would revert: {reason}")
            return None
        if balance < gas * fees["maxFeePerGas"]:
            self._warn_no_eth(balance, gas * fees["maxFeePerGas"])
            return False
        tx: dict[str, Any] = {
            "from": self.ctx.address,
            "to": self.ctx.contract.address,
            "data": self._calldata(job.request_id, job.prediction, job.nonce),
            "value": 0,
            "nonce": tx_nonce,
            "gas": gas,
            "chainId": chain_id,
            "type": 2,
            **fees,
        }
        signed = self.ctx.account.sign_transaction(tx)
        raw = HexBytes(signed.raw_transaction).to_0x_hex()
        tx_hash = HexBytes(signed.hash).to_0x_hex()
        entry = Submission(
            job.request_id, job.challenge.hex(), job.prediction, job.nonce, tx_nonce, [raw], [tx_hash], "signed"
        )
        # Journal, then send: a stop or a crash in between leaves a journaled transaction that a
        # restart re-sends as it is.
        self.ctx.journal.record(entry)
        self._fees[job.request_id] = fees
        await self._send_raw(raw)
        self.ctx.journal.set_status(entry, "sent")
        return entry, tx_hash, gas

    def _warn_no_eth(self, balance: int, needed: int) -> None:
        message = (
            f"{self.ctx.address} has {balance / 1e18:.6f} ETH, not enough for gas "
            f"({needed / 1e18:.6f}); waiting for funds"
        )
        self.ctx.emit(NodeWarning(message))
        self.ctx.log.warning("no_eth_for_gas", address=self.ctx.address, balance=balance, needed=needed)

    async def _send_raw(self, raw: str) -> None:
        try:
            await self.ctx.w3.eth.send_raw_transaction(HexBytes(raw))
        except Exception as exc:
            text = str(exc).lower()
            if "already known" in text or "known transaction" in text or "already imported" in text:
                return  # the identical transaction is in the pool already
            raise

    async def _await_receipt(self, entry: Submission) -> None:
        """Wait for a receipt, bumping the fee of a stuck transaction; never re-send a revert."""
        while True:
            try:
                receipt = await self._receipt_of(entry.tx_hashes, wait=self.ctx.config.bump_after)
                if receipt is not None:
                    break
                if self.ctx.stopping.is_set():
                    return
                await self._bump(entry)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                if await self.ctx.sleep(1.0):
                    return
        if receipt["status"] == 1:
            self.ctx.journal.set_status(entry, "mined")
            self.ctx.stats.accepted += 1
            tx_hash = HexBytes(receipt["transactionHash"]).to_0x_hex()
            self.ctx.emit(SubmissionMined(entry.request_id, tx_hash, int(receipt["gasUsed"])))
            self.ctx.log.info("submission_mined", request_id=entry.request_id, gas_used=receipt["gasUsed"])
        else:
            block = receipt["blockNumber"]
            self.ctx.journal.set_status(entry, "reverted", f"reverted in block {block}")
            self._dropped(entry.request_id, f"mined but reverted in block {block} (not retried)")

    async def _receipt_of(self, hashes: list[str], wait: float) -> Any:
        """The receipt of any of `hashes`, polling for up to `wait` seconds; None if none is mined."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            for h in hashes:
                try:
                    return await self.ctx.w3.eth.get_transaction_receipt(HexBytes(h))
                except TransactionNotFound:
                    continue
            if loop.time() >= deadline:
                return None
            if await self.ctx.sleep(0.02 if wait < 5 else 0.2):
                return None

    async def _bump(self, entry: Submission) -> None:
        """Replace a stuck transaction: same nonce and call, both fees raised by 12.5 %."""
        call = self._call(entry.request_id, entry.prediction, entry.pow_nonce)
        gas, reason = await self._preflight(call, await self._callback_gas(entry.request_id))
        if gas is None:
            # Nothing to replace it with: let the original be mined or dropped; it is journaled.
            self.ctx.log.info("bump_skipped", request_id=entry.request_id, reason=reason)
            return
        fees = await fee_fields(self.ctx.w3)
        previous = self._fees.get(entry.request_id, fees)
        bumped = {
            key: max(fees[key], previous[key] * BUMP_NUMERATOR // BUMP_DENOMINATOR + 1)
            for key in ("maxFeePerGas", "maxPriorityFeePerGas")
        }
        self._fees[entry.request_id] = bumped
        tx: dict[str, Any] = {
            "from": self.ctx.address,
            "to": self.ctx.contract.address,
            "data": self._calldata(entry.request_id, entry.prediction, entry.pow_nonce),
            "value": 0,
            "nonce": entry.tx_nonce,
            "gas": gas,
            "chainId": await self.ctx.w3.eth.chain_id,
            "type": 2,
            **bumped,
        }
        signed = self.ctx.account.sign_transaction(tx)
        raw = HexBytes(signed.raw_transaction).to_0x_hex()
        tx_hash = HexBytes(signed.hash).to_0x_hex()
        self.ctx.journal.add_replacement(entry, raw, tx_hash)
        await self._send_raw(raw)
        self.ctx.log.info("fee_bumped", request_id=entry.request_id, tx=tx_hash, max_fee=bumped["maxFeePerGas"])

    def _dropped(self, request_id: int, reason: str) -> None:
        self.ctx.stats.dropped += 1
        self.ctx.emit(SubmissionDropped(request_id, reason))
        self.ctx.log.info("submission_dropped", request_id=request_id, reason=reason)

    # ----------------------------------------------------------------- restart

    async def recover(self) -> None:
        """Finish what the journal says was signed or sent before a restart."""
        for entry in self.ctx.journal.open_submissions():
            receipt = await self._receipt_of(entry.tx_hashes, wait=0)
            if receipt is None and not await self._pending(entry.tx_hashes):
                call = self._call(entry.request_id, entry.prediction, entry.pow_nonce)
                gas, reason = await self._preflight(call, await self._callback_gas(entry.request_id))
                if gas is None:
                    self.ctx.journal.set_status(entry, "dropped", reason)
                    self._dropped(entry.request_id, f"after restart, pre-flight says it would revert: {reason}")
                    continue
                # Re-send the identical signed transaction: same hash, same nonce, never a second one.
                await self._send_raw(entry.raw_txs[-1])
                self.ctx.journal.set_status(entry, "sent")
                self.ctx.log.info("resent_after_restart", request_id=entry.request_id, tx=entry.tx_hashes[-1])
            await self._await_receipt(entry)

    async def _pending(self, hashes: list[str]) -> bool:
        for h in hashes:
            try:
                await self.ctx.w3.eth.get_transaction(h)  # type: ignore[arg-type]
                return True
            except TransactionNotFound:
                continue
        return False
