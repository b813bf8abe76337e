"""TxSubmitter: local signing, own nonce, EIP-1559 fees with bumping, pre-flight, journal first."""

from __future__ import annotations

import asyncio
from typing import Any

from hexbytes import HexBytes
from web3.exceptions import TransactionNotFound

from ethml.chain.tx import GAS_MARGIN, fee_fields, is_revert, revert_reason
from ethml.errors import TransactionReverted
from ethml.node.context import NodeContext, is_connection_error
from ethml.node.events import NodeWarning, SubmissionDropped, SubmissionMined, Submitted
from ethml.node.jobs import Job
from ethml.node.journal import Submission

#: Gas the fifth (finalizing) submission may need besides the consumer's callback gas: rewards,
#: the queue pop and the next challenge (about 210,000 at 1,000 queued requests, see docs/contracts.md).
FINALIZE_GAS = 320_000
#: A replacement must raise both fees by at least 10 %; 12.5 % clears every client's rule.
BUMP_NUMERATOR, BUMP_DENOMINATOR = 9, 8


class TxSubmitter:
    def __init__(self, ctx: NodeContext, inq: asyncio.Queue[Job]) -> None:
        self.ctx = ctx
        self.inq = inq
        self._nonce: int | None = None
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

    async def _next_nonce(self) -> int:
        if self._nonce is None:
            self._nonce = await self.ctx.w3.eth.get_transaction_count(self.ctx.account.address, "pending")
        return self._nonce

    async def _preflight(self, call: Any, request_id: int) -> tuple[int | None, str]:
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
        callback = await self._callback_gas(request_id)
        final = FINALIZE_GAS + callback + callback // 63 + 10_000
        return max(int(gas * GAS_MARGIN), final), ""

    async def _callback_gas(self, request_id: int) -> int:
        cached = self._callback_limits.get(request_id)
        if cached is None:
            _requester, _model, _cid, cached, _status = await self.ctx.contract.functions.getRequest(request_id).call()
            self._callback_limits[request_id] = cached = int(cached)
        return cached

    # ------------------------------------------------------------------ submit

    async def submit(self, job: Job) -> None:
        if self.ctx.journal.has(job.request_id):
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
                gas, reason = await self._preflight(call, job.request_id)
                if gas is None:
                    self._dropped(job.request_id, f"pre-flight says it would revert: {reason}")
                    return
                fees = await fee_fields(self.ctx.w3)
                balance = await self.ctx.w3.eth.get_balance(self.ctx.account.address)
                if balance < gas * fees["maxFeePerGas"]:
                    message = (
                        f"{self.ctx.address} has {balance / 1e18:.6f} ETH, not enough for gas "
                        f"({gas * fees['maxFeePerGas'] / 1e18:.6f}); waiting for funds"
                    )
                    self.ctx.emit(NodeWarning(message))
                    self.ctx.log.warning("no_eth_for_gas", address=self.ctx.address, balance=balance)
                    if await self.ctx.sleep(min(backoff, self.ctx.config.max_backoff)):
                        return
                    backoff *= 2
                    continue
                # Sign, journal, send: shielded, so a stop lands after the send or leaves a journaled tx.
                await asyncio.shield(self._sign_record_send(job, call, gas, fees))
                break
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                self.ctx.emit(NodeWarning(f"RPC unreachable while submitting ({type(exc).__name__}); retrying"))
                if await self.ctx.sleep(min(backoff, self.ctx.config.max_backoff)):
                    return
                backoff *= 2
        await self._await_receipt(job.request_id)

    async def _sign_record_send(self, job: Job, call: Any, gas: int, fees: dict[str, int]) -> None:
        tx_nonce = await self._next_nonce()
        tx = await call.build_transaction(
            {
                "from": self.ctx.address,
                "nonce": tx_nonce,
                "gas": gas,
                "chainId": await self.ctx.w3.eth.chain_id,
                **fees,
            }
        )
        signed = self.ctx.account.sign_transaction(tx)
        raw = HexBytes(signed.raw_transaction).to_0x_hex()
        tx_hash = HexBytes(signed.hash).to_0x_hex()
        self._fees[job.request_id] = fees
        assert job.prediction is not None and job.nonce is not None
        self.ctx.journal.record(
            Submission(
                job.request_id, job.challenge.hex(), job.prediction, job.nonce, tx_nonce, [raw], [tx_hash], "signed"
            )
        )
        self._nonce = tx_nonce + 1
        await self._send_raw(job.request_id, raw)
        self.ctx.journal.set_status(job.request_id, "sent")
        self.ctx.stats.submissions += 1
        self.ctx.emit(Submitted(job.request_id, tx_hash, job.prediction))
        self.ctx.log.info("solution_submitted", request_id=job.request_id, tx=tx_hash, nonce=tx_nonce, gas=gas)

    async def _send_raw(self, request_id: int, raw: str) -> None:
        try:
            await self.ctx.w3.eth.send_raw_transaction(HexBytes(raw))
        except Exception as exc:
            text = str(exc).lower()
            if "already known" in text or "known transaction" in text:
                return  # the identical transaction is in the pool already
            if "nonce too low" in text or "nonce is too low" in text:
                self._nonce = None
            raise

    async def _await_receipt(self, request_id: int) -> None:
        """Wait for a receipt, bumping the fee of a stuck transaction; never re-send a revert."""
        while True:
            entry = self.ctx.journal.get(request_id)
            assert entry is not None
            receipt = await self._receipt_of(entry.tx_hashes, wait=self.ctx.config.bump_after)
            if receipt is not None:
                break
            if self.ctx.stopping.is_set():
                return
            await self._bump(entry)
        if receipt["status"] == 1:
            self.ctx.journal.set_status(request_id, "mined")
            self.ctx.stats.accepted += 1
            tx_hash = HexBytes(receipt["transactionHash"]).to_0x_hex()
            self.ctx.emit(SubmissionMined(request_id, tx_hash, int(receipt["gasUsed"])))
            self.ctx.log.info("submission_mined", request_id=request_id, gas_used=receipt["gasUsed"])
        else:
            self.ctx.journal.set_status(request_id, "reverted", f"reverted in block {receipt['blockNumber']}")
            self._dropped(request_id, f"mined but reverted in block {receipt['blockNumber']} (not retried)")

    async def _receipt_of(self, hashes: list[str], wait: float) -> Any:
        """The receipt of any of `hashes`, polling for up to `wait` seconds; None if none is mined."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            for h in hashes:
                try:
                    return await self.ctx.w3.eth.get_transaction_receipt(h)  # type: ignore[arg-type]
                except TransactionNotFound:
                    continue
                except Exception as exc:
                    if not is_connection_error(exc):
                        raise
            if loop.time() >= deadline:
                return None
            if await self.ctx.sleep(0.05 if wait < 5 else 0.25):
                return None

    async def _bump(self, entry: Submission) -> None:
        """Replace a stuck transaction: same nonce and call, both fees raised by 12.5 %."""
        call = self._call(entry.request_id, entry.prediction, entry.pow_nonce)
        gas, reason = await self._preflight(call, entry.request_id)
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
        tx = await call.build_transaction(
            {
                "from": self.ctx.address,
                "nonce": entry.tx_nonce,
                "gas": gas,
                "chainId": await self.ctx.w3.eth.chain_id,
                **bumped,
            }
        )
        signed = self.ctx.account.sign_transaction(tx)
        raw = HexBytes(signed.raw_transaction).to_0x_hex()
        tx_hash = HexBytes(signed.hash).to_0x_hex()
        self.ctx.journal.add_replacement(entry.request_id, raw, tx_hash)
        await self._send_raw(entry.request_id, raw)
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
                gas, reason = await self._preflight(call, entry.request_id)
                if gas is None:
                    self.ctx.journal.set_status(entry.request_id, "dropped", reason)
                    self._dropped(entry.request_id, f"after restart, pre-flight says it would revert: {reason}")
                    continue
                # Re-send the identical signed transaction: same hash, same nonce, never a second one.
                await self._send_raw(entry.request_id, entry.raw_txs[-1])
                self.ctx.journal.set_status(entry.request_id, "sent")
                self.ctx.log.info("resent_after_restart", request_id=entry.request_id, tx=entry.tx_hashes[-1])
            await self._await_receipt(entry.request_id)
        self._nonce = None  # re-read from the chain

    async def _pending(self, hashes: list[str]) -> bool:
        for h in hashes:
            try:
                await self.ctx.w3.eth.get_transaction(h)  # type: ignore[arg-type]
                return True
            except TransactionNotFound:
                continue
        return False


__all__ = ["TransactionReverted", "TxSubmitter"]
