"""The Lua scripts the store runs in Redis (each runs alone: what one does is atomic)."""

from __future__ import annotations

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

#: The token buckets only.
TAKE = TOKEN_BUCKET + "return 0\n"

#: The token buckets (KEYS[1..n]) and, only if every bucket had a token, a new task: its document,
#: its place in the indexes and its relay entry. One round trip for an accepted POST /api/tasks.
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
