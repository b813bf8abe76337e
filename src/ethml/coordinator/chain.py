"""The coordinator's side of the chain: the TrainingTasks client and the relayer key's journaled
transactions (signed, stored in the task document, then sent, so a restart re-sends the same one).

The loops that use it have modules of their own: `relayer` (tasks from permits), `follower`
(TrainingTasks events into task documents), `keeper` (test-set reveals and finalization)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.exceptions import Web3RPCError

from ethml.chain.deploy import Deployment, ethml_contract, training_contract
from ethml.chain.tx import GAS_MARGIN, fee_fields, is_revert, revert_reason
from ethml.coordinator.lease import Lock
from ethml.coordinator.store import Store
from ethml.errors import TransactionReverted

log = structlog.get_logger("ethml.coordinator")

#: TrainingTasks keeps scores as millionths.
SCORE_SCALE = 1_000_000


@dataclass
class Chain:
    w3: AsyncWeb3[Any]
    deployment: Deployment
    relayer: LocalAccount
    chain_id: int
    tasks: Any  # the TrainingTasks contract
    ethml: Any
    #: The latest block number seen (by start-up and the observer loop); None until then.
    head: int | None = None

    @classmethod
    async def connect(cls, w3: AsyncWeb3[Any], deployment: Deployment, relayer: LocalAccount) -> Chain:
        assert deployment.training is not None
        return cls(
            w3,
            deployment,
            relayer,
            int(await w3.eth.chain_id),
            training_contract(w3, deployment.training),
            ethml_contract(w3, deployment.ethml),
        )


async def send_raw(chain: Chain, store: Store, call: Any, what: str, journal: tuple[str, str] | None) -> dict[str, Any]:
    """Sign and send with the relayer key under the relayer lock; with `journal` (task id, name), the
    signed transaction is stored in the task document before it is sent and re-sent as is after a
    restart, so a task is never created twice. Returns the receipt."""
    task_id, name = journal if journal else (None, None)
    doc = await store.task(task_id) if task_id else None
    raw_hex = (doc or {}).get("raw", {}).get(name) if name else None
    lock = Lock(store, f"relayer:{chain.relayer.address}", ttl=120)
    if not await lock.acquire(wait=120):
        raise TransactionReverted(what, "the relayer lock is held by another instance for over two minutes")
    try:
        if raw_hex is None:
            w3 = chain.w3
            tx: dict[str, Any] = {
                "from": chain.relayer.address,
                "chainId": chain.chain_id,
                "nonce": await w3.eth.get_transaction_count(chain.relayer.address, "pending"),
                **await fee_fields(w3),
            }
            try:
                tx["gas"] = int(await call.estimate_gas(tx) * GAS_MARGIN)
                built = await call.build_transaction(tx)
            except Exception as exc:
                if not is_revert(exc):
                    raise
                raise TransactionReverted(what, revert_reason(exc)) from exc
            signed = chain.relayer.sign_transaction(built)
            raw_hex = "0x" + bytes(signed.raw_transaction).hex()
            if task_id and name:

                def keep(d: dict[str, Any]) -> None:
                    d.setdefault("raw", {})[name] = raw_hex
                    d["transactions"][name] = "0x" + bytes(signed.hash).hex()

                await store.update_task(task_id, keep)
        raw = bytes.fromhex(raw_hex[2:])
        tx_hash = chain.w3.keccak(raw)
        try:
            await chain.w3.eth.send_raw_transaction(raw)
        except Web3RPCError as exc:  # "already known" / "nonce too low" on a re-send: the receipt decides
            log.debug("resend", what=what, error=str(exc))
    finally:
        await lock.release()
    receipt = await chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=300)
    if receipt["status"] != 1:
        raise TransactionReverted(what, f"mined but reverted in block {receipt['blockNumber']}")
    return dict(receipt)


def fail(error: str) -> Any:
    """A task-document change: the task failed, for `error`."""

    def change(doc: dict[str, Any]) -> None:
        doc["status"] = "failed"
        doc["error"] = error

    return change
