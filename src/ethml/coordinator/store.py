"""The coordinator's state in Redis, shared by every `ethml serve` instance on that Redis: tasks,
job and relay streams, results, API keys, token buckets, connected workers, the follower's checkpoint.
Key names come from `redis_keys`, the Lua scripts from `scripts`.

Jobs are delivered at least once: a job pending under the consumer `~waiting` of the group `workers`
until a worker takes it, then under the worker's own consumer; `XAUTOCLAIM` takes back the jobs of a
worker that stopped heartbeating; past `max_deliveries` a validator's seat goes to the `dead` stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError, WatchError

from ethml.coordinator import redis_keys as k
from ethml.coordinator.schemas import STATUSES, import_id
from ethml.coordinator.scripts import (
    CLAIM_CHAIN_TASK,
    CLAIM_JOB,
    DEAD_LETTER,
    DROP_WORKER,
    ENQUEUE_JOB,
    FINISH_JOB,
    IMPORT_TASK,
    LOGIN_WORKER,
    PUT_WORKER,
    RELEASE_JOB,
    TAKE,
    TAKE_AMOUNT,
    TAKE_AND_CREATE,
    TAKE_KICK,
    TOUCH_ENTRIES,
    UNCLAIM,
)
from ethml.coordinator.uploads import FAILED_BODIES_SECONDS

WAITING = "~waiting"
#: Seconds a worker's upload token lives after its login, or after the last renewal while it is connected.
UPLOAD_TOKEN_TTL = 24 * 3600
#: How long the server remembers that it stored a submission's artifact (for answering a retry unread):
#: past any reveal window of a task the API takes.
ARTIFACT_STORED_TTL = 2 * 365 * 24 * 3600
#: Take back one count of a key (KEYS[1]) that exists and is above zero.
FORGIVE = "if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then return redis.call('DECR', KEYS[1]) end return 0"
GROUP = "workers"
RELAY_GROUP = "relayers"


#: Characters of a dead entry's reason kept (a failed vote's detail is the worker's own words).
DEAD_REASON = 500


def dead_reason(reason: str) -> str:
    """`reason` as a dead entry keeps it: at most DEAD_REASON characters."""
    return reason if len(reason) <= DEAD_REASON else reason[: DEAD_REASON - 1] + "…"


class Claim(NamedTuple):
    """What `Store.claim_job` did: `code` (0, -1, -2, -3: nothing moved; 1 or 2: moved), and for a training job taken,
    the account's turn before the claim (None: none) and the one it stamped, as Redis wrote them (refused for a
    turn given since, -2: `after` is that turn); for any job taken, the worker it was last delivered to before
    (None: none)."""

    code: int
    before: str | None = None
    after: str | None = None
    held_by: str | None = None


#: How long a job's count of forgiven failures is kept after the last one: longer than any seat lives (its task's
#: score period, at most TrainingTasks.MAX_PERIOD, 7 days, in each of MAX_ROUNDS 3 rounds, and the reveal), so the
#: forgiven failures never count again while the seat waits for its validator.
FORGIVEN_KEEP_MS = 60 * 86400 * 1000

#: How long the session of a worker's latest login is kept after the login or its connection's last load report:
#: four record lifetimes (the heartbeat timeout), and at least a minute. Longer than the record, so a connection
#: the worker has left does not pass for its latest while the latest lives, though the latest's record expired
#: (its load report waited behind slow result checks); short, so a login the worker gave up on (it failed after
#: its step, or its connection ended at once) holds the worker's jobs back from the connection it kept for that
#: long at most: then none is the latest, and that connection's next load report makes it the latest.
LATEST_KEEP_RECORDS, LATEST_KEEP_MIN_MS = 4, 60_000


def _record(worker: dict[str, Any], ttl: float) -> tuple[list[str], list[Any]]:
    """The keys and arguments of PUT_WORKER and LOGIN_WORKER for the record `worker` (`WorkerConn.view`), which
    expires after `ttl` s, and the worker's latest session, kept LATEST_KEEP_RECORDS times as long (at least
    LATEST_KEEP_MIN_MS)."""
    consumer = f"{worker['address']}:{worker['id']}"
    keep = max(LATEST_KEEP_MIN_MS, int(LATEST_KEEP_RECORDS * ttl * 1000))
    keys = [k.worker(consumer), k.WORKERS, k.worker_session(consumer)]
    return keys, [consumer, json.dumps(worker), int(ttl * 1000), worker["session"], keep]


def _text_or_none(value: bytes | str) -> str | None:
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text or None


def _decoded(fields: dict[bytes, bytes]) -> dict[str, str]:
    """A hash's fields and values (HGETALL) as text."""
    return {f.decode(): v.decode() for f, v in fields.items()}


class LastAdminKey(Exception):
    """The key to revoke is the last admin key."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _bucket_args(buckets: list[tuple[str, float, int]]) -> list[Any]:
    args: list[Any] = [len(buckets)]
    for _name, rate, burst in buckets:
        args += [rate, burst]
    return args


class Store:
    def __init__(self, redis: aioredis.Redis) -> None:
        # redis-py's reply types are unions of bytes, str and int that no call site here can narrow.
        self.redis: Any = redis
        self._scripts = {
            hashlib.sha1(src.encode()).hexdigest(): src
            for src in (
                TAKE,
                TAKE_AMOUNT,
                TAKE_AND_CREATE,
                CLAIM_CHAIN_TASK,
                FINISH_JOB,
                RELEASE_JOB,
                CLAIM_JOB,
                DEAD_LETTER,
                TOUCH_ENTRIES,
                DROP_WORKER,
                LOGIN_WORKER,
                PUT_WORKER,
                TAKE_KICK,
                IMPORT_TASK,
                ENQUEUE_JOB,
                UNCLAIM,
            )
        }
        sha = {src: digest for digest, src in self._scripts.items()}
        self._take, self._take_and_create = sha[TAKE], sha[TAKE_AND_CREATE]
        self._take_amount = sha[TAKE_AMOUNT]
        self._finish_job, self._touch_entries = sha[FINISH_JOB], sha[TOUCH_ENTRIES]
        self._release_job, self._dead_letter = sha[RELEASE_JOB], sha[DEAD_LETTER]
        self._claim_job, self._unclaim = sha[CLAIM_JOB], sha[UNCLAIM]
        self._drop_worker, self._put_worker = sha[DROP_WORKER], sha[PUT_WORKER]
        self._login_worker = sha[LOGIN_WORKER]
        self._take_kick, self._claim_chain_task = sha[TAKE_KICK], sha[CLAIM_CHAIN_TASK]
        self._import_task, self._enqueue_job = sha[IMPORT_TASK], sha[ENQUEUE_JOB]
        self._batch: list[tuple[str, list[Any], asyncio.Future[Any]]] = []

    async def bind_deployment(self, identity: dict[str, Any]) -> dict[str, Any] | None:
        """Tie this Redis's state to the deployment `identity` (its chain id, TrainingTasks and deployment block,
        recorded by the first start; state from before the record is taken as this deployment's). None if it is
        that deployment's, else the deployment it belongs to: its task ids, jobs and checkpoint are another
        chain's, which a devnet started afresh, numbering its tasks from 1 again, would take for its own."""
        raw = json.dumps(identity, sort_keys=True)
        await self.redis.set(k.DEPLOYMENT, raw, nx=True)
        held = await self.redis.get(k.DEPLOYMENT)
        if held is None or held.decode() == raw:
            return None
        recorded: dict[str, Any] = json.loads(held)
        return recorded

    async def setup(self) -> None:
        for stream, group in (
            (k.RELAY, RELAY_GROUP),
            (k.jobs("trainer"), GROUP),
            (k.jobs("validator"), GROUP),
        ):
            try:
                await self.redis.xgroup_create(stream, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        for script in self._scripts.values():
            await self.redis.script_load(script)

    # ------------------------------------------------------------------ rate limits and keys

    async def take_token(self, buckets: list[tuple[str, float, int]]) -> float:
        """0 when every bucket (name, rate per second, burst) had a token (one is taken from each), else
        the seconds until one will."""
        wait_ms = await self._script(self._take, [k.bucket(b[0]) for b in buckets], _bucket_args(buckets))
        return int(wait_ms) / 1000

    async def take_amount(self, bucket: str, rate: float, burst: float, amount: float) -> float:
        """0 when the bucket `bucket` (refilled at `rate` units per second, holding at most `burst`) held
        `amount` (which it gave), else the seconds until it will (it gave nothing). `amount` <= `burst`; a
        negative amount gives that much back."""
        wait_ms = await self._script(self._take_amount, [k.bucket(bucket)], [rate, burst, amount])
        return int(wait_ms) / 1000

    async def take_token_and_create(self, buckets: list[tuple[str, float, int]], doc: dict[str, Any]) -> float | str:
        """As `take_token`; when it returns 0, the task is stored and queued for the relayer (atomically:
        a Lua script runs alone), else nothing was stored: seconds to wait, or the id of the task posted
        with the same signed terms (a string)."""
        keys = [k.bucket(b[0]) for b in buckets]
        reply = await self._script(
            self._take_and_create,
            [*keys, k.task(doc["id"]), k.TASKS, k.tasks_in(doc["status"]), k.RELAY, k.signed_terms(doc["signature"])],
            [*_bucket_args(buckets), orjson.dumps(doc), doc["created_at"], doc["id"]],
        )
        if isinstance(reply, bytes):
            return reply.decode().removeprefix("posted:")
        return int(reply) / 1000

    async def release_signed_terms(self, doc: dict[str, Any]) -> None:
        """The signed terms of a failed task may be posted again."""
        key = k.signed_terms(doc["signature"])
        held = await self.redis.get(key)
        if held is not None and held.decode() == doc["id"]:
            await self.redis.delete(key)

    async def _script(self, sha: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA through the auto-pipeline: the calls made in one turn of the event loop (concurrent
        requests) go to Redis as one pipeline, one write and one read for all of them."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((sha, [len(keys), *keys, *args], future))
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush()))
        try:
            return await future
        except NoScriptError:  # a restarted or flushed Redis forgot the script: load it, once
            await self.redis.script_load(self._scripts[sha])
            return await self.redis.evalsha(sha, *[len(keys), *keys, *args])

    async def _flush(self) -> None:
        batch, self._batch = self._batch, []
        pipe = self.redis.pipeline(transaction=False)
        for sha, call, _future in batch:
            pipe.evalsha(sha, *call)
        try:
            results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed: every caller sees it
            for _sha, _call, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for (_sha, _call, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def add_api_key(self, name: str, role: str) -> str:
        key = "eml_" + secrets.token_urlsafe(32)
        await self.redis.hset(k.api_key(hash_key(key)), mapping={"name": name, "role": role, "created": time.time()})
        return key

    async def api_key(self, key: str) -> dict[str, str] | None:
        """An API key's record, or None for an unknown key (one that is not ASCII, as every key given out is: a
        header's bytes that are not UTF-8 reach here as lone surrogates, which have no encoding to hash)."""
        if not key.isascii():
            return None
        found = await self.redis.hgetall(k.api_key(hash_key(key)))
        return _decoded(found) if found else None

    async def api_keys(self) -> list[dict[str, Any]]:
        """Every API key's record (id: its hash; name, role, created), oldest first."""
        out = []
        async for name in self.redis.scan_iter(k.API_KEY_PATTERN, count=500):
            found = await self.redis.hgetall(name)
            if found:
                record = _decoded(found)
                key_id = name.decode().rsplit(":", 1)[1]
                out.append({"id": key_id, "name": record.get("name", ""), "role": record.get("role", ""),
                            "created": float(record.get("created") or 0)})  # fmt: skip
        return sorted(out, key=lambda r: (r["created"], r["id"]))

    async def revoke_api_key(self, key_id: str) -> dict[str, str] | None:
        """Delete the key whose hash is `key_id`: its record, or None for no such key. LastAdminKey when it is
        the last admin key (the API would have no key left to make others with). The admin keys are watched
        while this one is deleted, so two admins revoking each other's keys at once leave one of them."""
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                keys = [name async for name in self.redis.scan_iter(k.API_KEY_PATTERN, count=500)]
                await pipe.watch(k.api_key(key_id), *keys)
                found = await pipe.hgetall(k.api_key(key_id))
                if not found:
                    return None
                record = _decoded(found)
                if record.get("role") == "admin":
                    roles = [await pipe.hget(name, "role") for name in keys]
                    if sum(r == b"admin" for r in roles) <= 1:
                        raise LastAdminKey
                pipe.multi()
                pipe.delete(k.api_key(key_id))
                try:
                    await pipe.execute()
                except WatchError:
                    continue  # a key changed meanwhile: decide again
                return record

    async def has_admin_key(self) -> bool:
        async for name in self.redis.scan_iter(k.API_KEY_PATTERN, count=500):
            if (await self.redis.hget(name, "role")) == b"admin":
                return True
        return False

    # ------------------------------------------------------------------ tasks

    async def import_task(self, doc: dict[str, Any]) -> bool:
        """Register a task created on chain by its requester, with a relay entry that finishes the replay
        of its history from `doc["replay_from"]` if the import's own replay is cut short; False (and
        nothing changed) if it is known already."""
        keys = [k.chain_task(doc["chain_task_id"]), k.task(doc["id"]), k.TASKS, k.tasks_in(doc["status"]), k.RELAY]
        return bool(await self._script(self._import_task, keys, [doc["id"], orjson.dumps(doc), doc["created_at"]]))

    async def task(self, task_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(k.task(task_id))
        return orjson.loads(raw) if raw else None

    async def task_by_chain_id(self, chain_task_id: int) -> dict[str, Any] | None:
        api_id = await self.redis.get(k.chain_task(chain_task_id))
        return await self.task(api_id.decode()) if api_id else None

    async def claim_chain_id(self, task_id: str, chain_task_id: int) -> str:
        """Link the chain task to the posted task `task_id` unless another posted task tracks it; returns
        the id of the task that tracks it now. A link held by an imported task (no signed terms, no test
        set) is taken over, and that task is marked failed, naming this one (`finish_takeover`, which also
        finishes a takeover that a crash cut short before the marking); but an import its requester signed
        or an admin made keeps it from a posted task without the test set."""
        imported = import_id(chain_task_id)
        reply = await self._script(
            self._claim_chain_task,
            [k.chain_task(chain_task_id), k.task(imported), k.task(task_id)],
            [task_id, imported],
        )
        holder = reply.decode() if isinstance(reply, bytes) else str(reply)
        if holder == task_id:
            await self.finish_takeover(chain_task_id, holder)
        return holder

    async def finish_takeover(self, chain_task_id: int, holder: str | None = None) -> None:
        """Mark failed the import of the chain task (`chain-<n>`) if it is still live though another task
        holds the link (`holder`, read if not given): the import is only ever stored together with its
        link, so a live import without it was taken over, just now or by a claim that a crash cut short
        before this marking, or it was marked and then overwritten by a settlement the follower applied
        through a link it read before the takeover. A no-op otherwise."""
        if holder is None:
            raw = await self.redis.get(k.chain_task(chain_task_id))
            if raw is None:
                return
            holder = raw.decode()
        imported = import_id(chain_task_id)
        if holder != imported and (doc := await self.task(imported)) is not None and doc["status"] != "failed":
            error = f"task {chain_task_id} is tracked as task {holder}, which was posted with its signed terms"

            def superseded(d: dict[str, Any]) -> None:
                d["status"] = "failed"
                d["error"] = error

            await self.update_task(imported, superseded)

    async def update_task(self, task_id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
        """Apply `change` to the stored document (optimistic transaction: retried on a concurrent write)."""
        key = k.task(task_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        await pipe.reset()
                        return None
                    doc: dict[str, Any] = json.loads(raw)
                    before = doc["status"]
                    change(doc)
                    pipe.multi()
                    pipe.set(key, orjson.dumps(doc))
                    if doc["status"] != before:
                        pipe.zrem(k.tasks_in(before), task_id)
                        pipe.zadd(k.tasks_in(doc["status"]), {task_id: doc["created_at"]})
                    await pipe.execute()
                    return doc
                except WatchError:
                    continue

    async def list_tasks(
        self, status: str | None, cursor: tuple[float, str | None] | None, limit: int
    ) -> tuple[list[dict[str, Any]], tuple[float, str] | None]:
        """A page of tasks, newest first: up to `limit` after `cursor` (the creation time and id of the last task
        of the previous page), and the cursor of the next page (None on the last). Tasks created in the same
        instant (their times are one index's equal scores, which Redis orders by id) are ordered by id, so that a
        page boundary between two of them skips neither. A cursor without an id (as pages gave before) starts
        after every task of its time."""
        key = k.tasks_in(status) if status else k.TASKS
        skip = 0
        if cursor is None:
            top = "+inf"
        elif cursor[1] is None:
            top = f"({cursor[0]!r}"
        else:
            top = repr(cursor[0])
            last = cursor[1].encode()
            tied = await self.redis.zrangebyscore(key, top, top)  # (normally the cursor's own task alone)
            skip = sum(1 for member in tied if member >= last)  # the ones at or before it, newest first
        rows = await self.redis.zrevrangebyscore(key, top, "-inf", start=skip, num=limit + 1, withscores=True)
        page = rows[:limit]
        docs = [json.loads(raw) for raw in await self.redis.mget([k.task(i.decode()) for i, _ in page])] if page else []
        following = (float(page[-1][1]), page[-1][0].decode()) if len(rows) > limit else None
        return [d for d in docs if d], following

    async def count_tasks(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for status in STATUSES:
            pipe.zcard(k.tasks_in(status))
        return dict(zip(STATUSES, await pipe.execute(), strict=True))

    # ------------------------------------------------------------------ jobs

    async def enqueue_job(self, role: str, job_id: str, fields: dict[str, str]) -> bool:
        """Queue a job once: a second enqueue of the same id (events seen again after a restart) is a no-op.
        The mark and the stream entry are one step (`scripts.ENQUEUE_JOB`)."""
        entry = [v for pair in {"job": job_id, "role": role, **fields}.items() for v in pair]
        return bool(await self._script(self._enqueue_job, [k.job_queued(job_id), k.jobs(role)], entry))

    async def finish_entry(self, stream: str, group: str, entry_id: Any) -> None:
        """Acknowledge a stream entry and delete it: a finished job or relay leaves nothing behind (the
        result, the task document and the dead-letter stream keep what matters)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(stream, group, entry_id)
        pipe.xdel(stream, entry_id)
        await pipe.execute()

    async def finish_job(
        self, role: str, job_id: str, consumer: str, entry_id: bytes, delivery: int, result: dict[str, Any]
    ) -> str:
        """Record a worker's result if the job's entry is pending under its consumer with the delivery
        number it was sent (atomically, `scripts.FINISH_JOB`): recorded, duplicate (a result was kept
        already), gone, reassigned or stale (nothing recorded)."""
        reply = await self._script(
            self._finish_job,
            [k.jobs(role), k.result(job_id)],
            [GROUP, consumer, entry_id, delivery, json.dumps(result)],
        )
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    async def release_job(
        self,
        role: str,
        consumer: str,
        entry_id: bytes,
        delivery: int,
        limit: int,
        reason: str = "handed back",
        *,
        job: str,
        forgiven_pause: float | None = None,
    ) -> int | str:
        """Move a job pending under `consumer` with delivery count `delivery` back to waiting, counting a
        delivery, or to the dead stream past `limit` deliveries (0: never; atomically, `scripts.RELEASE_JOB`),
        with `reason` and the consumer as its worker: the new delivery count (negative: dead-lettered), or gone,
        reassigned or stale (nothing moved). With `forgiven_pause` (seconds), job `job`'s failure is forgiven as
        it goes back (its count of forgiven failures, which `limit` includes already, and a pause before it is
        delivered again, in the same step)."""
        pause = "" if forgiven_pause is None else int(forgiven_pause * 1000)
        reply = await self._script(
            self._release_job,
            [k.jobs(role), k.DEAD, k.job_forgiven(job), k.job_pause(job)],
            [GROUP, consumer, entry_id, delivery, WAITING, limit, dead_reason(reason), pause, FORGIVEN_KEEP_MS],
        )
        return reply.decode() if isinstance(reply, bytes) else int(reply)

    async def claim_job(
        self,
        role: str,
        job_id: str,
        entry_id: bytes,
        delivered: int,
        worker: tuple[str, str, str],
        deadline: float,
        chain_task: str,
        *,
        once_per_account: bool,
        submit_deadline: float = 0.0,
        turn: float | None = None,
    ) -> Claim:
        """Move a waiting job to `worker` (its consumer, account and connection's session) with its `deadline`,
        only if it is still waiting with the delivery count `delivered`, the worker's latest login is this
        connection's (or none is kept), and, with `once_per_account`, the account has not worked on the task,
        and, with `turn` (when the account was last given a training job, as the caller read it from `k.GIVEN`;
        0: not this past day), it has not been given one since (atomically, `scripts.CLAIM_JOB`, which then stamps
        the account's turn). Its `code`: 0 if not moved (not waiting as the caller saw it), -1 if not moved because
        the account has worked on the task, -2 because it was given a training job since (`after`: its turn now),
        -3 because the worker has logged in again on another connection, else 1, or 2 when the account was added
        to the task's workers, with the account's turn before and after the claim and the job's last worker before
        it, as `unclaim` takes them back. The task's set of workers is kept until a day past the later of the
        deadline and the task's `submit_deadline` (no job of the task is delivered after both)."""
        consumer, address, session = worker
        keys = [k.jobs(role), k.job_deadline(job_id), k.task_workers(chain_task, role), k.GIVEN, k.job_worker(job_id)]
        keys.append(k.worker_session(consumer))
        expires = int((deadline + 86400) * 1000)  # a day past the deadline: adopt() reads it on a reconnect
        kept = int((max(deadline, submit_deadline) + 86400) * 1000)
        args = [GROUP, WAITING, entry_id, delivered, consumer, address, repr(deadline), expires]
        turns = ["" if turn is None else repr(turn), address.lower()]
        once = 1 if once_per_account else 0
        reply = await self._script(self._claim_job, keys, [*args, once, kept, *turns, session])
        if not isinstance(reply, list):
            return Claim(int(reply))
        code, before, after, *held = reply  # (a refusal, -2, has no last worker)
        return Claim(int(code), _text_or_none(before), _text_or_none(after), _text_or_none(held[0]) if held else None)

    async def unclaim(
        self,
        role: str,
        entry_id: bytes,
        delivered: int,
        worker: tuple[str, str, str],
        job_id: str,
        chain_task: str,
        claim: Claim,
    ) -> int:
        """Undo `claim`, which took job `job_id` (entry `entry_id`, delivery count `delivered`) for `worker` (its
        consumer, account and connection's session) and was not sent after all (`scripts.UNCLAIM`, one step):
        the job back to waiting, the account out of the task's set if the claim put it there, the job's last
        worker and the account's turn back as they were while they are still the claim's. -1: nothing undone,
        the worker has logged in again on another connection (whose login read the job: `Dispatcher.take_over`); 0:
        nothing undone, no longer pending as claimed; else 1, or 2 when the turn was taken back."""
        consumer, account, session = worker
        keys = [k.jobs(role), k.task_workers(chain_task, role), k.GIVEN, k.job_worker(job_id)]
        keys.append(k.worker_session(consumer))
        args = [GROUP, WAITING, entry_id, consumer, delivered, account, 1 if claim.code == 2 else 0, account.lower()]
        args += [claim.after or "", claim.before or "", claim.held_by or "", session]
        return int(await self._script(self._unclaim, keys, args))

    async def dead_letter(self, stream: str, entry_id: bytes, deliveries: int, reason: str, job: str) -> bool:
        """Move job `job`'s entry to the dead stream with its delivery count, why, and the worker it was last
        delivered to, unless it is gone already (another instance did it, or it finished): whether this call moved
        it."""
        args = [GROUP, entry_id, deliveries, dead_reason(reason)]
        return bool(await self._script(self._dead_letter, [stream, k.DEAD, k.job_worker(job)], args))

    async def touch_entries(self, stream: str, group: str, consumer: str, entry_ids: list[bytes]) -> set[bytes]:
        """Reset the idle time of those of `entry_ids` still pending under `consumer`; returns them."""
        return set(await self._script(self._touch_entries, [stream], [group, consumer, *entry_ids]))

    async def result(self, job_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(k.result(job_id))
        return json.loads(raw) if raw else None

    async def has_result(self, job_id: str) -> bool:
        return bool(await self.redis.exists(k.result(job_id)))

    async def queue_depth(self) -> dict[str, int]:
        depth = {}
        for role in ("trainer", "validator"):
            info = await self.redis.xinfo_groups(k.jobs(role))
            group = next((g for g in info if g["name"] in (GROUP, GROUP.encode())), None)
            lag = int(group.get("lag") or 0) if group else 0
            waiting = await self.redis.xpending_range(k.jobs(role), GROUP, "-", "+", 1000, consumername=WAITING)
            pending = int(group.get("pending") or 0) if group else 0
            depth[role] = lag + len(waiting)
            depth[f"{role}_running"] = pending - len(waiting)
        relay = await self.redis.xinfo_groups(k.RELAY)
        depth["relay"] = sum(int(g.get("pending") or 0) + int(g.get("lag") or 0) for g in relay)
        depth["dead"] = int(await self.redis.xlen(k.DEAD))
        return depth

    # ------------------------------------------------------------------ workers

    async def put_worker(self, worker: dict[str, Any], ttl: float) -> bool:
        """Write a worker connection's record (`WorkerConn.view`), to expire after `ttl` s unless written
        again: whether it was written (not when the worker's latest login is another connection's). A login
        writes it with `login_worker`."""
        keys, args = _record(worker, ttl)
        return bool(await self._script(self._put_worker, keys, args))

    async def login_worker(self, worker: dict[str, Any], ttl: float, role: str, most: int) -> list[tuple[bytes, int]]:
        """A worker's login: its connection's record written (as `put_worker`'s) and made the worker's latest and,
        in the same step, the jobs pending under it in `role`'s stream (at most `most`): their entry ids and
        delivery counts (`scripts.LOGIN_WORKER`)."""
        keys, args = _record(worker, ttl)
        reply = await self._script(self._login_worker, [*keys, k.jobs(role)], [*args, GROUP, most])
        return [(entry[0], int(entry[3])) for entry in reply]

    async def drop_worker(self, consumer: str, session: str) -> bool:
        """Remove the record of the worker's (`<address>:<worker id>`) connection `session`, unless the
        worker has a newer connection (to another instance, which saw it first): whether it was removed."""
        return bool(await self._script(self._drop_worker, [k.worker(consumer), k.WORKERS], [consumer, session]))

    async def workers(self) -> list[dict[str, Any]]:
        ids = [i.decode() for i in await self.redis.smembers(k.WORKERS)]  # consumer names
        if not ids:
            return []
        raws = await self.redis.mget([k.worker(i) for i in ids])
        gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:
            await self.redis.srem(k.WORKERS, *gone)
        views = [json.loads(r) for r in raws if r]
        for view in views:
            view.pop("session", None)  # which connection wrote it: only for drop_worker
        return sorted(views, key=lambda w: w["connected_at"])

    async def connections(self, worker_id: str, address: str | None = None) -> dict[str, str]:
        """The connected workers with id `worker_id` (of `address` only, if given): consumer name ->
        the session of the connection whose record it is."""
        members = [m.decode() for m in await self.redis.smembers(k.WORKERS)]
        chosen = [
            m
            for m in members
            if m.endswith(f":{worker_id}") and (address is None or m.lower().startswith(f"{address.lower()}:"))
        ]
        if not chosen:
            return {}
        records = await self.redis.mget([k.worker(m) for m in chosen])
        return {m: json.loads(r).get("session", "") for m, r in zip(chosen, records, strict=True) if r is not None}

    async def kick(self, connections: dict[str, str]) -> None:
        """Order those connections (consumer name -> session) to be closed by their instances, at their
        next load report: for a minute, and only those connections (a worker that starts again is not)."""
        pipe = self.redis.pipeline(transaction=False)
        for consumer, session in connections.items():
            pipe.set(k.kick(consumer), session, ex=60)
        await pipe.execute()

    async def take_kick(self, consumer: str, session: str) -> bool:
        """Whether an admin ordered this connection closed (the order is used up)."""
        return bool(await self._script(self._take_kick, [k.kick(consumer)], [session]))

    async def use_login_nonce(self, nonce: str, signer: str) -> bool:
        """True the first time a login nonce is used, False on a replay."""
        return bool(await self.redis.set(k.login_nonce(nonce), signer, nx=True, ex=3600))

    async def new_upload_token(self, address: str, ttl: int = UPLOAD_TOKEN_TTL) -> str:
        """A token that lets a logged-in worker upload its model artifacts (POST /api/files)."""
        token = secrets.token_urlsafe(24)
        await self.redis.set(k.upload_token(token), address, ex=ttl)
        return token

    async def renew_upload_token(self, token: str, ttl: int = UPLOAD_TOKEN_TTL) -> None:
        """Another `ttl` seconds for a token its worker is still connected with (an expired one stays so)."""
        await self.redis.expire(k.upload_token(token), ttl)

    async def failed_artifact_bodies(self, chain_task: int, account: str) -> tuple[int, int]:
        """The bodies `account` has sent for its submission to `chain_task` this hour that did not end in its
        artifact stored (counted when their reading starts; forgiven when the server was at fault), and the
        seconds left in the hour."""
        key = k.failed_artifact_bodies(chain_task, account)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.ttl(key)
            count, ttl = await pipe.execute()
        return int(count or 0), int(ttl)

    async def count_artifact_body(self, chain_task: int, account: str) -> tuple[int, int]:
        """Count a body about to be read, in an hour-long window opened by the first: the count after, and the
        seconds left in the window."""
        key = k.failed_artifact_bodies(chain_task, account)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=FAILED_BODIES_SECONDS, nx=True)
            pipe.incr(key)
            pipe.ttl(key)
            _, count, ttl = await pipe.execute()
        return int(count), int(ttl)

    async def forgive_artifact_body(self, chain_task: int, account: str) -> None:
        """Take back the count of a body the server failed (its disk full or failing); not below zero, and not
        into a window that has ended."""
        await self.redis.eval(FORGIVE, 1, k.failed_artifact_bodies(chain_task, account))

    async def artifact_stored(self, chain_task: int, account: str) -> str | None:
        """The CID (as sent) of the artifact this server stored for `account`'s submission to `chain_task`."""
        cid = await self.redis.get(k.stored_artifact(chain_task, account))
        return cid.decode() if cid else None

    async def artifact_is_stored(self, chain_task: int, account: str, cid: str) -> None:
        await self.redis.set(k.stored_artifact(chain_task, account), cid, ex=ARTIFACT_STORED_TTL)

    async def upload_token_owner(self, token: str) -> str | None:
        """The worker account an upload token was given to, or None for an unknown or expired token (one that is not
        ASCII, as every token given out is, included)."""
        if not token.isascii():
            return None
        owner = await self.redis.get(k.upload_token(token))
        return owner.decode() if owner is not None else None

    # ------------------------------------------------------------------ chain follower

    async def checkpoint(self) -> int | None:
        raw = await self.redis.get(k.CHECKPOINT)
        return int(raw) if raw else None

    async def set_checkpoint(self, block: int) -> None:
        await self.redis.set(k.CHECKPOINT, block)

    async def add_sample(self, sample: dict[str, Any], keep: int = 360) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(k.SAMPLES, json.dumps(sample))
        pipe.ltrim(k.SAMPLES, -keep, -1)
        await pipe.execute()

    async def samples(self) -> list[dict[str, Any]]:
        return [json.loads(s) for s in await self.redis.lrange(k.SAMPLES, 0, -1)]
