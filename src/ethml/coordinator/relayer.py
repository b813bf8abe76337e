"""The relayer: creates the tasks posted over the API on chain (`createTaskFor`: the terms exactly as
their requester signed them, the signature, the optional permit), one entry of the `relay` stream at a
time, with the relayer key's journaled transactions (`chain.send_raw`). It cannot change a term: the
contract checks the requester's signature of every one of them.

Every instance with the relayer on reads the stream in the group `relayers` under a consumer name of
its own (new on every start). While it works on an entry it keeps it fresh; an entry left idle for
`relay_timeout` (its instance was killed, or lost Redis) is taken over by a live relayer with
XAUTOCLAIM. Taking over never creates a task twice: the transaction is journaled in the task document
before it is sent and re-sent as is by whoever relays the entry next, decided under the relayer lock.

Anyone holding the signed terms may create the task (the requester itself, another relayer, a copy of the
relayer's own call sent ahead of it with a higher fee). When a creation is refused or reverts and the
terms' nonce is used on chain, the relayer looks for the requester's TaskCreated of these terms and, when
it finds one, tracks that task instead of failing the document.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import aiohttp
import structlog
from web3.exceptions import TimeExhausted, Web3RPCError
from web3.logs import DISCARD

from ethml.chain.tx import RECEIPT_SETTLE
from ethml.coordinator import redis_keys as k
from ethml.coordinator.background import stop_helper, stop_if_cancelled
from ethml.coordinator.chain import Cancelled, Chain, GasOverCap, RelayerBusy, SendRefused, fail, send_raw
from ethml.coordinator.follower import LOG_CHUNK, apply_event, deadlines_of, replay_task, task_opened
from ethml.coordinator.store import RELAY_GROUP, Store
from ethml.errors import ChainError, EthmlError, TransactionReverted
from ethml.ipfs import IpfsClient
from ethml.training.onchain import read_struct
from ethml.training.spec import TaskSpec
from ethml.training.terms import Terms, min_score_units

log = structlog.get_logger("ethml.coordinator")


class TermsSpent(EthmlError):
    """The signed terms' nonce is not the requester's next one: it was used, or voided (`useNonce`)."""


#: How long terms whose nonce is ahead of the requester's next wait for the earlier terms (wall-clock
#: seconds from the first relay that found them ahead), and how many may wait at once per API key. Each
#: relay of a waiting entry costs chain calls under the relayer lock: terms that can never be created
#: must neither poll the node until they expire nor crowd out other relays.
NONCE_WAIT_SECONDS = 300
MAX_WAITING = 16


async def _wait_for_nonce(store: Store, waiting: str, task_id: str) -> tuple[float, int]:
    """Record the task among its API key's waiting terms (first seen now, unless seen before); returns
    when it was first seen and how many wait. Members older than twice the wait (left by a crash) go."""
    now = time.time()
    pipe = store.redis.pipeline(transaction=True)
    pipe.zremrangebyscore(waiting, 0, now - 2 * NONCE_WAIT_SECONDS)
    pipe.zadd(waiting, {task_id: now}, nx=True)
    pipe.zscore(waiting, task_id)
    pipe.zcard(waiting)
    pipe.expire(waiting, int(2 * NONCE_WAIT_SECONDS) + 1)
    _pruned, _added, since, count, _ttl = await pipe.execute()
    return float(since), int(count)


class TermsLapsed(EthmlError):
    """The signed terms waited for the requester's earlier nonce to be used, and expired meanwhile; or they
    (or their permit) expire too soon for a creation sent now to be mined before then."""


#: The gas the relayer pays for one creation at most: about twice what `createTaskFor` takes (some 440,000
#: with a permit). A requester's account with code (a contract, or an EOA with an EIP-7702 delegation) has its
#: signature checked on chain by its own `isValidSignature` (ERC-1271), which may burn any amount of gas:
#: terms whose creation would need more are failed before anything is sent, and no transaction of the relayer
#: may use more.
MAX_CREATE_GAS = 1_000_000
#: Seconds the signed terms (and their permit) must still have before them when the creation is signed: a
#: transaction sent closer to its expiry may be mined after it, and revert at the relayer's cost.
EXPIRY_MARGIN = 60


class RelayRefused(EthmlError):
    """The API key the terms were posted with has had too many creations revert this hour: not relayed."""


#: Creations of an API key's tasks that may be mined and revert (at the relayer's cost) within REVERTS_SECONDS
#: before its further tasks fail without being sent, until the hour is over. Every revert the relayer can see
#: coming is refused before anything is sent; those it cannot (the requester voiding its nonce, moving its
#: tokens or allowance away, or code of its account that checks the signature acting differently, between the
#: pre-flight and the block) cost it one creation's gas each, at most MAX_CREATE_GAS. A revert counts from when
#: it is seen mined (while it waits for its confirmations too), unless it came from the terms or permit expiring
#: before the block (the relayer's delay, not the requester's doing: it sends only with EXPIRY_MARGIN left) or
#: the same terms were created by another transaction; a creation that a reorg then lets through takes its mark
#: back.
MAX_REVERTS = 3
REVERTS_SECONDS = 3600
#: Mark a task's revert (ARGV[1] the task, ARGV[2] "pending" until judged, then "counted") in the API key's hash
#: KEYS[1], which expires ARGV[3] s after its first mark; returns how many it holds.
MARK_REVERT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return redis.call('HLEN', KEYS[1])
"""


async def _mark_revert(store: Store, key_name: str, task_id: str, state: str) -> None:
    await store.redis.eval(MARK_REVERT, 1, k.relay_reverts(key_name), task_id, state, REVERTS_SECONDS)


async def _unmark_revert(store: Store, key_name: str, task_id: str) -> None:
    await store.redis.hdel(k.relay_reverts(key_name), task_id)


async def _check_reverts(store: Store, key_name: str) -> None:
    marks = k.relay_reverts(key_name)
    pipe = store.redis.pipeline(transaction=False)
    pipe.hlen(marks)
    pipe.ttl(marks)
    count, ttl = await pipe.execute()
    if int(count) >= MAX_REVERTS:
        raise RelayRefused(
            f"{int(count)} creations of tasks posted with this API key were mined and reverted within the hour (at "
            f"most {MAX_REVERTS}, each at the relayer's cost): its tasks are not relayed for another {max(1, ttl)} s"
        )


async def _expired_by(chain: Chain, block: int, *deadlines: int) -> bool:
    """Whether one of `deadlines` (unix seconds, 0 for none) had passed at `block`."""
    stamp = int((await chain.w3.eth.get_block(block))["timestamp"])
    return any(0 < deadline < stamp for deadline in deadlines)


class RelayAgain(EthmlError):
    """The entry is relayed again (left pending): the transaction that was to use the terms' nonce was
    dropped, or what the node answered does not settle the relay yet."""


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
    if doc is not None and doc.get("replay_from") is not None and doc.get("chain_task_id") is not None:
        # Linked, and its opening or the replay of its history cut short (a crash, an RPC failure).
        if await store.redis.exists(k.importing(int(doc["chain_task_id"]))):
            raise RelayAgain("its import is replaying its history")  # one replay at a time; this entry is its net
        await store.finish_takeover(int(doc["chain_task_id"]))  # a crash may have cut its claim short
        await replay_history(chain, store, task_id, int(doc["chain_task_id"]), int(doc["replay_from"]))
        await store.finish_entry(k.RELAY, RELAY_GROUP, entry_id)
        return
    if doc is None or doc.get("chain_task_id") is not None or doc["status"] == "failed":
        if doc is not None and doc["status"] == "failed":
            await store.release_signed_terms(doc)  # again: a crash may have come between failing and releasing
        await store.finish_entry(k.RELAY, RELAY_GROUP, entry_id)
        return
    # The spec in its canonical form, stored by the CID the terms name (checked equal when posted), so
    # workers and miners can fetch it from this coordinator.
    ipfs.add_bytes(TaskSpec.model_validate(doc["spec"]).to_json(), 1)
    requester, nonce, expiry = doc["requester"], int(doc["nonce"]), int(doc["expiry"])
    permit_deadline = int((doc.get("permit") or {}).get("deadline", 0))
    created_by = str(doc.get("created_by_key") or doc.get("created_by", ""))  # the API key (its name, before)
    waiting = k.nonce_waits(created_by)

    async def terms_unused() -> None:
        """Before a creation is signed (under the relayer lock): the terms' nonce is the requester's next,
        counting the creations still pending (the pending block, as the pre-flight of the send sees it); the
        terms and permit not about to expire; the API key not past its reverts this hour."""
        await _check_reverts(store, created_by)
        nonces = chain.tasks.functions.nonces(requester)
        try:
            next_nonce = int(await nonces.call(block_identifier="pending"))
        except Web3RPCError:  # a node without calls on the pending block
            next_nonce = int(await nonces.call())
        if next_nonce < nonce:  # the requester's earlier terms are not created yet (posted, relayed elsewhere)
            why = f"the signed terms carry nonce {nonce}, but the requester's next is {next_nonce}"
            if int((await chain.w3.eth.get_block("latest"))["timestamp"]) >= expiry:
                raise TermsLapsed(f"{why}, and they expired (at {expiry}) before the requester's earlier terms used it")
            since, count = await _wait_for_nonce(store, waiting, task_id)
            if count > MAX_WAITING:  # TermsLapsed drops it from the waiting set (below)
                raise TermsLapsed(
                    f"{why}, and {count - 1} other terms posted with this API key wait for earlier nonces already (at "
                    f"most {MAX_WAITING}): the requester's earlier terms must be created first; then post these again"
                )
            if time.time() - since >= NONCE_WAIT_SECONDS:
                raise TermsLapsed(
                    f"{why}, still after waiting {NONCE_WAIT_SECONDS} s: the requester's earlier terms must be created "
                    "first (post them, or send them); then post these again"
                )
            raise RelayAgain(
                f"the signed terms carry nonce {nonce} and the requester's next is {next_nonce}: they wait for the "
                "requester's earlier terms"
            )
        if next_nonce != nonce:
            raise TermsSpent(
                f"the signed terms carry nonce {nonce}, but the requester's next is {next_nonce} "
                "(another task used it, or the requester voided it)"
            )
        # Wall-clock time, or the chain's when it is ahead (an idle devnet's latest block may be old).
        moment = max(int(time.time()), int((await chain.w3.eth.get_block("latest"))["timestamp"]))
        for what, until in (("the signed terms expire", expiry), ("their permit expires", permit_deadline)):
            if until and until < moment + EXPIRY_MARGIN:
                raise TermsLapsed(
                    f"{what} at {until}, {until - moment} s from now: too soon for a creation to be mined before "
                    f"then (the relayer sends one only with at least {EXPIRY_MARGIN} s left); sign them again with a "
                    "later expiry"
                )

    call = chain.tasks.functions.createTaskFor(
        _terms(doc).as_tuple(), requester, int(doc["expiry"]), bytes.fromhex(doc["signature"][2:]), _permit(doc)
    )
    try:
        receipt = await send_raw(
            chain, store, call, "createTaskFor", (task_id, "create"), precheck=terms_unused, max_gas=MAX_CREATE_GAS
        )
    except (RelayerBusy, SendRefused, Cancelled, TimeExhausted) as exc:
        # Nothing sent here, or nothing mined yet: relayed again later, while the other entries go on (a
        # transaction journaled before may yet be mined; a refused or cancelled one is signed afresh next time).
        raise RelayAgain(str(exc)) from exc
    except (TransactionReverted, TermsSpent, TermsLapsed, GasOverCap, RelayRefused) as exc:
        await store.redis.zrem(waiting, task_id)
        blamed = False
        if isinstance(exc, TransactionReverted) and exc.block is not None:
            blamed = not await _expired_by(chain, exc.block, expiry, permit_deadline)
            if blamed:  # counted from now, while it waits for its confirmations too
                await _mark_revert(store, created_by, task_id, "pending")
            # A reorg may yet mine it again, and then it need not revert: judged once confirmed.
            await _confirmed(chain, exc.block, "the creation reverted", f" ({exc})", "judged")
        error = str(exc)
        if isinstance(exc, GasOverCap):
            error += (
                " (the requester's account checks the signature with code of its own, as a contract or an EIP-7702 "
                "delegation does, and that code takes too much gas)"
            )
        if not isinstance(exc, (TermsLapsed, RelayRefused)) and await _nonce_used(
            chain, requester, nonce, refused=isinstance(exc, TermsSpent)
        ):
            found = await _created_elsewhere(chain, store, doc)
            if found is None:
                error += "; " + await _unexplained_use(chain, store, doc)
            elif found.holder == task_id:
                await _unmark_revert(store, created_by, task_id)
                await _track_created_elsewhere(chain, store, task_id, found.event)
                await store.finish_entry(k.RELAY, RELAY_GROUP, entry_id)
                return
            elif found.holder is not None:  # the same terms created (by anyone): not the requester's doing
                error += "; " + _tracked_by(found.event, found.holder)
                blamed = False
            else:
                await _event_confirmed(chain, found.event, "failed for it")
                error += (
                    f"; the requester's task {int(found.event['args']['taskId'])} (transaction "
                    f"{found.event['transactionHash'].to_0x_hex()}) was created from other terms with this nonce"
                )
        if blamed:  # at the relayer's cost: counted against the API key for the hour
            await _mark_revert(store, created_by, task_id, "counted")
        else:
            await _unmark_revert(store, created_by, task_id)
        await store.update_task(task_id, fail(error))
        await store.release_signed_terms(doc)
        await store.finish_entry(k.RELAY, RELAY_GROUP, entry_id)
        return
    except ChainError as exc:  # the node refused a call (the relayer's funds, say): this entry later, others now
        raise RelayAgain(str(exc)) from exc
    await store.redis.zrem(waiting, task_id)
    await _unmark_revert(store, created_by, task_id)  # a revert a reorg undid
    created = chain.tasks.events.TaskCreated().process_receipt(receipt, errors=DISCARD)
    args = created[0]["args"]
    chain_task_id = int(args["taskId"])
    block = int(receipt["blockNumber"])
    # Linked only once confirmed: a reorg may yet drop the creation, or mine it again as another task (the
    # id is the contract's counter). Relayed again, the journaled transaction is sent again as is and its
    # receipt read anew, from whichever block holds it then.
    await _confirmed(chain, block, f"created as chain task {chain_task_id}", "", "linked")
    holder = await _claim(store, task_id, chain_task_id, block)
    if holder != task_id:  # another posted task holds the link (same terms posted twice before reposts were refused)
        await store.update_task(task_id, fail(_tracked_by(created[0], holder)))
        await store.release_signed_terms(doc)
        await store.finish_entry(k.RELAY, RELAY_GROUP, entry_id)
        return

    def opened(d: dict[str, Any]) -> None:
        d["chain_task_id"] = chain_task_id
        d.update(deadlines_of(args))
        if d["status"] == "pending_chain":
            d["status"] = "open"

    doc = await store.update_task(task_id, opened)
    if doc is not None:
        await task_opened(store, doc)
    # The follower may have passed the creation before the link (it reads ahead of a receipt's polling, or
    # the link waited for confirmations), and skipped the task's events up to there.
    await replay_history(chain, store, task_id, chain_task_id, block)
    await store.finish_entry(k.RELAY, RELAY_GROUP, entry_id)
    log.info(
        "task_created", task=task_id, chain_task=chain_task_id, tx=doc["transactions"].get("create") if doc else None
    )


async def _nonce_used(chain: Chain, requester: str, nonce: int, *, refused: bool) -> bool:
    """Whether a mined transaction used the terms' nonce. While only a pending one does (what refused the
    creation before it was signed: `refused`), waits for that one to be mined or dropped, up to
    `RECEIPT_SETTLE`; dropped, the entry is to be relayed again (`RelayAgain`)."""
    nonces = chain.tasks.functions.nonces(requester)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + RECEIPT_SETTLE
    while int(await nonces.call()) <= nonce:
        if not refused:
            return False
        try:
            pending = int(await nonces.call(block_identifier="pending"))
        except Web3RPCError:  # a node without calls on the pending block
            return False
        if pending == nonce:
            raise RelayAgain(f"the transaction that used the terms' nonce {nonce} was dropped")
        if pending < nonce or loop.time() > give_up:
            return False
        await asyncio.sleep(1.0)
    return True


class _Found(NamedTuple):
    event: Any  # a TaskCreated of the requester's
    holder: str | None  # the document that tracks it; None: made from other terms, with this nonce


async def _created_elsewhere(chain: Chain, store: Store, doc: dict[str, Any]) -> _Found | None:
    """The requester's TaskCreated event of these signed terms, made by a transaction the relayer did not
    see to its end (the requester or another relayer used the terms, a copy of the relayer's own call was
    mined first, or the relayer's earlier transaction was mined though the node had not shown it), with
    the id of the document that tracks that task now: this one's when it could claim it, else another's;
    failing that, a creation of other terms that used this nonce (holder None); None if there is neither
    (the requester voided the terms with `useNonce`, or the logs do not show it).

    Matched by the terms as the chain stored them (`_same_terms`) and the nonce used in the creation's block
    (`_used_in_block`), whoever sent the creation and however (directly, or through another contract whose
    call data the event does not show): only the requester's signature or call makes a TaskCreated that
    names it. Searched from the block the task was posted at."""
    terms = _terms(doc)
    nonce = int(doc["nonce"])
    held: _Found | None = None
    other: _Found | None = None
    async for entry in _requester_logs(chain, chain.tasks.events.TaskCreated(), doc):
        same = await _same_terms(chain, entry, terms)
        if not same and other is not None:
            continue
        used = await _used_in_block(chain, doc["requester"], nonce, int(entry["blockNumber"]))
        if not same:
            other = _Found(entry, None) if used else None
            continue
        if used is False:
            continue
        await _event_confirmed(chain, entry, "tracked")
        holder = await _claim(store, doc["id"], int(entry["args"]["taskId"]), int(entry["blockNumber"]))
        if holder == doc["id"]:
            return _Found(entry, holder)
        held = held or _Found(entry, holder)  # identical terms signed again may have made another task: look on
    return held or other


async def _claim(store: Store, task_id: str, chain_task_id: int, block: int) -> str:
    """`Store.claim_chain_id` for the chain task created in `block`, the document first marked to replay
    the task's history from there (`replay_from`). From the claim on, the follower applies the task's events
    to the document (and gives it the chain id with the first): a crash before the document is opened
    leaves an entry whose next relay replays the history, the TaskCreated and its jobs included, instead
    of finding the document linked and finishing it. A mark left on a document another one's claim beat is
    never read: the document has no chain id. Without its test set, the document does not take the chain task
    over from an import its requester signed or an admin made."""
    await store.update_task(task_id, lambda d: d.update(replay_from=block))
    return await store.claim_chain_id(task_id, chain_task_id)


async def _confirmed(chain: Chain, block: int, what: str, detail: str, then: str) -> None:
    """`RelayAgain` while `block` (where `what` happened) is less than `--confirmations` blocks deep: a reorg
    may still drop it; `then` says what follows once it is deep enough."""
    if not await chain.confirms(block):
        raise RelayAgain(f"{what} in block {block}{detail}: {then} once {chain.confirmations} blocks confirm it")


async def _event_confirmed(chain: Chain, entry: Any, then: str) -> None:
    """`_confirmed` for one of the requester's events: judged by the event's own block, so no older state of
    the chain is read."""
    detail = f" (transaction {entry['transactionHash'].to_0x_hex()})"
    await _confirmed(chain, int(entry["blockNumber"]), f"the terms' {entry['event']}", detail, then)


def _search_start(chain: Chain, doc: dict[str, Any]) -> int:
    """The block the task was posted at (the deployment's for documents posted before it was kept)."""
    return int(doc.get("posted_block") or chain.deployment.block)


async def _requester_logs(chain: Chain, event: Any, doc: dict[str, Any]) -> AsyncIterator[Any]:
    """The requester's `event` logs from the block the task was posted at to the head, `LOG_CHUNK` blocks
    per query."""
    start = _search_start(chain, doc)
    head = int(await chain.w3.eth.block_number)
    while start <= head:
        end = min(head, start + LOG_CHUNK - 1)
        for entry in await event.get_logs(
            from_block=start, to_block=end, argument_filters={"requester": doc["requester"]}
        ):
            yield entry
        start = end + 1


#: How many relays of an entry find the terms' nonce used with neither its creation nor its voiding in the
#: logs (a node whose logs lag its state) before the task fails.
SEARCH_MISSES = 3


async def _unexplained_use(chain: Chain, store: Store, doc: dict[str, Any]) -> str:
    """Why the terms' nonce is used when no creation of them was found: the requester voided them (its
    NonceUsed event), in words. With no NonceUsed either, the node's logs may lag its state: the entry is
    relayed again (`RelayAgain`) up to `SEARCH_MISSES` times, then the reason says what was not found;
    unless the nonce was used already at the block the task was posted at, which fails it at once."""
    async for entry in _requester_logs(chain, chain.tasks.events.NonceUsed(), doc):
        if int(entry["args"]["nonce"]) == int(doc["nonce"]):
            await _event_confirmed(chain, entry, "failed for it")
            return f"the requester voided these terms (useNonce, transaction {entry['transactionHash'].to_0x_hex()})"
    first = _search_start(chain, doc)
    if doc.get("posted_block") is not None:
        try:
            before = int(await chain.tasks.functions.nonces(doc["requester"]).call(block_identifier=first))
        except Web3RPCError:  # a node without that block's state
            before = None
        if before is not None and before > int(doc["nonce"]):
            return (
                f"the nonce was used by block {first}, before this task was posted here: if these terms created a "
                "task then, import it"
            )
    misses = int(doc.get("search_misses", 0)) + 1
    if misses < SEARCH_MISSES:
        await store.update_task(doc["id"], lambda d: d.update(search_misses=misses))
        raise RelayAgain("the terms' nonce is used, but neither their creation nor their voiding is in the logs yet")
    return f"neither their creation nor their voiding is in the logs from block {first} on"


async def _same_terms(chain: Chain, entry: Any, terms: Terms) -> bool:
    """Whether the task of the TaskCreated `entry` was made from `terms`: its CIDs and reward (from the
    event), its test-set commitment (which carries the requester's fresh salt), score period, panel,
    minimum score and model shape (from the task) and its submit period (the submit deadline less its
    block's time). Only the parameters version and the nonce are not compared: the contract refuses terms
    of another version, and the nonce is not kept."""
    args = entry["args"]
    if (args["datasetCid"], args["specCid"], int(args["reward"])) != (terms.dataset_cid, terms.spec_cid, terms.reward):
        return False
    task = await read_struct(chain.tasks, "getTask", int(args["taskId"]))
    block = await chain.w3.eth.get_block(entry["blockNumber"])
    stored = (
        bytes(task["testSetCommitment"]),
        int(task["scorePeriod"]),
        int(task["validations"]),
        int(task["minScore"]),
        int(task["kind"]),
        int(task["decimals"]),
        int(task["featureCount"]),
        int(args["submitDeadline"]) - int(block["timestamp"]),
    )
    signed = (
        bytes(terms.test_set_commitment),
        terms.score_period,
        terms.validations,
        terms.min_score,
        terms.kind,
        terms.decimals,
        terms.feature_count,
        terms.submit_period,
    )
    return stored == signed


async def _used_in_block(chain: Chain, requester: str, nonce: int, block: int) -> bool | None:
    """Whether the terms' nonce was used in `block`: the requester's nonce was at most `nonce` before it
    and is above it after (a task the requester made with `createTask` uses none; other terms of the same
    content use another nonce). None when the node lacks the state of those blocks (not an archive node,
    an old block): for terms that match, the terms then decide alone."""
    nonces = chain.tasks.functions.nonces(requester)
    try:
        before = int(await nonces.call(block_identifier=block - 1))
        after = int(await nonces.call(block_identifier=block))
    except Web3RPCError as exc:
        log.debug("nonce_history_unavailable", block=block, error=str(exc))
        return None
    return before <= nonce < after


def _tracked_by(event: Any, holder: str) -> str:
    return (
        f"these signed terms were created on chain as task {int(event['args']['taskId'])} "
        f"(transaction {event['transactionHash'].to_0x_hex()}), which task {holder} tracks"
    )


async def _track_created_elsewhere(chain: Chain, store: Store, task_id: str, event: Any) -> None:
    """The document tracks the task another transaction created, with that transaction and the task's
    history so far (the follower skipped its events while no document tracked it). `replay_from` marks
    a replay not finished yet: a relay of the entry after a crash or an RPC failure finishes it."""
    chain_task_id = int(event["args"]["taskId"])
    tx_hash = event["transactionHash"].to_0x_hex()
    block = int(event["blockNumber"])

    def linked(d: dict[str, Any]) -> None:
        d["chain_task_id"] = chain_task_id
        d["transactions"]["create"] = tx_hash  # replay_from: marked at the claim (`_claim`)

    await store.update_task(task_id, linked)
    log.warning(
        "task_created_elsewhere", task=task_id, chain_task=chain_task_id, tx=tx_hash, sender=event["args"]["sender"]
    )
    # The event in hand opens the task and queues its jobs, whatever the replay's node answers.
    await apply_event(chain, store, "TaskCreated", dict(event["args"]), tx_hash, block)
    await replay_history(chain, store, task_id, chain_task_id, block)


async def replay_history(chain: Chain, store: Store, task_id: str, chain_task_id: int, from_block: int) -> None:
    """The task's history from `from_block` replayed, then `replay_from` dropped. A node that fails or
    refuses a query, or is behind, leaves the entry to be relayed again (the others go on meanwhile).
    Called once the document is linked: from then on the follower applies the task's events itself, so
    the replay must reach the follower's checkpoint as it is now (a node behind the follower's falls short)."""
    checkpoint = await store.checkpoint()
    try:
        head = await replay_task(chain, store, chain_task_id, from_block, at_least=checkpoint)
    except (Web3RPCError, OSError, aiohttp.ClientError) as exc:
        raise RelayAgain(f"the replay of chain task {chain_task_id} from block {from_block} failed: {exc}") from exc
    if head < from_block:  # a node behind the one that showed the creation: the next relay of the entry replays
        less = f" less {chain.confirmations} confirmations" if chain.confirmations else ""
        raise RelayAgain(f"the node's head{less}, {head}, is behind the creation's block {from_block}")
    if checkpoint is not None and head < checkpoint:  # the follower skipped the task's events up to there
        raise RelayAgain(f"the replay read to block {head}, short of the follower's checkpoint {checkpoint}")
    doc = await store.task(task_id)
    if doc is not None and doc.get("submit_deadline") is None:  # never opened: its TaskCreated not read yet
        raise RelayAgain(
            f"the node's logs from block {from_block} do not show chain task {chain_task_id}'s creation yet"
        )
    await store.update_task(task_id, lambda d: d.pop("replay_from", None))


#: Relay entries taken per read: one, so an instance holds only the entry it works on, and the next one
#: goes to an instance that is free (a relay can wait minutes on a pending nonce or a long replay).
READ_COUNT = 1


class Relayer:
    def __init__(self, chain: Chain, store: Store, ipfs: IpfsClient, consumer: str, *, idle_timeout: float) -> None:
        self.chain, self.store, self.ipfs, self.consumer = chain, store, ipfs, consumer
        self.idle_timeout = idle_timeout
        self._cursor = "0-0"  # where the next XAUTOCLAIM goes on scanning the pending entries

    async def run(self) -> None:
        """Relay entries: taken over from dead instances first, then this consumer's own unfinished ones
        (after a failure), then new ones. An RPC failure leaves the entry pending and retries it with
        backoff. An entry to be relayed again (`RelayAgain`) is left pending and idle while the others go
        on; it is reclaimed once idle for `idle_timeout`."""
        own = True
        backoff = 0.5
        while True:
            stop_if_cancelled()
            try:
                entries = await self._reclaim()
                if not entries:
                    entries = await self._read(own)
                    if own:  # once per failure: an entry parked by RelayAgain waits for its reclaim
                        own = False
                        if not entries:
                            continue
                for entry_id, fields in entries:  # READ_COUNT: one
                    try:
                        async with self._fresh(entry_id):
                            await relay_one(self.chain, self.store, self.ipfs, entry_id, fields)
                    except RelayAgain as exc:  # this entry only: it stays pending, idle, and is reclaimed later
                        log.info("relay_again", entry=entry_id.decode(), error=str(exc), retry_in=self.idle_timeout)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the RPC or Redis is down: wait and retry, never die
                log.warning("relayer_retry", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                own = True

    async def _reclaim(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Entries left idle past the timeout (by a killed instance, or parked by RelayAgain), now this one's.
        Redis scans at most ten pending entries per claimed one in a call: the scan goes on from the cursor it
        returns, so parked entries that are not idle yet cannot hide the ones behind them."""
        reply = await self.store.redis.xautoclaim(
            k.RELAY, RELAY_GROUP, self.consumer, int(self.idle_timeout * 1000), start_id=self._cursor, count=READ_COUNT
        )
        cursor = reply[0]
        self._cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
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
            RELAY_GROUP, self.consumer, {k.RELAY: "0" if own else ">"}, count=READ_COUNT, block=None if own else 1000
        )
        return [(entry_id, fields) for entry_id, fields in (got[0][1] if got else []) if fields]

    @contextlib.asynccontextmanager
    async def _fresh(self, entry_id: bytes) -> AsyncIterator[None]:
        """Keep the entry's idle time low while it is worked on, so no one takes over a live relay."""

        async def touch() -> None:
            while True:
                stop_if_cancelled()
                await asyncio.sleep(self.idle_timeout / 3)
                try:
                    await self.store.touch_entries(k.RELAY, RELAY_GROUP, self.consumer, [entry_id])
                except Exception as exc:  # noqa: BLE001 - Redis blinked: touch again next time, never stop
                    log.warning("relay_touch_failed", error=str(exc), entry=entry_id.decode())

        toucher = asyncio.create_task(touch(), name="relay-toucher")
        try:
            yield
        finally:
            await stop_helper(toucher)
