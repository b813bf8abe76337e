"""The Lua scripts the store runs in Redis (each runs alone: what one does is atomic)."""

from __future__ import annotations

#: A bucket (a hash: its level `t` and when it was last taken from, `ts`) refilled at `rate` units per
#: second up to `burst`, on Redis's clock, so every instance agrees; it expires once it would be full.
BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function bucket_level(key, rate, burst)
  local v = redis.call('HMGET', key, 't', 'ts')
  local have = tonumber(v[1]) or burst
  local ts = tonumber(v[2]) or now
  return math.min(burst, have + math.max(0, now - ts) * rate / 1000)
end
local function bucket_set(key, rate, burst, level)
  redis.call('HSET', key, 't', tostring(level), 'ts', now)
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
end
"""

TOKEN_BUCKET = (
    BUCKET
    + """
-- KEYS[1..n] token buckets; ARGV[1] = n, then a rate (tokens/s) and a burst per bucket. Takes one token
-- from each bucket, or from none (returns the ms to wait).
local n = tonumber(ARGV[1])
local wait = 0
local tokens = {}
for i = 1, n do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local have = bucket_level(KEYS[i], rate, burst)
  if have < 1 then wait = math.max(wait, (1 - have) * 1000 / rate) end
  tokens[i] = have
end
if wait > 0 then return math.ceil(wait) end
for i = 1, n do
  bucket_set(KEYS[i], tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1]), tokens[i] - 1)
end
"""
)

#: The token buckets only.
TAKE = TOKEN_BUCKET + "return 0\n"

#: One bucket of a quantity (bytes of uploads, say): KEYS[1] the bucket; ARGV = rate (units/s), burst,
#: amount. Takes the amount, or nothing (returns the ms until the bucket holds it; the amount is at most
#: the burst; a negative amount gives that much back).
TAKE_AMOUNT = (
    BUCKET
    + """
local rate, burst, amount = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local have = bucket_level(KEYS[1], rate, burst)
if have < amount then return math.ceil((amount - have) * 1000 / rate) end
bucket_set(KEYS[1], rate, burst, have - amount)
return 0
"""
)

#: The token buckets (KEYS[1..n]) and, only if every bucket had a token, a new task: its document,
#: its place in the indexes and its relay entry. One round trip for an accepted POST /api/tasks.
#: KEYS[n + 5] is its signed terms' key: terms posted already (their key names a task) are not stored
#: again; the reply is then `posted:<that task's id>`.
TAKE_AND_CREATE = (
    TOKEN_BUCKET
    + """
local doc, score, id = ARGV[2 * n + 2], ARGV[2 * n + 3], ARGV[2 * n + 4]
local first = redis.call('GET', KEYS[n + 5])
if first then return 'posted:' .. first end
redis.call('SET', KEYS[n + 5], id)
redis.call('SET', KEYS[n + 1], doc)
redis.call('ZADD', KEYS[n + 2], score, id)
redis.call('ZADD', KEYS[n + 3], score, id)
redis.call('XADD', KEYS[n + 4], '*', 'task', id)
return 0
"""
)

#: Link a chain task (KEYS[1]) to a posted task (ARGV[1], its document KEYS[3]) unless another posted task
#: holds it; a link held by the chain task's import (ARGV[2], `chain-<n>`, its document KEYS[2]) is taken
#: over, unless the import was made by the requester's signature or an admin key (its `imported_by`) and
#: the posted task has no test set: anyone can post terms the chain shows in a creation's calldata, only
#: the requester has their test set (read here, so a test set added concurrently counts or not as a
#: whole). Returns the id that holds the link now. The caller then marks failed a live import whose link
#: another task holds (`Store.finish_takeover`): an import is only ever stored together with its link, so
#: the check needs no note of the takeover, and a crash between the two leaves the marking to the next
#: claim.
CLAIM_CHAIN_TASK = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] and held ~= ARGV[2] then return held end
if held == ARGV[2] then
  local import = redis.call('GET', KEYS[2])
  if import and cjson.decode(import)['imported_by'] then
    local posted = redis.call('GET', KEYS[3])
    local secret = posted and cjson.decode(posted)['test_set']
    if not secret or secret == cjson.null then return held end
  end
end
if held ~= ARGV[1] then redis.call('SET', KEYS[1], ARGV[1]) end
return ARGV[1]
"""

#: A job queued once: KEYS[1] its queued mark, KEYS[2] its role's stream; ARGV the entry's fields and values.
#: The mark and the entry in one step, so a crash or a lost connection between them cannot leave a job
#: marked queued that no stream holds (a later enqueue, by a replay, would then add nothing). 1 if queued.
ENQUEUE_JOB = """
if not redis.call('SET', KEYS[1], '1', 'NX') then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV))
return 1
"""

#: A task imported from the chain. KEYS[1] its chain task's link, KEYS[2] its document, KEYS[3] the task
#: index, KEYS[4] the index of its status, KEYS[5] the relay stream; ARGV[1] the id, ARGV[2] the document,
#: ARGV[3] its created_at. Links, stores, indexes and queues one relay entry (which finishes the replay
#: of the task's history if the import's own is cut short, by an RPC failure or a crash) in one step;
#: returns 0 and changes nothing when the chain task is tracked already.
IMPORT_TASK = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('XADD', KEYS[5], '*', 'task', ARGV[1])
return 1
"""

#: A worker's successful result (a failed one is handed back: RELEASE_JOB), counted only for the delivery
#: it was given. KEYS[1] the job stream, KEYS[2] the job's result key; ARGV[1] the group, ARGV[2] the
#: worker's consumer, ARGV[3] the stream entry, ARGV[4] the delivery number the worker was sent with the
#: job, ARGV[5] the result. The entry must be pending
#: under that consumer with that delivery count; then the first result is kept and the entry is
#: acknowledged and deleted. Returns recorded, duplicate, gone (no such pending entry), reassigned
#: (pending under another consumer) or stale (another delivery).
FINISH_JOB = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 then return 'gone' end
if p[1][2] ~= ARGV[2] then return 'reassigned' end
if p[1][4] ~= tonumber(ARGV[4]) then return 'stale' end
local fresh = redis.call('SET', KEYS[2], ARGV[5], 'NX')
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
if fresh then return 'recorded' end
return 'duplicate'
"""

#: Moves an entry of a job stream to the dead stream with its fields, `deliveries`, why (`reason`) and the
#: worker that had it last (`worker`, '' when not known), if it is still there (1; 0 when it was gone, so
#: two callers racing to dead-letter the same job add it once).
_DEAD_LETTER_FUNCTION = """
local function dead_letter(stream, dead, group, entry, deliveries, reason, worker)
  local e = redis.call('XRANGE', stream, entry, entry)
  if #e == 0 then return 0 end
  local add = {'XADD', dead, '*'}
  for _, v in ipairs(e[1][2]) do add[#add + 1] = v end
  add[#add + 1] = 'deliveries'
  add[#add + 1] = deliveries
  add[#add + 1] = 'reason'
  add[#add + 1] = reason
  add[#add + 1] = 'worker'
  add[#add + 1] = worker
  redis.call(unpack(add))
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
  return 1
end
"""

#: KEYS[1] the job stream, KEYS[2] the dead stream, KEYS[3] the job's last worker (as CLAIM_JOB keeps it; the
#: dead entry's `worker`, '' when gone); ARGV[1] the group, ARGV[2] the entry, ARGV[3] its delivery count,
#: ARGV[4] why it is dead.
DEAD_LETTER = (
    _DEAD_LETTER_FUNCTION
    + "return dead_letter(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], redis.call('GET', KEYS[3]) or '')\n"
)

#: A worker hands back a job it will not finish (it is stopping now). KEYS[1] the job stream, KEYS[2] the
#: dead stream; ARGV[1] the group, ARGV[2] the worker's consumer, ARGV[3] the stream entry, ARGV[4] the
#: delivery number the worker was sent, ARGV[5] the waiting consumer, ARGV[6] the job's delivery limit (0:
#: none), ARGV[7] why the worker handed it back (the dead entry's reason); KEYS[3] the job's count of forgiven
#: failures and KEYS[4] its pause, ARGV[8] the pause in ms ('' for none), ARGV[9] how long the count is kept (ms,
#: longer than any seat lives): a validator's failed vote, forgiven (ARGV[6] counts it already) in the same step
#: as the delivery it costs, so no dispatch pass in between reads the seat as spent. Only an entry pending under that
#: consumer with that delivery count moves: back to waiting with one more delivery (XCLAIM without JUSTID,
#: so a late result of the abandoned delivery is stale), or, when that is more than the limit, to the dead
#: stream in the same step (no dispatch can take it between).
#: Returns the new delivery count (negated when dead-lettered), or gone, reassigned or stale as
#: FINISH_JOB does (nothing moved).
RELEASE_JOB = (
    _DEAD_LETTER_FUNCTION
    + """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 then return 'gone' end
if p[1][2] ~= ARGV[2] then return 'reassigned' end
if p[1][4] ~= tonumber(ARGV[4]) then return 'stale' end
local delivered = p[1][4] + 1
local limit = tonumber(ARGV[6])
if limit > 0 and delivered > limit then
  if dead_letter(KEYS[1], KEYS[2], ARGV[1], ARGV[3], delivered, ARGV[7], ARGV[2]) == 0 then
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])  -- pending, but its entry was deleted: nothing to run
    return 'gone'
  end
  return -delivered
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[5], 0, ARGV[3])
if ARGV[8] ~= '' then
  redis.call('INCR', KEYS[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[9])
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[8])
end
return delivered
"""
)

#: A waiting job taken for a worker, only as the dispatch pass saw it. KEYS[1] the job stream, KEYS[2] the
#: job's deadline key, KEYS[3] the accounts that have worked on its task (a set), KEYS[5] the job's last worker
#: (set to the worker's consumer, expiring with the deadline key); ARGV[1] the group, ARGV[2]
#: the waiting consumer, ARGV[3] the stream entry, ARGV[4] the delivery count the pass saw, ARGV[5] the
#: worker's consumer, ARGV[6] its account, ARGV[7] the deadline (unix s), ARGV[8] when the deadline key
#: expires (unix ms), ARGV[9] 1 when an account takes one job of a task at most (training jobs), ARGV[10]
#: when the task's set of accounts expires (unix ms: a day past the later of the deadline and the task's
#: submit deadline, when no job of the task is delivered any more); KEYS[4] when each account was last given a
#: training job (a sorted set), ARGV[11] that time for this account as the pass read it ('' for a seat: no
#: turns), ARGV[12] the account in lower case; KEYS[6] the session of the worker's latest login, ARGV[13] the
#: session of the connection the job is taken for. The
#: entry moves (XCLAIM ... JUSTID: the delivery count stays) only if it is still pending under the waiting
#: consumer with that count and, for a training job, the account has not worked on the task and has not been
#: given a training job since the pass read its turn: another instance that took it meanwhile, a release or
#: reclaim that counted a delivery since, or another instance that gave the account its turn meanwhile, leaves
#: it alone. Nor when the worker's latest login is another connection's: the worker has logged in again
#: elsewhere, and this connection is one it has left (a login records its session and reads the jobs pending
#: under the worker in one step, LOGIN_WORKER, so a job taken for the old connection either is refused or is
#: among those the login read).
#: A training job taken stamps the account's turn with Redis's clock (one clock for every instance).
#: Returns 0 (nothing moved: the job is not waiting as the pass saw it), -1 (nothing moved: the account has
#: worked on the task), {-2, '', its turn now} (nothing moved: the account was given a training job since),
#: -3 (nothing moved: the worker has logged in again on another connection), else {1 plus whether the account
#: was new to the task, the account's turn before ('' for none, or for a seat), its turn now ('' for a seat), the
#: job's last worker before ('' for none)}: what UNCLAIM needs to take the turn and the last worker back should
#: the job not be sent after all.
CLAIM_JOB = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] or p[1][4] ~= tonumber(ARGV[4]) then return 0 end
local latest = redis.call('GET', KEYS[6])
if latest and latest ~= ARGV[13] then return -3 end
if ARGV[9] == '1' and redis.call('SISMEMBER', KEYS[3], ARGV[6]) == 1 then return -1 end
local last = false
if ARGV[11] ~= '' then
  last = redis.call('ZSCORE', KEYS[4], ARGV[12])
  if last and tonumber(last) > tonumber(ARGV[11]) then return {-2, '', last} end
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[5], 0, ARGV[3], 'JUSTID')
redis.call('SET', KEYS[2], ARGV[7], 'PXAT', ARGV[8])
local held = redis.call('GET', KEYS[5]) or ''
redis.call('SET', KEYS[5], ARGV[5], 'PXAT', ARGV[8])
local added = redis.call('SADD', KEYS[3], ARGV[6])
redis.call('PEXPIREAT', KEYS[3], ARGV[10])
if ARGV[11] == '' then return {1 + added, '', '', held} end
local now = redis.call('TIME')
redis.call('ZADD', KEYS[4], tonumber(now[1]) + tonumber(now[2]) / 1000000, ARGV[12])
return {1 + added, last or '', redis.call('ZSCORE', KEYS[4], ARGV[12]), held}
"""

#: A job claimed for a worker and not sent after all (the worker drained, or its connection ended, during the
#: claim): the claim is undone in one step. KEYS[1] the job stream, KEYS[2] the accounts that have worked on its
#: task, KEYS[3] the turns (a sorted set), KEYS[4] the job's last worker, KEYS[5] the session of the worker's
#: latest login; ARGV[1] the group, ARGV[2] the waiting consumer, ARGV[3] the stream entry, ARGV[4] the worker's
#: consumer, ARGV[5] the delivery count it was claimed with, ARGV[6] its account (as the claim added it), ARGV[7]
#: 1 if the claim added the account to the task's set, ARGV[8] the account in lower case, ARGV[9] the turn the
#: claim stamped ('' for none: a seat), ARGV[10] the turn before it ('' for none), ARGV[11] the job's last worker
#: before the claim ('' for none), ARGV[12] the session of the connection it was claimed for.
#: Nothing is undone when the worker has logged in again on another connection meanwhile (its latest login is
#: another session): that login came after the claim (which checks it) and read the jobs pending under the
#: worker in the same step (LOGIN_WORKER), so it adopted the job; should it have failed after, the job comes back
#: after the job timeout as any job of a connection that ended does, unless the worker's next login adopts it. Nor
#: when the entry is no longer pending under the worker with that count. Else the entry goes back to waiting
#: (its delivery unspent), the account leaves the task's set if the claim put it there, the job's last worker is
#: restored while it is still this one (so a dead entry never names a worker not sent it), and the account's turn
#: while it is still the claim's (another instance may have given the account a job since). Returns -1 (another
#: connection has the worker), 0 (not pending as claimed), else 1 plus whether the turn was taken back.
UNCLAIM = """
local latest = redis.call('GET', KEYS[5])
if latest and latest ~= ARGV[12] then return -1 end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[4] or p[1][4] ~= tonumber(ARGV[5]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
if ARGV[7] == '1' then redis.call('SREM', KEYS[2], ARGV[6]) end
if redis.call('GET', KEYS[4]) == ARGV[4] then
  if ARGV[11] == '' then redis.call('DEL', KEYS[4]) else redis.call('SET', KEYS[4], ARGV[11], 'KEEPTTL') end
end
if ARGV[9] == '' or redis.call('ZSCORE', KEYS[3], ARGV[8]) ~= ARGV[9] then return 1 end
if ARGV[10] == '' then redis.call('ZREM', KEYS[3], ARGV[8]) else redis.call('ZADD', KEYS[3], ARGV[10], ARGV[8]) end
return 2
"""

#: Keep a live consumer's entries fresh (a worker's jobs, a relayer's entry): of the entries ARGV[3..],
#: those still pending under the consumer ARGV[2] (group ARGV[1]) of the stream KEYS[1] are claimed again
#: by it (idle time reset, delivery count kept) and returned; one taken back meanwhile is left alone.
TOUCH_ENTRIES = """
local claim = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
local mine = {}
for i = 3, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0 then
    mine[#mine + 1] = ARGV[i]
    claim[#claim + 1] = ARGV[i]
  end
end
if #mine > 0 then
  claim[#claim + 1] = 'JUSTID'
  redis.call(unpack(claim))
end
return mine
"""

#: A worker's connection ended: its record (KEYS[1], JSON) and its place in the set of workers (KEYS[2],
#: member ARGV[1]) go, but only if the record is this connection's (its `session` is ARGV[2]), or is gone.
#: The worker may have reconnected to another instance before this one saw its old connection end; that
#: connection's record stays.
DROP_WORKER = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['session'] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

#: A worker connection's record, at its load reports: KEYS[1] the record, KEYS[2] the set of workers, KEYS[3] the
#: session of the worker's latest login; ARGV[1] the worker's consumer name (its member of the set), ARGV[2] the
#: record (JSON), ARGV[3] its time to live in ms, ARGV[4] the connection's session, ARGV[5] how long the latest
#: login's session is kept (ms) after its last write. Written only while the connection's is the latest login
#: (or none is kept: a login that failed, the worker having given up on it, is the latest only until it expires,
#: and the connection the worker kept then takes it back), which it keeps: a late load report of a connection the
#: worker has left leaves the newer one's record alone (0), so the newer record is never left to be removed by
#: the older connection's end, nor overwritten after it expired. Else written (1).
PUT_WORKER = """
local latest = redis.call('GET', KEYS[3])
if latest and latest ~= ARGV[4] then return 0 end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

#: A worker's login, in one step: its record written and its session made the latest, whatever it was (KEYS and
#: ARGV[1..5] as PUT_WORKER's), and the jobs pending under it read (KEYS[4] its role's job stream, ARGV[6] the
#: group, ARGV[7] how many at most): XPENDING's entries. A job another instance takes for a connection the worker
#: has left is then either taken before this step, and among the entries read, or refused (CLAIM_JOB checks the
#: latest session). A login runs it again as it joins dispatch, after its welcome went out, so the login that
#: finishes last is the latest (a login that ran alongside made itself the latest in between), and adopts what
#: was taken meanwhile for a connection the worker has left.
LOGIN_WORKER = """
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
return redis.call('XPENDING', KEYS[4], ARGV[6], '-', '+', ARGV[7], ARGV[1])
"""

#: An admin's order to close a worker's connection: KEYS[1] the order, ARGV[1] the connection's session.
#: Taken (deleted, 1) only by the connection it names; another connection of the worker leaves it (0).
TAKE_KICK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
