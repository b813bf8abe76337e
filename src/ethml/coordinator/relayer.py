"""The relayer: creates the tasks posted over the API on chain (`createTaskFor`: the terms exactly as
their requester signed them, the signature, the optional permit), one entry of the `relay` stream at a
time, with the relayer key's journaled transactions (`chain.send_raw`). It cannot change a term: the
contract checks the requester's signature of every one of them.

Every instance with the relayer on reads the stream in the group `relayers` under a consumer name of
its own (new on every start). While it works on an entry it keeps it fresh; an entry left idle for
`relay_timeout` (its instance was killed, or lost Redis) is taken over by a live relayer with
XAUTOCLAIM. Taking over never creates a task twice: the transaction is journaled in the task document
before it is sent and re-sent as is by whoever relays the entry next, decided under the relayer lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog
from web3.exceptions import Web3RPCError
from web3.logs import DISCARD

from ethml.coordinator import redis_keys as k
from ethml.coordinator.background import stop_helper, stop_if_cancelled
from ethml.coordinator.chain import Chain, fail, send_raw
from ethml.coordinator.follower import deadlines_of, task_opened
from ethml.coordinator.store import RELAY_GROUP, Store
from ethml.errors import EthmlError, TransactionReverted
from ethml.ipfs import IpfsClient
from ethml.training.spec import TaskSpec
from ethml.training.terms import Terms, min_score_units

log = structlog.get_logger("ethml.coordinator")


class TermsSpent(EthmlError):
    """The signed terms' nonce is not the requester's next one: it was used, or voided (`useNonce`)."""


def _terms(doc: dict[str, Any]) -> Terms:
    """The terms as the requester signed them, from the task document."""
    spec = TaskSpec.model_validate(doc["spec"])
    return Terms.for_spec(
        spec,
        dataset_cid=doc["dataset_cid"],
        spec_cid=doc["spec_cid"],
        test_set_commitment=bytes.fromhex(doc["test_set_commitment"][2:]),
        reward=int(doc["reward"]),
        submit_period=int(doc["submit_seconds"]),
        score_period=int(doc["score_seconds"]),
        validations=int(doc["validations"]),
        min_score=min_score_units(float(doc["min_score"])),
        parameters_version=int(doc["parameters_version"]),
    )


def _permit(doc: dict[str, Any]) -> tuple[int, int, bytes, bytes]:
    """TrainingTasks.Permit: (deadline, v, r, s), deadline 0 for none."""
    p = doc.get("permit")
    if not p:
        return (0, 0, bytes(32), bytes(32))
    return (int(p["deadline"]), int(p["v"]), bytes.fromhex(p["r"][2:]), bytes.fromhex(p["s"][2:]))


async def relay_one(chain: Chain, store: Store, ipfs: IpfsClient, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
    task_id = fields[b"task"].decode()
    doc = await store.task(task_id)
    if doc is None or doc.get("chain_task_id") is not None or doc["status"] == "failed":
        await store.finish_entry(k.RELAY, RELAY_GROUP, entry_id)
        return
    # The spec in its canonical form, stored by the CID the terms name (checked equal when posted), so
    # workers and miners can fetch it from this coordinator.
    ipfs.add_bytes(TaskSpec.model_validate(doc["spec"]).to_json(), 1)
    requester, nonce = doc["requester"], int(doc["nonce"])

    async def terms_unused() -> None:
        """Before a creation is signed (under the relayer lock): the terms' nonce is the requester's next,
        counting the creations still pending (the pending block, as the pre-flight of the send sees it)."""
        nonces = chain.tasks.functions.nonces(requester)
        try:
            next_nonce = int(await nonces.call(block_identifier="pending"))
        except Web3RPCError:  # a node without calls on the pending block
            next_nonce = int(await nonces.call())
        if next_nonce != nonce:
            raise TermsSpent(
                f"the signed terms carry nonce {nonce}, but the requester's next is {next_nonce} "
                "(another task used it, or the requester voided it)"
            )

    call = chain.tasks.functions.createTaskFor(
        _terms(doc).as_tuple(), requester, int(doc["expiry"]), bytes.fromhex(doc["signature"][2:]), _permit(doc)
    )
    try:
        receipt = await send_raw(chain, store, call, "createTaskFor", (task_id, "create"), precheck=terms_unused)
    except (TransactionReverted, TermsSpent) as exc:
        await store.update_task(task_id, fail(str(exc)))
        await store.finish_entry(k.RELAY, RELAY_GROUP, entry_id)
        return
    created = chain.tasks.events.TaskCreated().process_receipt(receipt, errors=DISCARD)
    args = created[0]["args"]
    chain_task_id = int(args["taskId"])
    await store.link_chain_id(task_id, chain_task_id)

    def opened(d: dict[str, Any]) -> None:
        d["chain_task_id"] = chain_task_id
        d.update(deadlines_of(args))
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
    def __init__(self, chain: Chain, store: Store, ipfs: IpfsClient, consumer: str, *, idle_timeout: float) -> None:
        self.chain, self.store, self.ipfs, self.consumer = chain, store, ipfs, consumer
        self.idle_timeout = idle_timeout

    async def run(self) -> None:
        """Relay entries: taken over from dead instances first, then this consumer's own unfinished ones
        (after a failure), then new ones. An RPC failure leaves the entry pending and retries it with
        backoff."""
        own = True
        backoff = 0.5
        while True:
            stop_if_cancelled()
            try:
                entries = await self._reclaim()
                if not entries:
                    entries = await self._read(own)
                    if own and not entries:
                        own = False
                        continue
                for entry_id, fields in entries:
                    async with self._fresh(entry_id):
                        await relay_one(self.chain, self.store, self.ipfs, entry_id, fields)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the RPC or Redis is down: wait and retry, never die
                log.warning("relayer_retry", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                own = True

    async def _reclaim(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Entries left idle past the timeout by another consumer (a killed instance), now this one's."""
        reply = await self.store.redis.xautoclaim(
            k.RELAY, RELAY_GROUP, self.consumer, int(self.idle_timeout * 1000), start_id="0-0", count=10
        )
        entries = []
        for entry_id, fields in reply[1]:
            if fields is None:  # deleted from the stream while pending (Redis 6.2 still lists it)
                await self.store.finish_entry(k.RELAY, RELAY_GROUP, entry_id)
                continue
            log.warning("relay_taken_over", entry=entry_id.decode(), task=fields.get(b"task", b"?").decode())
            entries.append((entry_id, fields))
        return entries

    async def _read(self, own: bool) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """This consumer's own pending entries (`own`), or new ones (waiting up to a second)."""
        got = await self.store.redis.xreadgroup(
            RELAY_GROUP, self.consumer, {k.RELAY: "0" if own else ">"}, count=10, block=None if own else 1000
        )
        return [(entry_id, fields) for entry_id, fields in (got[0][1] if got else []) if fields]

    @contextlib.asynccontextmanager
    async def _fresh(self, entry_id: bytes) -> AsyncIterator[None]:
        """Keep the entry's idle time low while it is worked on, so no one takes over a live relay."""

        async def touch() -> None:
            while True:
                stop_if_cancelled()
                await asyncio.sleep(self.idle_timeout / 3)
                await self.store.touch_entries(k.RELAY, RELAY_GROUP, self.consumer, [entry_id])

        toucher = asyncio.create_task(touch(), name="relay-toucher")
        try:
            yield
        finally:
            await stop_helper(toucher)
