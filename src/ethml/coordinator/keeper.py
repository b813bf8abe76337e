"""The deadline keeper: reveals the test sets this coordinator holds once the submission deadline has
passed, and finalizes tasks whose validations are complete or whose validation deadline has passed.
Deadlines are the chain's (the latest block's timestamp), as the contract sees them. It runs on the
leader only (`leader`)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import structlog

from ethml.coordinator.chain import Chain, send_raw
from ethml.coordinator.store import Store
from ethml.errors import TransactionReverted
from ethml.node.miner import DEV_CHAIN_IDS

log = structlog.get_logger("ethml.coordinator")


async def _chain_time(chain: Chain, deadlines: list[int]) -> int:
    """The latest block's timestamp. A devnet that mines only on demand keeps its clock still between
    transactions: when a deadline has passed on the wall clock but not yet on the chain, mine an empty
    block there so the chain's clock catches up."""
    now = int((await chain.w3.eth.get_block("latest"))["timestamp"])
    wall = int(time.time())
    if chain.chain_id in DEV_CHAIN_IDS and any(now <= d < wall for d in deadlines):
        with contextlib.suppress(Exception):
            await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
            now = int((await chain.w3.eth.get_block("latest"))["timestamp"])
    return now


async def keep_deadlines(chain: Chain, store: Store) -> None:
    live = []
    for status in ("open", "training", "validating"):
        docs, _ = await store.list_tasks(status, None, 200)
        live += [d for d in docs if d.get("chain_task_id") is not None]
    if not live:
        return
    now = await _chain_time(chain, [d[k] for d in live for k in ("submit_deadline", "validation_deadline")])
    for doc in live:
        chain_task = doc["chain_task_id"]
        try:
            if doc["status"] in ("open", "training") and doc.get("test_set") and now > doc["submit_deadline"]:
                secret = doc["test_set"]
                call = chain.tasks.functions.revealTestSet(chain_task, secret["cid"], bytes.fromhex(secret["salt"][2:]))
                await send_raw(chain, store, call, "revealTestSet", (doc["id"], "reveal"))
                await store.update_task(doc["id"], lambda d: d.update(status="validating"))
            elif doc["status"] == "validating" or now > doc["validation_deadline"]:
                subs = [s for s in doc["submissions"] if s]
                complete = bool(subs) and all(s["votes"] >= doc["validations_required"] for s in subs)
                if complete or now > doc["validation_deadline"]:
                    call = chain.tasks.functions.finalizeTask(chain_task)
                    await send_raw(chain, store, call, "finalizeTask", (doc["id"], "finalize"))
        except TransactionReverted as exc:
            log.warning("keeper", task=doc["id"], error=str(exc), revert=exc.error.generic() if exc.error else None)
            # The journaled transaction reverted (e.g. someone else revealed or finalized first): forget it
            # so the next pass decides afresh from the chain's state.
            await store.update_task(doc["id"], _forget_journal)


def _forget_journal(doc: dict[str, Any]) -> None:
    for name in ("reveal", "finalize"):
        doc.get("raw", {}).pop(name, None)
        doc.get("raw_nonce", {}).pop(name, None)
