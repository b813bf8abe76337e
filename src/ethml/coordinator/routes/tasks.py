"""Tasks: posted on terms their requester signed (the relayer creates them on chain, unchanged),
imported from the chain, read."""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from typing import Any

import orjson
import structlog
from aiohttp import web

from ethml.coordinator import redis_keys as k
from ethml.coordinator.appkeys import CHAIN, PERMITS, RULES, STORE, TERMS
from ethml.coordinator.auth import Principal, buckets, rate_limit, required, too_many
from ethml.coordinator.chain import SCORE_SCALE
from ethml.coordinator.edge import UNAVAILABLE, ApiError, defer_continue, read_json
from ethml.coordinator.follower import BEFORE_VALIDATING, CreationNotFound, creation_block, task_opened
from ethml.coordinator.permit import address_of, recover_public_key
from ethml.coordinator.relayer import replay_history
from ethml.coordinator.schemas import (
    CURSOR,
    LIMIT,
    MAX_CURSOR,
    MAX_LIMIT,
    STATUSES,
    TASK_ID,
    TaskCreate,
    TaskImport,
    import_id,
)
from ethml.coordinator.store import Store
from ethml.ipfs.unixfs import file_cid_v1
from ethml.training.onchain import TaskError, read_struct
from ethml.training.spec import canonical_json

log = structlog.get_logger("ethml.coordinator")

#: How long an import may hold its chain task's lease (its search and replay), in ms.
IMPORT_LEASE_MS = 300_000

routes = web.RouteTableDef()

_TASK_ID, _CURSOR, _LIMIT = re.compile(TASK_ID), re.compile(CURSOR), re.compile(LIMIT)

PUBLIC_FIELDS = (
    "id", "status", "chain_task_id", "requester", "reward", "validations", "min_score", "submit_seconds",
    "score_seconds", "submit_deadline", "reveal_deadline", "test_deadline", "spec_cid", "dataset_cid",
    "created_at", "submissions", "panel", "transactions", "model_id", "registration", "error",
)  # fmt: skip


def public(doc: dict[str, Any]) -> dict[str, Any]:
    """A task document without what must not leave the server (the test-set secret, signed raw txs)."""
    out = {k: doc.get(k) for k in PUBLIC_FIELDS}
    out["submissions"] = [s for s in doc.get("submissions", []) if s]
    return out


def _task_doc(who: dict[str, str], fields: dict[str, Any]) -> dict[str, Any]:
    """A new task document: `fields`, who created it and when, and no results yet."""
    return {
        **fields,
        "created_at": time.time(),
        "created_by": who["name"],
        "created_by_key": who["key"],  # the key's hash: names need not be unique
        "submissions": [],
        "panel": [],
        "transactions": {},
        "model_id": None,
        "error": None,
    }


def _as_sent(signature: str) -> str:
    """The signature as the contract takes it: OpenZeppelin's ECDSA recovers nothing from v 0/1, which
    some wallets write, so such a v becomes 27/28 (v is not part of what is signed; r and s are
    unchanged). Checked, stored and relayed in this form."""
    v = int(signature[130:], 16)
    return signature[:130] + (f"{v + 27:02x}" if v < 27 else signature[130:])


def _signer_key(signature: str, digest: bytes) -> bytes | None:
    """The public key that signed `digest` with a 65-byte (r, s, v) signature in the contract's form
    (`_as_sent`)."""
    raw = bytes.fromhex(signature[2:])
    return recover_public_key(digest, raw[64], raw[:32], raw[32:64])


@routes.post("/api/tasks", expect_handler=defer_continue)
async def post_task(request: web.Request) -> web.Response:
    """Validate; check the spec's CID, the requester's signature of the terms and the permit's; store
    and queue: one Redis round trip for an accepted task (the rate limit and the store are one script);
    a rejected one still takes a token."""
    who = await required(request, "requester", "admin")
    try:
        body: TaskCreate = await read_json(request, TaskCreate)
        spec = body.spec.model_dump(mode="json")  # stored as is in the task document below
        if file_cid_v1(canonical_json(spec)) != body.spec_cid:
            raise ApiError(422, "spec_cid is not the CID of the spec's canonical JSON", "spec_cid")
        terms = body.terms()
        rules = await request.app[RULES].get()
        problems = rules.problems(terms)
        if problems:
            field = "parameters_version" if terms.parameters_version != rules.version else None
            raise ApiError(422, "; ".join(problems), field)
        digest = request.app[TERMS].digest(terms, body.requester, body.nonce, body.expiry)
        signature = _as_sent(body.signature)
        key = _signer_key(signature, digest)
        if key is None or address_of(key) != body.requester.lower():
            raise ApiError(
                422,
                "the signature does not recover the requester for these terms, nonce and expiry on this chain and "
                "TrainingTasks",
                "signature",
            )
        p = body.permit
        if p is not None:
            # The schema made permit.owner the requester, whose key the terms just gave: the permit must
            # recover that same key (a comparison of keys, no second address to hash).
            permit_digest = request.app[PERMITS].digest(p.owner, p.value, p.nonce, p.deadline)
            if recover_public_key(permit_digest, p.v, bytes.fromhex(p.r[2:]), bytes.fromhex(p.s[2:])) != key:
                raise ApiError(
                    422,
                    "the permit signature does not recover permit.owner for this chain, token and spender",
                    "permit",
                )
    except ApiError:
        await rate_limit(request, who["key"])
        raise
    task_id = secrets.token_hex(16)
    doc = _task_doc(
        who,
        {
            "id": task_id,
            "status": "pending_chain",
            "chain_task_id": None,
            "requester": body.requester,
            "reward": str(body.reward),
            "validations": body.validations,
            "min_score": body.min_score,
            "submit_seconds": body.submit_seconds,
            "score_seconds": body.score_seconds,
            "spec_cid": body.spec_cid,
            "spec": spec,
            "dataset_cid": body.dataset_cid,
            "test_set_commitment": body.test_set_commitment,
            "test_set": {"cid": body.test_set.cid, "salt": body.test_set.salt} if body.test_set else None,
            "trainers": body.trainers,
            "nonce": body.nonce,
            "parameters_version": body.parameters_version,
            "expiry": body.expiry,
            "signature": signature,
            # The chain's head as this server last saw it: a creation of these terms is not older.
            "posted_block": request.app[CHAIN].head,
            "permit": None
            if p is None
            else {
                "owner": p.owner,
                "value": str(p.value),
                "nonce": p.nonce,
                "deadline": p.deadline,
                "v": p.v,
                "r": p.r,
                "s": p.s,
            },
        },
    )
    try:
        wait = await request.app[STORE].take_token_and_create(buckets(request, who["key"]), doc)
    except UNAVAILABLE as exc:
        # The script may have reached Redis and run there after all (a Redis that stalled past the client's
        # timeout, then went on): the task may be stored. Posting the same body again is safe (a stored one is
        # answered 409 with its id); signing the terms again would make a second task for the same nonce, which
        # the chain refuses.
        log.warning("backend_unavailable", error=str(exc) or type(exc).__name__, path=request.path)
        raise ApiError(
            503,
            "Redis did not answer; the task may be stored: retry with this same body (one stored already is "
            "answered 409 with its id), not with terms signed again",
            headers={"Retry-After": "1"},
        ) from None
    if isinstance(wait, str):
        held = await _add_test_set(request.app[STORE], wait, doc)
        if held is None:
            raise ApiError(409, f"these signed terms are posted already, as task {wait}", "signature")
        return _created(wait, held["status"], 200)
    if wait > 0:
        raise too_many(wait)
    return _created(task_id, "pending_chain", 201)


def _created(task_id: str, status: str, code: int) -> web.Response:
    location = f"/api/tasks/{task_id}"
    return web.Response(
        body=orjson.dumps({"id": task_id, "status": status, "location": location}),
        status=code,
        content_type="application/json",
        headers={"Location": location},
    )


async def _add_test_set(store: Store, task_id: str, posted: dict[str, Any]) -> dict[str, Any] | None:
    """The task that holds these signed terms, once the test set of the document `posted` (checked against
    their commitment, so only someone who has the requester's secret can send it) is added to it: someone
    else posted the terms first without it, and the coordinator could not reveal the test set. While that
    task's creation is not signed yet, the body's permit (if any; checked against the requester's key) and
    its number of training jobs replace the first post's too. None when there is no test set to add (none
    sent, the task has it already, or it is past training: failed and the terms given back, or validating
    or later, when the test set is revealed already or too late)."""
    if posted["test_set"] is None:
        return None
    added = [False]

    def add(d: dict[str, Any]) -> None:  # run again on a concurrent write: decided afresh each time
        added[0] = d.get("test_set") is None and d["status"] in BEFORE_VALIDATING
        if not added[0]:
            return
        d["test_set"] = posted["test_set"]
        if d["status"] == "pending_chain" and "create" not in d["transactions"]:
            d["trainers"] = posted["trainers"]
            if posted["permit"] is not None:
                d["permit"] = posted["permit"]

    held = await store.update_task(task_id, add)
    if held is None or not added[0]:
        return None
    log.info("test_set_added", task=task_id)
    return dict(held)


@routes.post("/api/tasks/import", expect_handler=defer_continue)
async def import_task(request: web.Request) -> web.Response:
    who = await required(request, "requester", "admin")
    await rate_limit(request, who["key"])
    body: TaskImport = await read_json(request, TaskImport)
    chain, store = request.app[CHAIN], request.app[STORE]
    try:
        t = await read_struct(chain.tasks, "getTask", body.chain_task_id)
    except TaskError:  # UnknownTask
        raise ApiError(404, f"TrainingTasks has no task {body.chain_task_id}", "chain_task_id") from None
    _check_import_signature(request, who, body, t["requester"])
    known = await store.task_by_chain_id(body.chain_task_id)
    if known is not None:
        raise ApiError(409, f"task {body.chain_task_id} is already tracked as {known['id']}", "chain_task_id")
    # One import of a chain task at a time: its search and replay are one request's RPC work, not that of
    # every concurrent copy. The time limit frees the lease after a crash; until then, the relay entry
    # queued with the document leaves the replay to this request.
    lease = k.importing(body.chain_task_id)
    if not await store.redis.set(lease, "1", nx=True, px=IMPORT_LEASE_MS):
        raise ApiError(
            409,
            f"task {body.chain_task_id} is being imported by another request; retry once it is answered",
            "chain_task_id",
        )
    try:
        try:
            created = await creation_block(chain, body.chain_task_id)
        except CreationNotFound as exc:
            raise ApiError(503, str(exc), "chain_task_id", {"Retry-After": "5"} if exc.retry else None) from None
        if not await chain.confirms(created):  # a reorg may still drop it, or give its id to another task
            raise ApiError(
                503,
                f"task {body.chain_task_id} was created in block {created}, not yet {chain.confirmations} blocks deep "
                "(this server's --confirmations); retry once it is",
                "chain_task_id",
                {"Retry-After": "12"},
            )
        doc = _task_doc(
            who,
            {
                "id": import_id(body.chain_task_id),
                "status": "open",
                "chain_task_id": body.chain_task_id,
                "requester": t["requester"],
                "reward": str(int(t["reward"])),
                "validations": int(t["validations"]),
                "min_score": int(t["minScore"]) / SCORE_SCALE,
                "submit_seconds": None,
                "score_seconds": int(t["scorePeriod"]),
                "submit_deadline": int(t["submitDeadline"]),
                "reveal_deadline": int(t["revealDeadline"]),
                "test_deadline": int(t["testDeadline"]),
                "spec_cid": t["specCid"],
                "dataset_cid": t["datasetCid"],
                "trainers": body.trainers,
                # Who chose how it is served: a posted task without the test set does not take it over.
                "imported_by": "requester" if body.signature is not None else "admin",
                "replay_from": created,
            },
        )
        if not await store.import_task(doc):
            raise ApiError(409, f"task {body.chain_task_id} is already tracked", "chain_task_id")
        # Imported: whatever fails from here (the RPC, Redis), the answer is the 201, and the relay entry
        # queued with the document finishes what this did not: events since the creation (submissions,
        # reveal, votes) reach the follower only if they are newer than its checkpoint, so the task's own
        # history is replayed, and its TaskCreated opens it.
        try:
            await task_opened(store, doc)
            await replay_history(chain, store, doc["id"], body.chain_task_id, created)
        except Exception as exc:  # noqa: BLE001 - left to the relay entry
            log.warning("import_replay_deferred", task=doc["id"], error=str(exc) or type(exc).__name__)
    finally:
        with contextlib.suppress(Exception):  # else it expires
            await store.redis.delete(lease)
    location = f"/api/tasks/{doc['id']}"
    return web.json_response(
        {"id": doc["id"], "status": doc["status"], "location": location}, status=201, headers={"Location": location}
    )


def _check_import_signature(request: web.Request, who: Principal, body: TaskImport, requester: str) -> None:
    """An import is the chain task's requester's to make: its signature of the chain task and the number of
    training jobs (checked when sent, required unless the key is an admin's). Otherwise whoever imported a
    task first would decide how it is served, and its requester's own import would be refused."""
    if body.signature is None:
        if who["role"] == "admin":
            return
        raise ApiError(
            422,
            f"an import needs the signature of task {body.chain_task_id}'s requester {requester} (EIP-712 TaskImport "
            "of chain_task_id and trainers on TrainingTasks's domain); only an admin key imports without one",
            "signature",
        )
    digest = request.app[TERMS].import_digest(body.chain_task_id, body.trainers)
    key = _signer_key(_as_sent(body.signature), digest)
    if key is None or address_of(key) != requester.lower():
        raise ApiError(
            422,
            f"the signature does not recover task {body.chain_task_id}'s requester {requester} for this "
            "chain_task_id and trainers on this chain and TrainingTasks",
            "signature",
        )


@routes.get("/api/tasks/{task_id:(?!import$)[^{}/]+}")
async def get_task(request: web.Request) -> web.Response:
    await rate_limit(request, None)
    task_id = request.match_info["task_id"]
    if not _TASK_ID.fullmatch(task_id):
        raise ApiError(422, "task_id must be 1-64 letters, digits or '-'", "task_id")
    doc = await request.app[STORE].task(task_id)
    if doc is None:
        raise ApiError(404, f"no task {task_id}", "task_id")
    return web.json_response(public(doc))


@routes.get("/api/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    await rate_limit(request, None)
    query = request.query
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise ApiError(422, f"status must be one of {', '.join(STATUSES)}", "status")
    cursor = query.get("cursor")
    if cursor is not None and not _CURSOR.fullmatch(cursor):
        raise ApiError(
            422,
            f"cursor must be the next_cursor of a page (decimal seconds and a task id, at most {MAX_CURSOR} "
            "characters)",
            "cursor",
        )
    limit_raw = query.get("limit", "50")
    limit = int(limit_raw) if _LIMIT.fullmatch(limit_raw) else 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(422, f"limit must be an integer 1..{MAX_LIMIT}", "limit")
    after = None
    if cursor:
        seconds, _, last = cursor.partition(":")
        after = (float(seconds), last or None)
    docs, nxt = await request.app[STORE].list_tasks(status, after, limit)
    following = f"{nxt[0]!r}:{nxt[1]}" if nxt is not None else None
    return web.json_response({"tasks": [public(d) for d in docs], "next_cursor": following})
