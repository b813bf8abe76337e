"""The coordinator's chain side: the relayer that creates tasks from permits, the follower that keeps
task documents in step with TrainingTasks events, and the keeper that reveals test sets and finalizes
tasks when their deadlines pass."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import structlog
from eth_account.signers.local import LocalAccount
from eth_utils.abi import event_abi_to_log_topic
from web3 import AsyncWeb3
from web3.exceptions import Web3RPCError
from web3.logs import DISCARD

from ethml.chain.deploy import Deployment, token_contract, training_contract
from ethml.chain.tx import GAS_MARGIN, fee_fields, is_revert, revert_reason
from ethml.coordinator.store import RELAY_GROUP, P, Store
from ethml.errors import TransactionReverted
from ethml.ipfs import IpfsClient
from ethml.node.miner import DEV_CHAIN_IDS
from ethml.training.spec import TaskSpec

log = structlog.get_logger("ethml.coordinator")

EVENTS = ("TaskCreated", "ModelSubmitted", "TestSetRevealed", "Validated", "TaskAccepted", "TaskFailed")
SCORE_SCALE = 1_000_000


@dataclass
class Chain:
    w3: AsyncWeb3[Any]
    deployment: Deployment
    relayer: LocalAccount
    chain_id: int
    tasks: Any  # the TrainingTasks contract
    token: Any  # the EML token (permits)

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


class Lock:
    """A Redis lease (SET NX PX) so one instance at a time sends with the relayer key or leads."""

    def __init__(self, store: Store, name: str, ttl: float) -> None:
        self.store, self.key, self.ttl = store, f"{P}lock:{name}", ttl
        self.token = secrets.token_hex(8)

    async def acquire(self, wait: float = 30.0) -> bool:
        deadline = time.monotonic() + wait
        while True:
            if await self.store.redis.set(self.key, self.token, nx=True, px=int(self.ttl * 1000)):
                return True
            if await self.store.redis.get(self.key) == self.token.encode():
                await self.store.redis.pexpire(self.key, int(self.ttl * 1000))
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    async def release(self) -> None:
        if await self.store.redis.get(self.key) == self.token.encode():
            await self.store.redis.delete(self.key)


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


def _fail(error: str) -> Any:
    def change(doc: dict[str, Any]) -> None:
        doc["status"] = "failed"
        doc["error"] = error

    return change


async def task_opened(store: Store, doc: dict[str, Any]) -> None:
    """Queue the task's training jobs (idempotent: job ids are fixed)."""
    chain_id = doc["chain_task_id"]
    for n in range(int(doc.get("trainers", 2))):
        await store.enqueue_job(
            "trainer", f"{chain_id}:train:{n}", {"task": doc["id"], "chain_task": str(chain_id), "kind": "train"}
        )


async def relay_one(chain: Chain, store: Store, ipfs: IpfsClient, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
    task_id = fields[b"task"].decode()
    doc = await store.task(task_id)
    if doc is None or doc.get("chain_task_id") is not None or doc["status"] == "failed":
        await store.finish_entry(f"{P}relay", RELAY_GROUP, entry_id)
        return
    # The spec in its canonical form, stored by the CID the task names on chain.
    spec_cid = str(ipfs.add_bytes(TaskSpec.model_validate(doc["spec"]).to_json(), 1))
    if doc.get("spec_cid") != spec_cid:
        doc = await store.update_task(task_id, lambda d: d.update(spec_cid=spec_cid)) or doc
    p = doc["permit"]
    if "create" not in doc.get("raw", {}):
        next_nonce = int(await chain.token.functions.nonces(p["owner"]).call())
        if next_nonce != p["nonce"]:
            await store.update_task(
                task_id, _fail(f"permit nonce {p['nonce']} is not the owner's next nonce ({next_nonce})")
            )
            await store.finish_entry(f"{P}relay", RELAY_GROUP, entry_id)
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
        await store.update_task(task_id, _fail(str(exc)))
        await store.finish_entry(f"{P}relay", RELAY_GROUP, entry_id)
        return
    created = chain.tasks.events.TaskCreated().process_receipt(receipt, errors=DISCARD)
    chain_task_id = int(created[0]["args"]["taskId"])
    await store.link_chain_id(task_id, chain_task_id)

    def opened(d: dict[str, Any]) -> None:
        d["chain_task_id"] = chain_task_id
        if d["status"] == "pending_chain":
            d["status"] = "open"

    doc = await store.update_task(task_id, opened)
    await store.finish_entry(f"{P}relay", RELAY_GROUP, entry_id)
    if doc is not None:
        await task_opened(store, doc)
    log.info(
        "task_created", task=task_id, chain_task=chain_task_id, tx=doc["transactions"].get("create") if doc else None
    )


async def relayer_loop(chain: Chain, store: Store, ipfs: IpfsClient, consumer: str) -> None:
    """Create queued tasks on chain. Entries this instance read but did not finish (a restart) come
    first; an RPC failure leaves the entry pending and retries it with backoff."""
    backlog = True
    backoff = 0.5
    while True:
        try:
            got = await store.redis.xreadgroup(
                RELAY_GROUP, consumer, {f"{P}relay": "0" if backlog else ">"}, count=10, block=None if backlog else 1000
            )
            entries = got[0][1] if got else []
            if backlog and not entries:
                backlog = False
                continue
            for entry_id, fields in entries:
                await relay_one(chain, store, ipfs, entry_id, fields)
            backoff = 0.5
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the RPC or Redis is down: wait and retry, never die
            log.warning("relayer_retry", error=str(exc), retry_in=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            backlog = True


# ---------------------------------------------------------------------- the follower


async def apply_event(chain: Chain, store: Store, name: str, args: dict[str, Any], tx: str) -> None:
    doc = await store.task_by_chain_id(int(args["taskId"]))
    if doc is None:
        return  # a task this coordinator does not track (import it to track it)
    task_id = doc["id"]
    if name == "TaskCreated":
        if doc["status"] == "pending_chain":
            doc = await store.update_task(task_id, lambda d: d.update(status="open"))
        if doc is not None:
            await task_opened(store, doc)
    elif name == "ModelSubmitted":
        submission = int(args["submissionId"])

        def submitted(d: dict[str, Any]) -> None:
            subs = d["submissions"]
            while len(subs) <= submission:
                subs.append(None)
            subs[submission] = {
                "trainer": args["trainer"],
                "model_cid": args["modelCid"],
                "claimed_score": int(args["claimedScore"]),
                "median": 0,
                "votes": 0,
                "tx": tx,
            }
            if d["status"] == "open":
                d["status"] = "training"

        await store.update_task(task_id, submitted)
    elif name == "TestSetRevealed":
        doc = await store.update_task(task_id, lambda d: d.update(status="validating"))
        if doc is not None:
            for n in range(int(doc["validations_required"])):
                await store.enqueue_job(
                    "validator",
                    f"{doc['chain_task_id']}:validate:{n}",
                    {"task": task_id, "chain_task": str(doc["chain_task_id"]), "kind": "validate"},
                )
    elif name == "Validated":
        vote = {
            "submission": int(args["submissionId"]),
            "validator": args["validator"],
            "score": int(args["score"]),
            "tx": tx,
        }

        def voted(d: dict[str, Any]) -> None:
            if not any(
                v["submission"] == vote["submission"] and v["validator"] == vote["validator"] for v in d["votes"]
            ):
                d["votes"].append(vote)
                sub = d["submissions"][vote["submission"]] if vote["submission"] < len(d["submissions"]) else None
                if sub is not None:
                    sub["votes"] += 1

        await store.update_task(task_id, voted)
    elif name == "TaskAccepted":
        model_id = int(args["modelId"])

        def accepted(d: dict[str, Any]) -> None:
            d["status"] = "accepted"
            d["model_id"] = model_id
            d["transactions"]["finalize"] = tx

        await store.update_task(task_id, accepted)
    elif name == "TaskFailed":
        forfeited = int(args["forfeited"])

        def failed(d: dict[str, Any]) -> None:
            d["status"] = "expired" if forfeited else "failed"
            d["error"] = (
                "the test set was never revealed: the escrow went to the trainers"
                if forfeited
                else "no submission reached the minimum score with a quorum of validations"
            )
            d["transactions"]["finalize"] = tx

        await store.update_task(task_id, failed)


async def follow(chain: Chain, store: Store, confirmations: int, chunk: int = 2000) -> int:
    """Apply TrainingTasks events from the checkpoint up to the head less `confirmations`; returns the
    new checkpoint. Every change is idempotent, so re-applying a range after a crash or a shallow
    reorg (within `confirmations`) is harmless."""
    head = int(await chain.w3.eth.block_number) - confirmations
    start = await store.checkpoint()
    start = (chain.deployment.block - 1) if start is None else start
    topics = {
        bytes(event_abi_to_log_topic(e)): e["name"]
        for e in chain.tasks.abi
        if e.get("type") == "event" and e["name"] in EVENTS
    }
    while start < head:
        end = min(head, start + chunk)
        logs = await chain.w3.eth.get_logs({"address": chain.tasks.address, "fromBlock": start + 1, "toBlock": end})
        for entry in logs:
            name = topics.get(bytes(entry["topics"][0])) if entry["topics"] else None
            if name is None:
                continue
            decoded = getattr(chain.tasks.events, name)().process_log(entry)
            await apply_event(chain, store, name, dict(decoded["args"]), "0x" + bytes(entry["transactionHash"]).hex())
        await store.set_checkpoint(end)
        start = end
    return start


# ---------------------------------------------------------------------- the keeper


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
    """Reveal the test sets this coordinator holds once the submission deadline passed; finalize tasks
    whose validations are complete or whose validation deadline passed. Deadlines are the chain's
    (the latest block's timestamp), as the contract sees them."""
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
            log.warning("keeper", task=doc["id"], error=str(exc))
            # The journaled transaction reverted (e.g. someone else revealed or finalized first): forget it
            # so the next pass decides afresh from the chain's state.
            await store.update_task(doc["id"], _forget_journal)


def _forget_journal(doc: dict[str, Any]) -> None:
    for name in ("reveal", "finalize"):
        doc.get("raw", {}).pop(name, None)
