"""Admin calls through the deployment's EthMLTimelock (OpenZeppelin's TimelockController).

An operation is a call (target, value, data) with a predecessor and a salt; its id is their hash. A
proposer schedules it with a delay of at least the timelock's minimum; once that much time has passed
(the chain's clock), an executor executes it, and the timelock makes the call. The same command line
gives the same operation (the salt defaults to zero), so `--schedule` now and `--execute` after the
delay name one operation without the user copying its id; a deliberate repeat of an executed call
needs another `--salt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.contract import AsyncContract
from web3.types import TxReceipt

from ethml.chain.reverts import duration, local_time
from ethml.chain.tx import moment_of, send
from ethml.errors import TransactionReverted

ZERO = bytes(32)


class OpState(IntEnum):
    """TimelockController.OperationState."""

    UNSET = 0
    WAITING = 1
    READY = 2
    DONE = 3


@dataclass(frozen=True)
class Operation:
    target: str
    data: bytes
    salt: bytes = ZERO
    value: int = 0
    predecessor: bytes = ZERO

    @property
    def id(self) -> bytes:
        """TimelockController.hashOperation: keccak256(abi.encode(target, value, data, predecessor, salt))."""
        from eth_abi.abi import encode
        from eth_utils.crypto import keccak

        encoded = encode(
            ["address", "uint256", "bytes", "bytes32", "bytes32"],
            [self.target, self.value, self.data, self.predecessor, self.salt],
        )
        return bytes(keccak(encoded))

    @property
    def hex_id(self) -> str:
        return "0x" + self.id.hex()


@dataclass(frozen=True)
class OperationStatus:
    operation: Operation
    state: OpState
    #: When it becomes (or became) executable, unix time; None when not scheduled.
    ready_at: int | None
    #: The chain's clock now (the pending block's timestamp).
    now: int

    def when(self) -> str:
        """`12:40:03 (in 9 min 57 s)`, or `12:40:03 (since 3 s)`."""
        if self.ready_at is None:
            return "never (not scheduled)"
        gap = self.ready_at - self.now
        shown = local_time(self.ready_at, self.now)
        return f"{shown} (in {duration(gap)})" if gap > 0 else f"{shown} (since {duration(gap)})"


def operation_for(call: Any, salt: bytes = ZERO) -> Operation:
    """The timelock operation that makes contract call `call` (a web3 contract function call)."""
    data = bytes.fromhex(str(call._encode_transaction_data()).removeprefix("0x"))
    return Operation(target=str(call.address), data=data, salt=salt)


async def status(w3: AsyncWeb3[Any], timelock: AsyncContract, op: Operation) -> OperationStatus:
    state = OpState(int(await timelock.functions.getOperationState(op.id).call()))
    stamp = int(await timelock.functions.getTimestamp(op.id).call())
    now = (await moment_of(w3, "pending")).block_time or 0
    # getTimestamp is 1 (DONE_TIMESTAMP) once executed and 0 when unset.
    return OperationStatus(op, state, stamp if state in (OpState.WAITING, OpState.READY) else None, now)


async def schedule(
    w3: AsyncWeb3[Any],
    account: LocalAccount,
    timelock: AsyncContract,
    op: Operation,
    what: str,
    delay: int | None = None,
) -> TxReceipt:
    """Schedule `op` with `delay` seconds (default: the timelock's minimum)."""
    if delay is None:
        delay = int(await timelock.functions.getMinDelay().call())
    call = timelock.functions.schedule(op.target, op.value, op.data, op.predecessor, op.salt, delay)
    try:
        return await send(w3, account, call, what=f"timelock schedule ({what})")
    except TransactionReverted as exc:
        raise await _in_words(w3, timelock, op, exc) from None


async def execute(
    w3: AsyncWeb3[Any], account: LocalAccount, timelock: AsyncContract, op: Operation, what: str
) -> TxReceipt:
    call = timelock.functions.execute(op.target, op.value, op.data, op.predecessor, op.salt)
    try:
        return await send(w3, account, call, what=f"timelock execute ({what})")
    except TransactionReverted as exc:
        raise await _in_words(w3, timelock, op, exc) from None


async def cancel(
    w3: AsyncWeb3[Any], account: LocalAccount, timelock: AsyncContract, op: Operation, what: str
) -> TxReceipt:
    try:
        return await send(w3, account, timelock.functions.cancel(op.id), what=f"timelock cancel ({what})")
    except TransactionReverted as exc:
        raise await _in_words(w3, timelock, op, exc) from None


async def _in_words(w3: AsyncWeb3[Any], timelock: AsyncContract, op: Operation, exc: TransactionReverted) -> Exception:
    """The timelock's TimelockUnexpectedOperationState says only which states the call needed; say what
    the operation's state is instead, and when it will be ready."""
    if exc.error is None or exc.error.name != "TimelockUnexpectedOperationState":
        return exc
    now = await status(w3, timelock, op)
    op_id = op.hex_id
    reason = {
        OpState.UNSET: f"operation {op_id} is not scheduled: schedule it first (the same command without --execute)",
        OpState.WAITING: f"the timelock's delay has not passed: operation {op_id} can be executed from {now.when()}",
        OpState.READY: f"operation {op.hex_id} is already scheduled and ready: execute it (--execute)",
        OpState.DONE: f"operation {op.hex_id} was executed already (a deliberate repeat needs another --salt)",
    }[now.state]
    if now.state == OpState.WAITING and exc.what.startswith("timelock schedule"):
        reason = f"operation {op.hex_id} is already scheduled: it can be executed from {now.when()}"
    return TransactionReverted(
        exc.what, f"{reason} ({exc.error.name})", error=exc.error, preflight=exc.preflight, block=exc.block
    )
