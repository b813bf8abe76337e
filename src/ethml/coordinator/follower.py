"""The event follower: TrainingTasks events, from the checkpoint up to the head, into task documents
and job queues. Every change is idempotent, so re-applying a range after a crash or a shallow reorg
(within `confirmations`) is harmless. It runs on the leader only (`leader`)."""

from __future__ import annotations

from typing import Any

from eth_utils.abi import event_abi_to_log_topic

from ethml.coordinator.chain import Chain
from ethml.coordinator.store import Store

EVENTS = ("TaskCreated", "ModelSubmitted", "TestSetRevealed", "Validated", "TaskAccepted", "TaskFailed")


async def task_opened(store: Store, doc: dict[str, Any]) -> None:
    """Queue the task's training jobs (idempotent: job ids are fixed)."""
    chain_id = doc["chain_task_id"]
    for n in range(int(doc.get("trainers", 2))):
        await store.enqueue_job(
            "trainer", f"{chain_id}:train:{n}", {"task": doc["id"], "chain_task": str(chain_id), "kind": "train"}
        )


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
    new checkpoint."""
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


async def replay_task(chain: Chain, store: Store, chain_task_id: int) -> None:
    """Apply one task's whole history (an imported task: its events may be older than the checkpoint)."""
    for name in EVENTS:
        event = getattr(chain.tasks.events, name)()
        logs = await event.get_logs(from_block=chain.deployment.block, argument_filters={"taskId": chain_task_id})
        for entry in logs:
            await apply_event(chain, store, name, dict(entry["args"]), "0x" + bytes(entry["transactionHash"]).hex())
