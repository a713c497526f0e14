"""The worker-based engine's Lua scripts: each is one atomic step on the edges.

Key layout for a pipeline whose namespace is ``N``, for each non-root stage
``S`` (the edge into ``S``; a tree gives each stage one parent):

- ``N:edge:S``: the stream of chunks waiting for ``S``, read by the consumer group ``S``;
- ``N:count:S``: the messages on that edge (waiting or delivered and not
  acknowledged): what ``buffer`` bounds;
- ``N:end:S``: the entry id of the last end that went through ``S``;
- ``N:dead:S``: the dead-letter stream of ``S``;

and for each root ``R``, ``N:run:R``: the token of its latest run.

An entry's one field ``m`` holds a chunk, a JSON list of ``[id, body]``
pairs, or ``E:<token>``: the end of the edge (the parent finished; it travels
behind every message the parent emitted), marked with the run of the root it
comes from, so that an end left behind by an earlier run (a replica that
failed holding it) never ends a later one.
"""

from __future__ import annotations

__all__ = ["DEAD", "END", "EXPLODE", "FINISH", "FLUSH"]

END = b"E"  # the first byte of an end entry (a chunk starts with "[" or "{")

# KEYS: input edge, its count, then each child's edge and count. ARGV: the input's group, the number
# of children, each child's buffer, then ops, three arguments each, applied in order:
#   A n chunk - add the chunk (n messages) to every child's edge; when an edge holds messages and
#               n more would pass its buffer, stop here and return this op's position (the caller
#               waits and sends the rest again): all of the chunk or none of it
#   K id n    - acknowledge and delete input entry `id` (n messages), if it is still pending
#   E end -   - add the end (``E:<token>``) to every child's edge
# -> {0, the fullest child edge's count} once every op is applied, or {the position of the A op that
# did not fit, that count}. An input is acknowledged in the same step as, or after, everything
# emitted for it: a crash leaves outputs without their input's ack (a duplicate later), never the reverse.
FLUSH = """
local group, nc = ARGV[1], tonumber(ARGV[2])
local function fullest()
  local most = 0
  for c = 1, nc do most = math.max(most, tonumber(redis.call('GET', KEYS[2 * c + 2]) or '0')) end
  return most
end
local i = 3 + nc
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'A' then
    local n = tonumber(ARGV[i + 1])
    for c = 1, nc do
      local count = tonumber(redis.call('GET', KEYS[2 * c + 2]) or '0')
      if count > 0 and count + n > tonumber(ARGV[2 + c]) then return {i, fullest()} end
    end
    for c = 1, nc do
      redis.call('XADD', KEYS[2 * c + 1], '*', 'm', ARGV[i + 2])
      redis.call('INCRBY', KEYS[2 * c + 2], n)
    end
  elseif op == 'K' then
    if redis.call('XACK', KEYS[1], group, ARGV[i + 1]) == 1 then
      redis.call('XDEL', KEYS[1], ARGV[i + 1])
      redis.call('DECRBY', KEYS[2], ARGV[i + 2])
    end
  else
    for c = 1, nc do redis.call('XADD', KEYS[2 * c + 1], '*', 'm', ARGV[i + 1]) end
  end
  i = i + 3
end
return {0, fullest()}
"""

# KEYS: input edge, its end key, its root's run key, then each child's edge. ARGV: group, consumer,
# the end's entry id, the end (``E:<token>``)
# -> -1 when the end is stale (its root has begun another run since): acknowledged and dropped.
# -> 1 when the edge is done: nothing is left on it but copies of this end (a flush sent again after
# a lost reply adds it twice, and the copy may sit with another replica), all delivered, this
# consumer holding the given one, so every other message was acknowledged, by whichever replica
# held it. Then the end moves on to every child, every copy here is acknowledged, and the given
# end's id is kept. Else 0 (the caller looks again later).
FINISH = """
local token = string.sub(ARGV[4], 3)
if redis.call('GET', KEYS[3]) ~= token then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  redis.call('XDEL', KEYS[1], ARGV[3])
  return -1
end
local pending = tonumber(redis.call('XPENDING', KEYS[1], ARGV[1])[1])
if pending < 1 or pending > 16 or redis.call('XLEN', KEYS[1]) ~= pending then return 0 end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] then return 0 end
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
for _, e in ipairs(entries) do
  if e[2][1] ~= 'm' or e[2][2] ~= ARGV[4] then return 0 end
end
for c = 4, #KEYS do redis.call('XADD', KEYS[c], '*', 'm', ARGV[4]) end
for _, e in ipairs(entries) do
  redis.call('XACK', KEYS[1], ARGV[1], e[1])
  redis.call('XDEL', KEYS[1], e[1])
end
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""

# KEYS: input edge, its count. ARGV: group, entry id, messages leaving the edge, then the entries to
# add in its place -> 1 when replaced. A chunk delivered again (its consumer died) goes back as one
# entry per message, each with a delivery count of its own: a message that keeps killing its replica
# is dead-lettered alone. A replica that stops or fails gives back, the same way, the messages of a
# chunk it did not finish (those it finished leave the edge).
EXPLODE = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) ~= 1 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('DECRBY', KEYS[2], ARGV[3]) end
for i = 4, #ARGV do redis.call('XADD', KEYS[1], '*', 'm', ARGV[i]) end
return 1
"""

# KEYS: input edge, its count, its dead-letter stream. ARGV: group, entry id, messages, the letter
# -> 1 when moved: acknowledged, deleted and recorded in one step.
DEAD = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) ~= 1 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('DECRBY', KEYS[2], ARGV[3])
redis.call('XADD', KEYS[3], '*', 'm', ARGV[4])
return 1
"""
