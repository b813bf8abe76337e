"""The relayer: creates the tasks posted over the API on chain (`createTaskWithPermit`), one entry of
the `relay` stream at a time, with the relayer key's journaled transactions (`chain.send_raw`)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from web3.logs import DISCARD

from ethml.coordinator import redis_keys as k
from ethml.coordinator.chain import SCORE_SCALE, Chain, fail, send_raw
from ethml.coordinator.follower import task_opened
from ethml.coordinator.store import RELAY_GROUP, Store
from ethml.errors import TransactionReverted
from ethml.ipfs import IpfsClient
from ethml.training.spec import TaskSpec

log = structlog.get_logger("ethml.coordinator")


async def relay_one(chain: Chain, store: Store, ipfs: IpfsClient, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
    task_id = fields[b"task"].decode()
    doc = await store.task(task_id)
    if doc is None or doc.get("chain_task_id") is not None or doc["status"] == "failed":
        await store.finish_entry(k.RELAY, RELAY_GROUP, entry_id)
        return
    # The spec in its canonical form, stored by the CID the task names on chain.
    spec_cid = str(ipfs.add_bytes(TaskSpec.model_validate(doc["spec"]).to_json(), 1))
    if doc.get("spec_cid") != spec_cid:
        doc = await store.update_task(task_id, lambda d: d.update(spec_cid=spec_cid)) or doc
    p = doc["permit"]
    if "create" not in doc.get("raw", {}):
        next_nonce = int(await chain.ethml.functions.nonces(p["owner"]).call())
        if next_nonce != p["nonce"]:
            await store.update_task(
                task_id, fail(f"permit nonce {p['nonce']} is not the owner's next nonce ({next_nonce})")
            )
            await store.finish_entry(k.RELAY, RELAY_GROUP, entry_id)
            return
    shape = doc["shape"]
    call = chain.tasks.functions.createTaskWithPermit(
        doc["dataset_cid"],
        spec_cid,
        bytes.fromhex(doc["test_set_commitment"][2:]),
        int(doc["reward"]),
        doc["validations_required"],
        round(doc["min_score"] * SCORE_SCALE),
        doc["submit_deadline"],
        doc["validation_deadline"],
        (shape["kind"], shape["decimals"], shape["features"]),
        (p["owner"], p["deadline"], p["v"], bytes.fromhex(p["r"][2:]), bytes.fromhex(p["s"][2:])),
    )
    try:
        receipt = await send_raw(chain, store, call, "createTaskWithPermit", (task_id, "create"))
    except TransactionReverted as exc:
        await store.update_task(task_id, fail(str(exc)))
        await store.finish_entry(k.RELAY, RELAY_GROUP, entry_id)
        return
    created = chain.tasks.events.TaskCreated().process_receipt(receipt, errors=DISCARD)
    chain_task_id = int(created[0]["args"]["taskId"])
    await store.link_chain_id(task_id, chain_task_id)

    def opened(d: dict[str, Any]) -> None:
        d["chain_task_id"] = chain_task_id
        if d["status"] == "pending_chain":
            d["status"] = "open"

    doc = await store.update_task(task_id, opened)
    await store.finish_entry(k.RELAY, RELAY_GROUP, entry_id)
    if doc is not None:
        await task_opened(store, doc)
    log.info(
        "task_created", task=task_id, chain_task=chain_task_id, tx=doc["transactions"].get("create") if doc else None
    )


class Relayer:
    def __init__(self, chain: Chain, store: Store, ipfs: IpfsClient, consumer: str) -> None:
        self.chain, self.store, self.ipfs, self.consumer = chain, store, ipfs, consumer

    async def run(self) -> None:
        """Create queued tasks on chain. Entries this instance read but did not finish (a restart) come
        first; an RPC failure leaves the entry pending and retries it with backoff."""
        backlog = True
        backoff = 0.5
        while True:
            try:
                got = await self.store.redis.xreadgroup(
                    RELAY_GROUP,
                    self.consumer,
                    {k.RELAY: "0" if backlog else ">"},
                    count=10,
                    block=None if backlog else 1000,
                )
                entries = got[0][1] if got else []
                if backlog and not entries:
                    backlog = False
                    continue
                for entry_id, fields in entries:
                    await relay_one(self.chain, self.store, self.ipfs, entry_id, fields)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the RPC or Redis is down: wait and retry, never die
                log.warning("relayer_retry", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                backlog = True
