"""TxSender: local signing, own nonce, EIP-1559 fees with bumping, pre-flight, journal first.

Used by the committing TxSubmitter and the Revealer for the transactions of a round: `commit`, `reveal`,
`reveal_close` (the fifth reveal closing the round), `close` (closeRound once all revealed or after the
reveal window) and `claim` (taking the node's balance out of the oracle).
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Any

from hexbytes import HexBytes
from web3.exceptions import TransactionNotFound

from ethml.chain.tx import (
    BUMP_DENOMINATOR,
    BUMP_NUMERATOR,
    GAS_MARGIN,
    RECEIPT_GRACE,
    fee_fields,
    mined_receipt,
    preflight,
    why_reverted,
)
from ethml.errors import TransactionReverted
from ethml.node.context import NodeContext, is_connection_error
from ethml.node.events import NodeWarning, SubmissionDropped, SubmissionMined, Submitted
from ethml.node.journal import Submission

#: Gas a closing transaction (revealAndClose or closeRound) may need besides the consumers' callbacks:
#: a base and a part per request of the round (consensus, rewards, the queue pops and the next round;
#: see docs/gas-table.md), a floor under the pre-flight's estimate.
FINALIZE_GAS = 300_000
FINALIZE_GAS_PER_REQUEST = 60_000
#: A fifth commitment also retargets the difficulty; a first one pulls the bond from the miner's EML.
COMMIT_GAS = 120_000
#: claim transfers EML to the miner (a new balance slot the first time).
CLAIM_GAS = 90_000
REVEAL_GAS = 80_000

FUNCTIONS = {
    "commit": "commit",
    "reveal": "reveal",
    "reveal_close": "revealAndClose",
    "close": "closeRound",
    "claim": "claim",
}
#: How each kind's arguments are kept in the journal (ints as decimal strings, bytes as hex).
ARG_TYPES: dict[str, tuple[str, ...]] = {
    "commit": ("int", "int", "bytes"),
    "reveal": ("int", "int[]", "bytes"),
    "reveal_close": ("int", "bytes", "address[]", "int[]"),
    "close": ("int", "address[]", "int[]"),
    "claim": ("int",),
}
CLOSING = ("reveal_close", "close")


def final_gas(count: int, callback_gas: int) -> int:
    """The gas limit floor of a transaction that closes a round of `count` requests whose callbacks
    ask for `callback_gas` together (EIP-150 margin included)."""
    return FINALIZE_GAS + FINALIZE_GAS_PER_REQUEST * count + callback_gas + callback_gas // 63 + 10_000 * count


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return HexBytes(value).to_0x_hex()
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, str):
        return value
    return str(int(value))


def encode_args(args: list[Any]) -> list[Any]:
    return [_encode(a) for a in args]


def _decode(kind: str, value: Any) -> Any:
    if kind == "bytes":
        return bytes.fromhex(str(value).removeprefix("0x"))
    if kind == "int[]":
        return [int(v) for v in value]
    if kind == "address[]":
        return [str(v) for v in value]
    return int(value)


def decode_args(kind: str, raw: list[Any]) -> list[Any]:
    return [_decode(t, v) for t, v in zip(ARG_TYPES[kind], raw, strict=True)]


_SEND_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def _send_lock(w3: Any) -> asyncio.Lock:
    """Nodes that share one client (one process) take turns from pre-flight to send, so one of them
    can never land the closing transaction between another's pre-flight and its send."""
    lock = _SEND_LOCKS.get(w3)
    if lock is None:
        lock = _SEND_LOCKS[w3] = asyncio.Lock()
    return lock


@dataclass
class Outcome:
    """What became of one transaction: mined, reverted, dropped (pre-flight said no) or stopped."""

    status: str
    reason: str = ""


class TxSender:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        #: How long, after a restart, a journaled transaction whose nonce is used is given to show a receipt.
        self.receipt_grace = RECEIPT_GRACE
        self._fees: dict[tuple[int, str], dict[str, int]] = {}
        self._callback_limits: dict[int, int] = {}

    def _call(self, kind: str, args: list[Any]) -> Any:
        return getattr(self.ctx.contract.functions, FUNCTIONS[kind])(*args)

    async def _round_callback_gas(self, round_id: int) -> tuple[int, int]:
        """(requests, their callback gas together) of the open round, if it is `round_id`."""
        current = await self.ctx.contract.functions.getCurrentRound().call()
        if int(current[0]) != round_id:
            return 0, 0
        total = 0
        for request_id in current[9]:
            cached = self._callback_limits.get(int(request_id))
            if cached is None:
                _requester, _model, limit, _status = await self.ctx.contract.functions.getRequest(request_id).call()
                self._callback_limits[int(request_id)] = cached = int(limit)
            total += cached
        return len(current[9]), total

    async def _gas_floor(self, kind: str, round_id: int) -> int:
        if kind == "commit":
            return COMMIT_GAS
        if kind == "claim":
            return CLAIM_GAS
        if kind == "reveal":
            return REVEAL_GAS
        return final_gas(*await self._round_callback_gas(round_id))

    async def _preflight(self, call: Any, floor: int) -> tuple[int | None, str]:
        """(gas limit, "") when the transaction would succeed now; (None, reason) otherwise.

        The estimate is against the pending block (ethml.chain.tx.preflight, the path every sender
        takes), but other miners' transactions may land first and make ours the closing one, which pays
        the rewards and calls the consumer back with its callback gas (the contract reverts rather than
        short-change it). The limit covers that case; only the gas actually used is paid.
        """
        try:
            gas = await preflight(self.ctx.w3, call, {"from": self.ctx.address}, str(call.fn_name))
        except TransactionReverted as exc:
            return None, exc.reason
        return max(int(gas * GAS_MARGIN), floor), ""

    # ------------------------------------------------------------------ send

    async def send(
        self, round_id: int, challenge: str, kind: str, args: list[Any], *, answers: list[int] | None = None
    ) -> Outcome:
        """Pre-flight, sign, journal, send and wait for the receipt of one round transaction."""
        if self.ctx.journal.has(round_id, challenge, kind):
            entry = self.ctx.journal.get(round_id, challenge, kind)
            assert entry is not None
            if entry.status in ("mined", "reverted", "dropped"):
                return Outcome(entry.status, entry.detail)
            return await self._finish(entry)
        call = self._call(kind, args)
        backoff = 1.0
        while True:
            try:
                chain_id = await self.ctx.w3.eth.chain_id
                fees = await fee_fields(self.ctx.w3)
                balance = await self.ctx.w3.eth.get_balance(self.ctx.account.address)
                tx_nonce = await self.ctx.w3.eth.get_transaction_count(self.ctx.account.address, "pending")
                floor = await self._gas_floor(kind, round_id)
                if balance < floor * fees["maxFeePerGas"]:
                    # Checked before the pre-flight too: a node may not even estimate without funds.
                    self._warn_no_eth(balance, floor * fees["maxFeePerGas"])
                    sent: Submission | str | None = None
                else:
                    async with _send_lock(self.ctx.w3):
                        sent = await self._preflight_sign_send(
                            round_id, challenge, kind, args, call, floor, balance, fees, chain_id, tx_nonce
                        )
                if isinstance(sent, str):
                    return Outcome("dropped", sent)
                if sent is None:
                    if await self.ctx.sleep(min(backoff, self.ctx.config.max_backoff)):
                        return Outcome("stopped")
                    backoff *= 2
                    continue
                entry = sent
                break
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                self.ctx.emit(NodeWarning(f"RPC unreachable while sending a {kind} ({type(exc).__name__}); retrying"))
                journaled = self.ctx.journal.get(round_id, challenge, kind)
                if journaled is not None:
                    # Signed and journaled: the identical transaction is re-sent as soon as the RPC answers.
                    entry = journaled
                    break
                if await self.ctx.sleep(min(backoff, self.ctx.config.max_backoff)):
                    return Outcome("stopped")
                backoff *= 2
        if kind == "commit":
            self.ctx.stats.submissions += 1
            self.ctx.emit(Submitted(round_id, entry.tx_hashes[-1], tuple(answers or ())))
        self.ctx.log.info(f"{kind}_sent", round_id=round_id, tx=entry.tx_hashes[-1], nonce=entry.tx_nonce)
        return await self._finish(entry)

    async def _finish(self, entry: Submission) -> Outcome:
        if entry.status == "signed" and not await self._resend_until_accepted(entry):
            return Outcome("stopped")
        return await self._await_receipt(entry)

    async def _resend_until_accepted(self, entry: Submission) -> bool:
        """Send the journaled raw transaction until the RPC takes it; False when the node stops first."""
        backoff = 0.25
        while True:
            try:
                await self._send_raw(entry.raw_txs[-1])
                self.ctx.journal.set_status(entry, "sent")
                return True
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                if await self.ctx.sleep(backoff):
                    return False
                backoff = min(backoff * 2, 2.0)

    async def _preflight_sign_send(
        self,
        round_id: int,
        challenge: str,
        kind: str,
        args: list[Any],
        call: Any,
        floor: int,
        balance: int,
        fees: dict[str, int],
        chain_id: int,
        tx_nonce: int,
    ) -> Submission | str | None:
        """Pre-flight, sign, journal, send. A str: dropped for that reason; None: wait for funds."""
        gas, reason = await self._preflight(call, floor)
        if gas is None:
            return f"pre-flight says it would revert: {reason}"
        if balance < gas * fees["maxFeePerGas"]:
            self._warn_no_eth(balance, gas * fees["maxFeePerGas"])
            return None
        raw, tx_hash = self._sign(kind, args, tx_nonce, gas, chain_id, fees)
        entry = Submission(round_id, challenge, kind, encode_args(args), tx_nonce, [raw], [tx_hash], "signed")
        # Journal, then send: a stop or a crash in between leaves a journaled transaction that a
        # restart re-sends as it is.
        self.ctx.journal.record(entry)
        self._fees[(round_id, kind)] = fees
        await self._send_raw(raw)
        self.ctx.journal.set_status(entry, "sent")
        return entry

    def _sign(
        self, kind: str, args: list[Any], tx_nonce: int, gas: int, chain_id: int, fees: dict[str, int]
    ) -> tuple[str, str]:
        tx: dict[str, Any] = {
            "from": self.ctx.address,
            "to": self.ctx.contract.address,
            "data": str(self.ctx.contract.encode_abi(FUNCTIONS[kind], args=args)),
            "value": 0,
            "nonce": tx_nonce,
            "gas": gas,
            "chainId": chain_id,
            "type": 2,
            **fees,
        }
        signed = self.ctx.account.sign_transaction(tx)
        return HexBytes(signed.raw_transaction).to_0x_hex(), HexBytes(signed.hash).to_0x_hex()

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
            if "nonce too low" in text:
                return  # mined already (or replaced): the receipt wait finds out which
            raise

    async def _await_receipt(self, entry: Submission) -> Outcome:
        """Wait for a receipt, bumping the fee of a stuck transaction; never re-send a revert."""
        while True:
            try:
                receipt = await self._receipt_of(entry.tx_hashes, wait=self.ctx.config.bump_after)
                if receipt is not None:
                    break
                if self.ctx.stopping.is_set():
                    return Outcome("stopped")
                await self._bump(entry)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                if await self.ctx.sleep(0.5):
                    return Outcome("stopped")
        if receipt["status"] == 1:
            self.ctx.journal.set_status(entry, "mined")
            tx_hash = HexBytes(receipt["transactionHash"]).to_0x_hex()
            if entry.kind == "commit":
                self.ctx.stats.accepted += 1
                self.ctx.emit(SubmissionMined(entry.round_id, tx_hash, int(receipt["gasUsed"])))
            self.ctx.log.info(f"{entry.kind}_mined", round_id=entry.round_id, gas_used=receipt["gasUsed"])
            return Outcome("mined")
        block = receipt["blockNumber"]
        try:
            why, _error = await why_reverted(self.ctx.w3, receipt, self.ctx.contract.abi)
        except Exception as exc:  # noqa: BLE001 - the reason is best effort; the revert is recorded either way
            why = f"no reason available ({type(exc).__name__})"
        detail = f"reverted in block {block}: {why}"
        self.ctx.journal.set_status(entry, "reverted", detail)
        self.dropped(entry.round_id, f"{entry.kind} mined but {detail} (not retried)")
        return Outcome("reverted", detail)

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
        args = decode_args(entry.kind, entry.args)
        gas, reason = await self._preflight(
            self._call(entry.kind, args), await self._gas_floor(entry.kind, entry.round_id)
        )
        if gas is None:
            # Nothing to replace it with: let the original be mined or dropped; it is journaled.
            self.ctx.log.info("bump_skipped", round_id=entry.round_id, kind=entry.kind, reason=reason)
            return
        fees = await fee_fields(self.ctx.w3)
        previous = self._fees.get((entry.round_id, entry.kind), fees)
        bumped = {
            key: max(fees[key], previous[key] * BUMP_NUMERATOR // BUMP_DENOMINATOR + 1)
            for key in ("maxFeePerGas", "maxPriorityFeePerGas")
        }
        self._fees[(entry.round_id, entry.kind)] = bumped
        raw, tx_hash = self._sign(entry.kind, args, entry.tx_nonce, gas, await self.ctx.w3.eth.chain_id, bumped)
        self.ctx.journal.add_replacement(entry, raw, tx_hash)
        await self._send_raw(raw)
        self.ctx.log.info("fee_bumped", round_id=entry.round_id, tx=tx_hash, max_fee=bumped["maxFeePerGas"])

    def dropped(self, round_id: int, reason: str) -> None:
        self.ctx.stats.dropped += 1
        self.ctx.emit(SubmissionDropped(round_id, reason))
        self.ctx.log.info("submission_dropped", round_id=round_id, reason=reason)

    # ----------------------------------------------------------------- restart

    async def recover(self) -> None:
        """Finish what the journal says was signed or sent before a restart."""
        for entry in self.ctx.journal.open_submissions():
            receipt = await self._receipt_of(entry.tx_hashes, wait=0)
            if receipt is None and not await self._pending(entry.tx_hashes):
                args = decode_args(entry.kind, entry.args)
                floor = await self._gas_floor(entry.kind, entry.round_id)
                gas, reason = await self._preflight(self._call(entry.kind, args), floor)
                if gas is not None:
                    # Re-send the identical signed transaction: same hash, same nonce, never a second one.
                    await self._send_raw(entry.raw_txs[-1])
                    self.ctx.journal.set_status(entry, "sent")
                    self.ctx.log.info("resent_after_restart", round_id=entry.round_id, tx=entry.tx_hashes[-1])
                elif not await self._mined_after_all(entry):
                    self.ctx.journal.set_status(entry, "dropped", reason)
                    self.dropped(
                        entry.round_id, f"after restart, {entry.kind} pre-flight says it would revert: {reason}"
                    )
                    continue
            await self._await_receipt(entry)

    async def _mined_after_all(self, entry: Submission) -> bool:
        """Whether a journaled transaction that the node knows nothing of, and whose call would now revert,
        was mined after all: its nonce is used and a receipt shows up (`mined_receipt`). A node may count a
        nonce used before it serves the receipt, and a commitment already mined makes its own pre-flight
        revert; taken as dropped, it would never be revealed."""
        used = await self.ctx.w3.eth.get_transaction_count(self.ctx.account.address, "latest")
        if used <= entry.tx_nonce:
            return False
        return await mined_receipt(self.ctx.w3, entry.tx_hashes, self.receipt_grace) is not None

    async def _pending(self, hashes: list[str]) -> bool:
        for h in hashes:
            try:
                await self.ctx.w3.eth.get_transaction(h)  # type: ignore[arg-type]
                return True
            except TransactionNotFound:
                continue
        return False
