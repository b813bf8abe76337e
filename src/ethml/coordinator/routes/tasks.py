"""Tasks: posted with a permit (the relayer creates them on chain), imported from the chain, read."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import orjson
from aiohttp import web
from web3.exceptions import ContractCustomError, ContractLogicError

from ethml.coordinator.appkeys import CHAIN, PERMITS, STORE
from ethml.coordinator.auth import buckets, rate_limit, required, too_many
from ethml.coordinator.chain import SCORE_SCALE
from ethml.coordinator.edge import ApiError, read_json
from ethml.coordinator.follower import replay_task, task_opened
from ethml.coordinator.permit import recover
from ethml.coordinator.schemas import CURSOR, LIMIT, MAX_CURSOR, MAX_LIMIT, STATUSES, TASK_ID, TaskCreate, TaskImport

routes = web.RouteTableDef()

_TASK_ID, _CURSOR, _LIMIT = re.compile(TASK_ID), re.compile(CURSOR), re.compile(LIMIT)

PUBLIC_FIELDS = (
    "id", "status", "chain_task_id", "requester", "reward", "validations_required", "min_score",
    "submit_deadline", "validation_deadline", "spec_cid", "dataset_cid", "created_at", "submissions",
    "votes", "transactions", "model_id", "error",
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
        "submissions": [],
        "votes": [],
        "transactions": {},
        "model_id": None,
        "error": None,
    }


@routes.post("/api/tasks")
async def post_task(request: web.Request) -> web.Response:
    """Validate, check the permit's signature, store and queue: one Redis round trip for an accepted
    task (the rate limit and the store are one script); a rejected one still takes a token."""
    who = await required(request, "requester", "admin")
    try:
        body: TaskCreate = await read_json(request, TaskCreate)
        p = body.permit
        digest = request.app[PERMITS].digest(p.owner, p.value, p.nonce, p.deadline)
        signer = recover(digest, p.v, bytes.fromhex(p.r[2:]), bytes.fromhex(p.s[2:]), checksum=False)
        if signer != p.owner.lower():
            raise ApiError(
                422, "the permit signature does not recover permit.owner for this chain, token and spender", "permit"
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
            "requester": p.owner,
            "reward": str(body.reward),
            "validations_required": body.validations_required,
            "min_score": body.min_score,
            "submit_deadline": body.submit_deadline,
            "validation_deadline": body.validation_deadline,
            "spec_cid": None,  # the relayer stores the spec and names it by CID on chain
            "spec": body.spec.model_dump(mode="json"),
            "dataset_cid": body.dataset_cid,
            "test_set_commitment": body.test_set_commitment,
            "test_set": {"cid": body.test_set.cid, "salt": body.test_set.salt} if body.test_set else None,
            "trainers": body.trainers,
            "shape": {
                "kind": 0 if body.spec.kind == "classification" else 1,
                "decimals": body.spec.decimals,
                "features": len(body.spec.features),
            },
            "permit": {
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
    wait = await request.app[STORE].take_token_and_create(buckets(request, who["key"]), doc)
    if wait > 0:
        raise too_many(wait)
    location = f"/api/tasks/{task_id}"
    return web.Response(
        body=orjson.dumps({"id": task_id, "status": "pending_chain", "location": location}),
        status=201,
        content_type="application/json",
        headers={"Location": location},
    )


@routes.post("/api/tasks/import")
async def import_task(request: web.Request) -> web.Response:
    who = await required(request, "requester", "admin")
    await rate_limit(request, who["key"])
    body: TaskImport = await read_json(request, TaskImport)
    chain, store = request.app[CHAIN], request.app[STORE]
    try:
        t = await chain.tasks.functions.getTask(body.chain_task_id).call()
    except (ContractCustomError, ContractLogicError):  # UnknownTask
        t = None
    if t is None or int(t[7]) == 0:
        raise ApiError(404, f"TrainingTasks has no task {body.chain_task_id}", "chain_task_id")
    known = await store.task_by_chain_id(body.chain_task_id)
    if known is not None:
        raise ApiError(409, f"task {body.chain_task_id} is already tracked as {known['id']}", "chain_task_id")
    doc = _task_doc(
        who,
        {
            "id": f"chain-{body.chain_task_id}",
            "status": "open",
            "chain_task_id": body.chain_task_id,
            "requester": t[0],
            "reward": str(int(t[1])),
            "validations_required": int(t[5]),
            "min_score": int(t[4]) / SCORE_SCALE,
            "submit_deadline": int(t[2]),
            "validation_deadline": int(t[3]),
            "spec_cid": t[14],
            "dataset_cid": t[13],
            "trainers": body.trainers,
        },
    )
    if not await store.import_task(doc):
        raise ApiError(409, f"task {body.chain_task_id} is already tracked", "chain_task_id")
    await task_opened(store, doc)
    # Events since its creation (submissions, reveal, votes) arrive through the follower's next pass only
    # if they are newer than the checkpoint; replay the task's own history now.
    await replay_task(chain, store, body.chain_task_id)
    location = f"/api/tasks/{doc['id']}"
    return web.json_response(
        {"id": doc["id"], "status": doc["status"], "location": location}, status=201, headers={"Location": location}
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
            f"cursor must be the next_cursor of a page (decimal seconds, at most {MAX_CURSOR} characters)",
            "cursor",
        )
    limit_raw = query.get("limit", "50")
    limit = int(limit_raw) if _LIMIT.fullmatch(limit_raw) else 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(422, f"limit must be an integer 1..{MAX_LIMIT}", "limit")
    docs, nxt = await request.app[STORE].list_tasks(status, float(cursor) if cursor else None, limit)
    return web.json_response(
        {"tasks": [public(d) for d in docs], "next_cursor": repr(nxt) if nxt is not None else None}
    )
