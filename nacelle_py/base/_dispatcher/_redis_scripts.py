"""The Redis backend's Lua scripts: each is one atomic step (never half done).

Key layout for a dispatcher whose stream is ``S`` (every key starts with it,
so two dispatchers with different streams never see each other's):

- ``S``: the stream of tasks ready to run, consumed by the group ``nacelle``
- ``S:schedule``: a sorted set of entries by due time (delays and retry backoff)
- ``S:dead``: the dead-letter stream; ``S:dead:index``: task id -> its entry there
- ``S:result:<task id>``: a task's kept outcome (expires after ``keep_result``)
- ``S:key:<key>``: an idempotency key -> the first task's id (expires after the key TTL)
"""

from __future__ import annotations

__all__ = ["ENQUEUE", "MOVE", "RETRY_DEAD", "SETTLE"]

# KEYS: stream, schedule, idempotency key, this call's mark. ARGV: due time ('' = now), key TTL in ms
# ('' = no key), first task id, entries... -> nil, or the id of the task that already holds the key.
# The mark (named after the call's first task id, which is unique) makes a call sent again after a
# lost reply add nothing twice.
ENQUEUE = """
if not redis.call('SET', KEYS[4], '1', 'NX', 'PX', 600000) then return false end
if ARGV[2] ~= '' then
  if not redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', ARGV[2]) then
    return redis.call('GET', KEYS[3])
  end
end
if ARGV[1] ~= '' then
  for i = 4, #ARGV do redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i]) end
else
  for i = 4, #ARGV do redis.call('XADD', KEYS[1], '*', 'm', ARGV[i]) end
end
return false
"""

# KEYS: stream, schedule, dead, dead index. ARGV: group, now, result key prefix, then one record
# per outcome: kind, entry id, task id, number, data and result joined by \x1f (which JSON never
# holds unescaped; one argument per outcome costs the client far less than six).
#   ok     - acknowledge; keep `result` for `number` seconds (0: not kept)
#   retry  - acknowledge; `data` (the entry again) is due at time `number` (now or later)
#   dead   - acknowledge; `data` (the letter) goes to the dead stream; keep `result` `number` s
#   poison - like dead, for an entry that never became a task
#   back   - acknowledge; `data` (the entry, not run) goes back into the stream at once
# Every entry is acknowledged and deleted in the same step as what replaces it.
SETTLE = """
local function fields(s)
  local out, start = {}, 1
  while true do
    local stop = string.find(s, '\\31', start, true)
    if not stop then out[#out + 1] = string.sub(s, start); return out end
    out[#out + 1] = string.sub(s, start, stop - 1)
    start = stop + 1
  end
end
local now, acked = tonumber(ARGV[2]), {}
for i = 4, #ARGV do
  local f = fields(ARGV[i])
  local kind, eid, tid, n, data, result = f[1], f[2], f[3], tonumber(f[4]), f[5], f[6]
  -- Only the call that acknowledges an entry replaces it: a settle sent again (its reply was lost)
  -- or an entry someone else settled after a lease lapse adds no second retry, hand-back or letter.
  if redis.call('XACK', KEYS[1], ARGV[1], eid) == 1 then
    acked[#acked + 1] = eid
    if kind == 'retry' then
      if n <= now then redis.call('XADD', KEYS[1], '*', 'm', data) else redis.call('ZADD', KEYS[2], n, data) end
    elseif kind == 'back' then
      redis.call('XADD', KEYS[1], '*', 'm', data)
    elseif kind == 'dead' or kind == 'poison' then
      local did = redis.call('XADD', KEYS[3], '*', 'm', data)
      if tid ~= '' then redis.call('HSET', KEYS[4], tid, did) end
    end
  end
  if result ~= '' and n > 0 and (kind == 'ok' or kind == 'dead') then
    redis.call('SET', ARGV[3] .. tid, result, 'PX', math.max(1, math.floor(n * 1000)))
  end
end
for i = 1, #acked, 500 do
  redis.call('XDEL', KEYS[1], unpack(acked, i, math.min(i + 499, #acked)))
end
return #acked
"""

# KEYS: stream, schedule. ARGV: now, limit -> {moved, the next due time or false}.
# One script: two replicas moving at once never move an entry twice.
MOVE = """
local due = redis.call('ZRANGE', KEYS[2], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do
  if redis.call('ZREM', KEYS[2], m) == 1 then redis.call('XADD', KEYS[1], '*', 'm', m) end
end
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {#due, nxt[2] or false}
"""

# KEYS: stream, dead, dead index, result key. ARGV: task id, dead entry id, the entry to run again.
RETRY_DEAD = """
if redis.call('HDEL', KEYS[3], ARGV[1]) == 0 then return 0 end
redis.call('XDEL', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[4])
redis.call('XADD', KEYS[1], '*', 'm', ARGV[3])
return 1
"""
