"""The coordinator's state in Redis, shared by every `ethml serve` instance on that Redis.

Keys (prefix `ethml:`):
- `task:<id>` the task document (JSON); `tasks` and `tasks:<status>` sorted sets by creation time;
  `chaintask:<n>` the API id of on-chain task n;
- `relay` a stream of tasks waiting for their on-chain `createTaskWithPermit` (group `relayers`);
- `jobs:<role>` a stream of jobs per worker role (group `workers`): at-least-once delivery, a job
  pending under the consumer `~waiting` until a worker takes it, then under the worker's id;
  `XAUTOCLAIM` takes back the jobs of a worker that stopped heartbeating; past `max_deliveries` a job
  goes to the `dead` stream; `result:<job>` the first result of a job (`SET NX`: a repeat is ignored);
- `apikey:<sha256>` API keys by hash; `rl:<key>` token buckets (one Lua script, server time);
- `worker:<id>` connected workers (expiring), `kick:<id>` an admin's disconnect order;
- `checkpoint` the last chain block the event follower has applied; `samples` dashboard history.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError, WatchError

from ethml.coordinator.schemas import STATUSES

P = "ethml:"
WAITING = "~waiting"
GROUP = "workers"
RELAY_GROUP = "relayers"

TOKEN_BUCKET = """
-- KEYS[1..n] token buckets; ARGV[1] = n, then a rate (tokens/s) and a burst per bucket. Redis's clock,
-- so every instance agrees. Takes one token from each bucket, or from none (returns the ms to wait).
local n = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
local tokens = {}
for i = 1, n do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local v = redis.call('HMGET', KEYS[i], 't', 'ts')
  local have = tonumber(v[1]) or burst
  local ts = tonumber(v[2]) or now
  have = math.min(burst, have + math.max(0, now - ts) * rate / 1000)
  if have < 1 then wait = math.max(wait, (1 - have) * 1000 / rate) end
  tokens[i] = have
end
if wait > 0 then return math.ceil(wait) end
for i = 1, n do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  redis.call('HSET', KEYS[i], 't', tostring(tokens[i] - 1), 'ts', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst * 1000 / rate) + 1000)
end
"""

#: The token buckets (KEYS[1..n]) and, only if every bucket had a token, a new task: its document,
#: its place in the indexes and its relay entry. One round trip for an accepted POST /api/tasks.
TAKE = TOKEN_BUCKET + "return 0\n"
TAKE_AND_CREATE = (
    TOKEN_BUCKET
    + """
local doc, score, id = ARGV[2 * n + 2], ARGV[2 * n + 3], ARGV[2 * n + 4]
redis.call('SET', KEYS[n + 1], doc)
redis.call('ZADD', KEYS[n + 2], score, id)
redis.call('ZADD', KEYS[n + 3], score, id)
redis.call('XADD', KEYS[n + 4], '*', 'task', id)
return 0
"""
)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _bucket_args(buckets: list[tuple[str, float, int]]) -> list[Any]:
    args: list[Any] = [len(buckets)]
    for _name, rate, burst in buckets:
        args += [rate, burst]
    return args


def job_stream(role: str) -> str:
    return f"{P}jobs:{role}"


class Store:
    def __init__(self, redis: aioredis.Redis) -> None:
        # redis-py's reply types are unions of bytes, str and int that no call site here can narrow.
        self.redis: Any = redis
        self._take = hashlib.sha1(TAKE.encode()).hexdigest()
        self._take_and_create = hashlib.sha1(TAKE_AND_CREATE.encode()).hexdigest()
        self._scripts = {self._take: TAKE, self._take_and_create: TAKE_AND_CREATE}
        self._batch: list[tuple[str, list[Any], asyncio.Future[Any]]] = []

    async def setup(self) -> None:
        for stream, group in (
            (f"{P}relay", RELAY_GROUP),
            (job_stream("trainer"), GROUP),
            (job_stream("validator"), GROUP),
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
        wait_ms = await self._script(self._take, [f"{P}rl:{b[0]}" for b in buckets], _bucket_args(buckets))
        return int(wait_ms) / 1000

    async def take_token_and_create(self, buckets: list[tuple[str, float, int]], doc: dict[str, Any]) -> float:
        """As `take_token`; when it returns 0, the task is stored and queued for the relayer (atomically:
        a Lua script runs alone), else nothing was stored."""
        keys = [f"{P}rl:{b[0]}" for b in buckets]
        wait_ms = await self._script(
            self._take_and_create,
            [*keys, f"{P}task:{doc['id']}", f"{P}tasks", f"{P}tasks:{doc['status']}", f"{P}relay"],
            [*_bucket_args(buckets), orjson.dumps(doc), doc["created_at"], doc["id"]],
        )
        return int(wait_ms) / 1000

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
        await self.redis.hset(
            f"{P}apikey:{hash_key(key)}", mapping={"name": name, "role": role, "created": time.time()}
        )
        return key

    async def api_key(self, key: str) -> dict[str, str] | None:
        found = await self.redis.hgetall(f"{P}apikey:{hash_key(key)}")
        return {k.decode(): v.decode() for k, v in found.items()} if found else None

    async def has_admin_key(self) -> bool:
        async for name in self.redis.scan_iter(f"{P}apikey:*", count=500):
            if (await self.redis.hget(name, "role")) == b"admin":
                return True
        return False

    # ------------------------------------------------------------------ tasks

    async def import_task(self, doc: dict[str, Any]) -> bool:
        """Register a task created on chain by its requester; False if it is known already."""
        if not await self.redis.set(f"{P}chaintask:{doc['chain_task_id']}", doc["id"], nx=True):
            return False
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(f"{P}task:{doc['id']}", orjson.dumps(doc))
        pipe.zadd(f"{P}tasks", {doc["id"]: doc["created_at"]})
        pipe.zadd(f"{P}tasks:{doc['status']}", {doc["id"]: doc["created_at"]})
        await pipe.execute()
        return True

    async def task(self, task_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(f"{P}task:{task_id}")
        return orjson.loads(raw) if raw else None

    async def task_by_chain_id(self, chain_task_id: int) -> dict[str, Any] | None:
        api_id = await self.redis.get(f"{P}chaintask:{chain_task_id}")
        return await self.task(api_id.decode()) if api_id else None

    async def link_chain_id(self, task_id: str, chain_task_id: int) -> None:
        await self.redis.set(f"{P}chaintask:{chain_task_id}", task_id)

    async def update_task(self, task_id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
        """Apply `change` to the stored document (optimistic transaction: retried on a concurrent write)."""
        key = f"{P}task:{task_id}"
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
                        pipe.zrem(f"{P}tasks:{before}", task_id)
                        pipe.zadd(f"{P}tasks:{doc['status']}", {task_id: doc["created_at"]})
                    await pipe.execute()
                    return doc
                except WatchError:
                    continue

    async def list_tasks(
        self, status: str | None, cursor: float | None, limit: int
    ) -> tuple[list[dict[str, Any]], float | None]:
        key = f"{P}tasks:{status}" if status else f"{P}tasks"
        top = f"({cursor}" if cursor is not None else "+inf"
        rows = await self.redis.zrevrangebyscore(key, top, "-inf", start=0, num=limit + 1, withscores=True)
        page = rows[:limit]
        docs = (
            [json.loads(raw) for raw in await self.redis.mget([f"{P}task:{i.decode()}" for i, _ in page])]
            if page
            else []
        )
        return [d for d in docs if d], (page[-1][1] if len(rows) > limit else None)

    async def count_tasks(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for status in STATUSES:
            pipe.zcard(f"{P}tasks:{status}")
        return dict(zip(STATUSES, await pipe.execute(), strict=True))

    # ------------------------------------------------------------------ jobs

    async def enqueue_job(self, role: str, job_id: str, fields: dict[str, str]) -> bool:
        """Queue a job once: a second enqueue of the same id (events seen again after a restart) is a no-op."""
        if not await self.redis.set(f"{P}jobid:{job_id}", "1", nx=True):
            return False
        await self.redis.xadd(job_stream(role), {"job": job_id, "role": role, **fields})
        return True

    async def finish_entry(self, stream: str, group: str, entry_id: Any) -> None:
        """Acknowledge a stream entry and delete it: a finished job or relay leaves nothing behind (the
        result, the task document and the dead-letter stream keep what matters)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(stream, group, entry_id)
        pipe.xdel(stream, entry_id)
        await pipe.execute()

    async def record_result(self, job_id: str, result: dict[str, Any]) -> bool:
        """The first result of a job is kept; later ones (a redelivered job finishing twice) are ignored."""
        return bool(await self.redis.set(f"{P}result:{job_id}", json.dumps(result), nx=True))

    async def result(self, job_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(f"{P}result:{job_id}")
        return json.loads(raw) if raw else None

    async def queue_depth(self) -> dict[str, int]:
        depth = {}
        for role in ("trainer", "validator"):
            info = await self.redis.xinfo_groups(job_stream(role))
            group = next((g for g in info if g["name"] in (GROUP, GROUP.encode())), None)
            lag = int(group.get("lag") or 0) if group else 0
            waiting = await self.redis.xpending_range(job_stream(role), GROUP, "-", "+", 1000, consumername=WAITING)
            pending = int(group.get("pending") or 0) if group else 0
            depth[role] = lag + len(waiting)
            depth[f"{role}_running"] = pending - len(waiting)
        relay = await self.redis.xinfo_groups(f"{P}relay")
        depth["relay"] = sum(int(g.get("pending") or 0) + int(g.get("lag") or 0) for g in relay)
        depth["dead"] = int(await self.redis.xlen(f"{P}dead"))
        return depth

    # ------------------------------------------------------------------ workers

    async def put_worker(self, worker: dict[str, Any], ttl: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(f"{P}worker:{worker['id']}", json.dumps(worker), px=int(ttl * 1000))
        pipe.sadd(f"{P}workers", worker["id"])
        await pipe.execute()

    async def drop_worker(self, worker_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(f"{P}worker:{worker_id}")
        pipe.srem(f"{P}workers", worker_id)
        await pipe.execute()

    async def workers(self) -> list[dict[str, Any]]:
        ids = [i.decode() for i in await self.redis.smembers(f"{P}workers")]
        if not ids:
            return []
        raws = await self.redis.mget([f"{P}worker:{i}" for i in ids])
        gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:
            await self.redis.srem(f"{P}workers", *gone)
        return sorted((json.loads(r) for r in raws if r), key=lambda w: w["connected_at"])

    async def kick(self, worker_id: str) -> bool:
        if not await self.redis.exists(f"{P}worker:{worker_id}"):
            return False
        await self.redis.set(f"{P}kick:{worker_id}", "1", ex=60)
        return True

    async def take_kick(self, worker_id: str) -> bool:
        return bool(await self.redis.delete(f"{P}kick:{worker_id}"))

    # ------------------------------------------------------------------ chain follower

    async def checkpoint(self) -> int | None:
        raw = await self.redis.get(f"{P}checkpoint")
        return int(raw) if raw else None

    async def set_checkpoint(self, block: int) -> None:
        await self.redis.set(f"{P}checkpoint", block)

    async def add_sample(self, sample: dict[str, Any], keep: int = 360) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(f"{P}samples", json.dumps(sample))
        pipe.ltrim(f"{P}samples", -keep, -1)
        await pipe.execute()

    async def samples(self) -> list[dict[str, Any]]:
        return [json.loads(s) for s in await self.redis.lrange(f"{P}samples", 0, -1)]
