"""The event follower: TrainingTasks events, from the checkpoint up to the head, into task documents
and job queues. Every change is idempotent, so re-applying a range after a crash or a shallow reorg
(within `confirmations`) is harmless. It runs on the leader only (`leader`).

Jobs: a task's training jobs are queued when it opens (any staked trainer may take them); a
validation job is queued for each validator the draw seats, addressed to that validator (only it may
vote in its seat), with the id `<task>:validate:<n>`, n being the seat plus 9 for each earlier draw."""

from __future__ import annotations

from typing import Any, NamedTuple

from eth_utils.abi import event_abi_to_log_topic
from web3.exceptions import Web3RPCError

from ethml.coordinator.chain import Chain
from ethml.coordinator.lease import check_held
from ethml.coordinator.store import Store
from ethml.training.onchain import BONDS, REGISTRATIONS, STATUSES, TaskError, read_struct

EVENTS = (
    "TaskCreated",
    "SubmissionCommitted",
    "SubmissionRevealed",
    "RevealedElsewhereFirst",
    "TestSetRevealed",
    "DrawFixed",
    "ValidatorDrawn",
    "ScoresCommitted",
    "ScoresRevealed",
    "NoShow",
    "BondSettled",
    "TaskSettled",
    "ModelRegistered",
    "RegistrationSkipped",
)
SEATS_PER_DRAW = 9


def deadlines_of(created: Any) -> dict[str, int]:
    """The deadlines a TaskCreated event carries, as the task document keeps them."""
    return {
        "submit_deadline": int(created["submitDeadline"]),
        "reveal_deadline": int(created["revealDeadline"]),
        "test_deadline": int(created["testDeadline"]),
    }


async def task_opened(store: Store, doc: dict[str, Any]) -> None:
    """Queue the task's training jobs (idempotent: job ids are fixed)."""
    chain_id = doc["chain_task_id"]
    for n in range(int(doc.get("trainers", 2))):
        await store.enqueue_job(
            "trainer", f"{chain_id}:train:{n}", {"task": doc["id"], "chain_task": str(chain_id), "kind": "train"}
        )


def _submission(d: dict[str, Any], index: int) -> dict[str, Any]:
    subs = d["submissions"]
    while len(subs) <= index:
        subs.append(None)
    if subs[index] is None:
        subs[index] = {"trainer": "", "revealed": False, "model_cid": None, "claimed_score": None, "score": None}
        subs[index]["bond"] = "locked"
    entry: dict[str, Any] = subs[index]
    return entry


async def _round_at(chain: Chain, chain_task_id: int, block: int) -> int | None:
    """The task's round as the chain had it after `block`: the draw of the ValidatorDrawn events in that
    block (drawPanel counts the round before it seats anyone, and one block holds one draw of a task).
    None when the node lacks that block's state (not an archive node, an old block of a replay)."""
    try:
        task = await read_struct(chain.tasks, "getTask", chain_task_id, block=block)
    except (Web3RPCError, TaskError):
        return None
    return int(task["round"]) or None


def _draw_of(doc: dict[str, Any], block: int | None) -> int:
    """The draw a ValidatorDrawn event in `block` belongs to, when the chain's state at `block` is gone
    (`_round_at`): the last draw whose draw block is before `block` (a panel is drawn after its draw
    block, and the next draw is fixed after that panel), as the document recorded the draws. Not the
    document's newest draw: a replay of the task's history applies an earlier draw's seats after the
    follower applied a later draw, and would queue them under the later draw's job ids, taking those ids
    from the validators that draw seats. Without the draws' blocks (no block given, or draws the document
    recorded before it kept them), the newest draw."""
    if block is not None:
        rounds = [int(r) for r, fixed in (doc.get("draw_blocks") or {}).items() if int(fixed) < block]
        if rounds:
            return max(rounds)
    return int(doc.get("draw") or 1)


def _seat(d: dict[str, Any], seat: int, validator: str) -> dict[str, Any] | None:
    """The panel entry of `validator` in `seat` (its latest draw)."""
    entry: dict[str, Any]
    for entry in reversed(d.setdefault("panel", [])):
        if entry["seat"] == seat and entry["validator"] == validator:
            return entry
    return None


#: The statuses a revealed test set moves on from (settled and failed tasks stay as they are).
BEFORE_VALIDATING = ("pending_chain", "open", "training")


async def apply_event(
    chain: Chain, store: Store, name: str, args: dict[str, Any], tx: str, block: int | None = None
) -> None:
    """One TrainingTasks event (`name`, its `args`, its transaction and block) applied to the document that
    tracks its task."""
    doc = await store.task_by_chain_id(int(args["taskId"]))
    if doc is None:
        return  # a task this coordinator does not track (import it to track it)
    task_id = doc["id"]
    if doc.get("chain_task_id") is None:  # linked, the document not updated yet (a relayer's claim)

        def claimed(d: dict[str, Any]) -> None:
            d["chain_task_id"] = int(args["taskId"])

        doc = await store.update_task(task_id, claimed) or doc
    if name == "TaskCreated":

        def created(d: dict[str, Any]) -> None:
            d.update(deadlines_of(args))
            d["transactions"]["create"] = tx  # the one that created it, whoever sent it
            if d["status"] == "pending_chain":
                d["status"] = "open"

        doc = await store.update_task(task_id, created)
        if doc is not None:
            await task_opened(store, doc)
    elif name == "SubmissionCommitted":

        def committed(d: dict[str, Any]) -> None:
            sub = _submission(d, int(args["submissionId"]))
            sub.update(trainer=args["trainer"], tx=tx)
            if d["status"] == "open":
                d["status"] = "training"

        await store.update_task(task_id, committed)
    elif name == "SubmissionRevealed":

        def revealed(d: dict[str, Any]) -> None:
            sub = _submission(d, int(args["submissionId"]))
            sub.update(trainer=args["trainer"], revealed=True, model_cid=args["modelCid"])
            sub["claimed_score"] = int(args["claim"])

        await store.update_task(task_id, revealed)
    elif name == "RevealedElsewhereFirst":
        other = int(args["otherTaskId"])
        await store.update_task(
            task_id, lambda d: _submission(d, int(args["submissionId"])).update(revealed_elsewhere=other)
        )
    elif name == "TestSetRevealed":
        # Forward only, as every status change here: a replay may apply an old event after the follower
        # (or another replay) applied a newer one.
        await store.update_task(
            task_id, lambda d: d.update(status="validating") if d["status"] in BEFORE_VALIDATING else None
        )
    elif name == "DrawFixed":
        draw, draw_block = int(args["round"]), int(args["drawBlock"])

        def fixed(d: dict[str, Any]) -> None:
            d["draw"] = max(int(d.get("draw") or 0), draw)
            blocks = d.setdefault("draw_blocks", {})  # a draw fixed anew (its block's hash gone) keeps its first
            blocks[str(draw)] = min(int(blocks.get(str(draw), draw_block)), draw_block)

        await store.update_task(task_id, fixed)
    elif name == "ValidatorDrawn":
        seat, validator = int(args["seat"]), args["validator"]
        draw = (block is not None and await _round_at(chain, int(args["taskId"]), block)) or _draw_of(doc, block)

        # Drawn with replacement: a validator drawn k times holds k seats and casts one ballot, so it
        # gets one job (at its first seat of the panel it sits on).
        first_seat = [True]

        def drawn(d: dict[str, Any]) -> None:
            if _seat(d, seat, validator) is None:
                first_seat[0] = not any(
                    e["validator"] == validator and e["state"] in ("drawn", "committed", "revealed")
                    for e in d.setdefault("panel", [])
                )
                d["panel"].append({"seat": seat, "validator": validator, "draw": draw, "state": "drawn"})

        doc = await store.update_task(task_id, drawn)
        if doc is not None and first_seat[0]:
            chain_task = str(doc["chain_task_id"])
            job = {"task": task_id, "chain_task": chain_task, "kind": "validate", "address": validator}
            await store.enqueue_job("validator", f"{chain_task}:validate:{(draw - 1) * SEATS_PER_DRAW + seat}", job)
    elif name in ("ScoresCommitted", "ScoresRevealed"):
        seat, validator = int(args["seat"]), args["validator"]

        def voted(d: dict[str, Any]) -> None:
            # One ballot for every seat the validator holds on this panel (the event names its first).
            if _seat(d, seat, validator) is None:
                return
            for entry in d["panel"]:
                if entry["validator"] != validator or entry["state"] not in ("drawn", "committed"):
                    continue
                if name == "ScoresCommitted":
                    entry["state"] = "committed"
                    continue
                entry.update(state="revealed", unusable=bool(args["unusable"]), tx=tx)
                entry["scores"] = [int(v) for v in args["scores"]]

        await store.update_task(task_id, voted)
    elif name == "NoShow":

        def replaced(d: dict[str, Any]) -> None:
            for entry in d.get("panel", []):
                if entry["validator"] == args["validator"] and entry["state"] == "drawn":
                    entry["state"] = "replaced"

        await store.update_task(task_id, replaced)
    elif name == "BondSettled":
        await store.update_task(
            task_id, lambda d: _submission(d, int(args["submissionId"])).update(bond=BONDS[int(args["bond"])])
        )
    elif name == "TaskSettled":
        status = STATUSES[int(args["status"])]
        outcome = await _settlement(chain, int(args["taskId"]), len(doc.get("submissions", [])), block)
        scores = outcome.scores

        def settled(d: dict[str, Any]) -> None:
            d["status"] = status
            d["transactions"]["finalize"] = tx
            # The registration the same transaction made (its event follows this one): applied with the status,
            # so a task never reads accepted without the model it registered.
            if outcome.registration != "none":
                d["registration"] = outcome.registration
            if outcome.registration == "registered":
                d["model_id"] = outcome.model_id
            for i, (score, undecided) in enumerate(scores):
                if score is not None and i < len(d["submissions"]) and d["submissions"][i] is not None:
                    d["submissions"][i].update(score=score, undecided=undecided)
            if status == "abandoned":
                d["error"] = (
                    "the test set was never revealed: the earliest submission the panel verified on the holdout "
                    "was paid the trainers' part (the requester refunded if none)"
                )
            elif status == "unusable":
                d["error"] = (
                    "the panel found the test set unusable: the earliest submission it verified on the holdout "
                    "was paid the trainers' part (the requester refunded if none)"
                )
            elif status == "rejected":
                d["error"] = "no submission reached the minimum score (or its claim) by the panel's majority"
            elif status == "empty":
                d["error"] = "no submission was revealed"
            elif status == "undecided":
                d["error"] = (
                    "no submission was accepted and the panel reached no clear majority on at least one: "
                    "bonds released, the requester refunded"
                )

        await store.update_task(task_id, settled)
        # The link was read before the RPC above: if a posted task took it over meanwhile from the import,
        # it marked the import failed, and the settlement just overwrote that. Mark it failed again, on
        # every application of the event: one cut short here is applied again from the checkpoint, when
        # the link names the posted task already.
        await store.finish_takeover(int(args["taskId"]))
    elif name == "ModelRegistered":
        model_id = int(args["modelId"])
        await store.update_task(task_id, lambda d: d.update(model_id=model_id, registration="registered"))
    elif name == "RegistrationSkipped":
        state = REGISTRATIONS[int(args["registration"])]
        await store.update_task(task_id, lambda d: d.update(registration=state))


class Settlement(NamedTuple):
    """What a task's settlement recorded: each submission's decided score (`_settlement`), and the model
    registration it made (REGISTRATIONS; the model's id when registered, else 0)."""

    scores: list[tuple[int | None, bool]]
    registration: str
    model_id: int


async def _settlement(chain: Chain, chain_task: int, count: int, block: int | None = None) -> Settlement:
    """The task's settlement as the chain had it after `block` (the latest state where the node lacks that
    block's, or without one): (the panel's decided score, whether it is undecided) of each submission, a
    revealed one's score as the settlement recorded it, undecided when no clear majority agreed on it
    (recorded 0 with its bond released, as a decided 0 forfeits it); and the registration of the accepted
    model. Read at the settlement's block, a replay applying an old settlement does not take a later
    registration (a deferred one's retry) for the settlement's own."""
    at = block
    try:
        task = await read_struct(chain.tasks, "getTask", chain_task, block=at)
    except (Web3RPCError, TaskError):
        if at is None:
            raise
        at = None  # not an archive node: the latest state (the events that follow set what changed since)
        task = await read_struct(chain.tasks, "getTask", chain_task)
    registration = REGISTRATIONS[int(task["registration"])]
    model_id = int(task["modelId"]) if registration == "registered" else 0
    scores: list[tuple[int | None, bool]] = []
    judged = STATUSES[int(task["status"])] not in ("none", "open", "empty")
    for i in range(max(count, int(task["submissions"]))):
        s = await read_struct(chain.tasks, "getSubmission", chain_task, i, block=at)
        if not (judged and s["revealed"]):
            scores.append((None, False))
            continue
        undecided = int(s["score"]) == 0 and BONDS[int(s["bond"])] == "released"
        scores.append((None if undecided else int(s["score"]), undecided))
    return Settlement(scores, registration, model_id)


def _topics(chain: Chain) -> dict[bytes, str]:
    """The followed events by their topic 0."""
    return {
        bytes(event_abi_to_log_topic(e)): e["name"]
        for e in chain.tasks.abi
        if e.get("type") == "event" and e["name"] in EVENTS
    }


async def _apply_logs(chain: Chain, store: Store, topics: dict[bytes, str], logs: list[Any]) -> None:
    """Apply the followed events of `logs`, in order. Before each, the leases the task holds are checked (the
    leader's, for the follower): a pass that lost its lease stops at the next event even where the cancel sent
    to it has not landed (its Redis commands may drop one), rather than apply the rest beside the new leader."""
    for entry in logs:
        name = topics.get(bytes(entry["topics"][0])) if entry["topics"] else None
        if name is None:
            continue
        check_held()
        decoded = getattr(chain.tasks.events, name)().process_log(entry)
        tx = "0x" + bytes(entry["transactionHash"]).hex()
        await apply_event(chain, store, name, dict(decoded["args"]), tx, int(entry["blockNumber"]))


async def follow(chain: Chain, store: Store, confirmations: int, chunk: int | None = None) -> int:
    """Apply TrainingTasks events from the checkpoint up to the head less `confirmations`; returns the
    new checkpoint."""
    head = int(await chain.w3.eth.block_number) - confirmations
    start = await store.checkpoint()
    start = (chain.deployment.block - 1) if start is None else start
    topics = _topics(chain)
    while start < head:
        end = min(head, start + (chunk or LOG_CHUNK))
        logs = await chain.w3.eth.get_logs({"address": chain.tasks.address, "fromBlock": start + 1, "toBlock": end})
        await _apply_logs(chain, store, topics, logs)
        check_held()
        await store.set_checkpoint(end)
        start = end
    return start


async def replay_task(
    chain: Chain,
    store: Store,
    chain_task_id: int,
    from_block: int,
    chunk: int | None = None,
    *,
    at_least: int | None = None,
) -> int:
    """Apply one task's whole history in chain order (an imported task, or one a relayer found created by
    another transaction: its events may be older than the checkpoint), from `from_block` (its creation's
    block, `creation_block`) to the head less `--confirmations` (as the follower reads), or to `at_least`
    (the follower's checkpoint) where that is further and the node has it: a follower run with fewer
    confirmations than this instance applied those blocks already. `chunk` (LOG_CHUNK) blocks per query;
    returns the block it read to. Every followed event carries the task id as its first topic."""
    topics = _topics(chain)
    task_topic = _task_topic(chain_task_id)
    start = from_block
    head = await chain.confirmed_head()
    latest = head + chain.confirmations
    if at_least is not None and head < at_least <= latest:
        head = at_least
    while start <= head:
        end = min(head, start + (chunk or LOG_CHUNK) - 1)
        logs = await chain.w3.eth.get_logs(
            {"address": chain.tasks.address, "fromBlock": start, "toBlock": end, "topics": [None, task_topic]}
        )
        await _apply_logs(chain, store, topics, sorted(logs, key=lambda e: (int(e["blockNumber"]), int(e["logIndex"]))))
        start = end + 1
    return head


def _task_topic(chain_task_id: int) -> str:
    return "0x" + chain_task_id.to_bytes(32, "big").hex()


#: Blocks per log query of the follower, a replay and the relayer's searches: what nodes that limit a
#: query's range commonly allow.
LOG_CHUNK = 2000

#: How far back `creation_block` searches, in queries of `chunk` blocks, on a node that refuses one query
#: over the whole chain: 50 of 2,000 blocks, about two weeks of Ethereum's 12 s blocks.
SCAN_CHUNKS = 50


class CreationNotFound(Exception):
    """The node's logs do not show the task's creation (`retry`: they may once they catch up)."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


async def creation_block(
    chain: Chain, chain_task_id: int, chunk: int | None = None, max_chunks: int | None = None
) -> int:
    """The block of the task's TaskCreated: one query from the deployment's block to the head or, on a
    node that refuses it (a limited range or result count), `chunk` (LOG_CHUNK) blocks per query from the
    head back, at most `max_chunks` (SCAN_CHUNKS) queries. CreationNotFound when the logs do not show it;
    RPC failures of the chunked queries are raised."""
    created_topic = "0x" + next(t for t, name in _topics(chain).items() if name == "TaskCreated").hex()
    query = {"address": chain.tasks.address, "topics": [created_topic, _task_topic(chain_task_id)]}
    try:
        logs = await chain.w3.eth.get_logs({**query, "fromBlock": chain.deployment.block, "toBlock": "latest"})  # type: ignore[typeddict-item]
    except Web3RPCError:  # newest first: a task is imported soon after its creation more often than not
        logs, end = [], int(await chain.w3.eth.block_number)
        max_chunks = SCAN_CHUNKS if max_chunks is None else max_chunks
        chunk = chunk or LOG_CHUNK
        for _ in range(max_chunks):
            if end < chain.deployment.block:
                break
            start = max(chain.deployment.block, end - chunk + 1)
            logs = await chain.w3.eth.get_logs({**query, "fromBlock": start, "toBlock": end})  # type: ignore[typeddict-item]
            if logs:
                return int(logs[0]["blockNumber"])
            end = start - 1
        else:
            raise CreationNotFound(
                f"the node refused one log query over the whole chain, and chain task {chain_task_id}'s creation "
                f"is not in its newest {max_chunks * chunk:,} blocks: import it through a node that answers log "
                "queries over longer ranges",
                retry=False,
            ) from None
    if not logs:
        raise CreationNotFound(
            f"the node's logs do not show chain task {chain_task_id}'s creation yet (its state does); retry shortly",
            retry=True,
        )
    return int(logs[0]["blockNumber"])
