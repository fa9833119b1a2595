-- claim: take up to ARGV[1] slots of the fleet-wide drain budget, as placeholders.
--
-- The budget caps drained messages that are in the broker and not yet started by a worker
-- (their ids are members of KEYS[1]); a worker's Mollifier removes an id when it starts the
-- message. Slots on their way to the broker (claimed, popped, in a drainer's handlers) are held in
-- KEYS[4] until the drainer reports them written (landed.lua). The caller counts its own (ARGV[9])
-- against the budget, not the other drainers': a quiet message does not wait behind messages
-- not yet written, and counting every drainer's left the broker queue empty while two drainers'
-- handlers held most of a small budget. All of them together count against twice the budget,
-- so what the fleet's drainers hold at once stays bounded however many they are. A caller that
-- moves its messages inside Redis (drain/redis_move.py) holds slots on their way for two round
-- trips only, and counts every drainer's (ARGV[10]): two such drainers claiming at once put up to
-- twice the budget in the broker, and a quiet message waited behind it. A member whose deadline
-- has passed is dropped (a message lost from the broker, a purged queue, a drainer that died), so
-- a leak heals within ARGV[4] ms. Placeholders are bound to message ids by bind.lua once the
-- caller knows which entries it popped, so two drainers can never both take the last slot.
--
-- KEYS[1]  drained messages in the broker (sorted set: member = message id, score = deadline ms)
-- KEYS[2]  the drain-rate bucket (hash: tokens, at_ms); only read when ARGV[5] > 0
-- KEYS[3]  the fleet's consumption rate (see free.lua); only read when ARGV[6] > 0
-- KEYS[4]  slots on their way to the broker (sorted set: placeholders and bound ids, score =
--          deadline ms)
-- ARGV[1]  slots wanted
-- ARGV[2]  the budget's ceiling
-- ARGV[3]  the placeholder prefix of the caller (unique per drainer)
-- ARGV[4]  how long a member lives, in ms
-- ARGV[5]  the fleet-wide rate cap in messages per second; 0 for none
-- ARGV[6]  the target wait in ms: the budget is ARGV[7] plus the consumption rate times it, at
--          most ARGV[2]; 0 makes the budget ARGV[2]
-- ARGV[7]  the budget's floor: slots for what consumers have prefetched
-- ARGV[8]  the consumption rate's window, in ms (see free.lua)
-- ARGV[9]  the caller's own slots on their way to the broker
-- ARGV[10] 1 when every drainer's slots on their way count against the budget (a caller that
--          moves in Redis; its placeholders then live 1 s at most), else 0
-- Returns {granted, in_broker, budget, on_the_way, expired}: the slots granted (placeholders
-- ARGV[3] .. 1..granted), the members of KEYS[1] and KEYS[4] before this claim, the budget this
-- claim was held to, and the members of KEYS[1] whose deadline had passed (never started).

local outstanding, bucket, consumed, on_the_way = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local wanted, budget, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local ttl_ms, rate = tonumber(ARGV[4]), tonumber(ARGV[5])
local target_ms, floor, window_ms = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local own = tonumber(ARGV[9]) or 0
local count_all = ARGV[10] == '1'
-- How long a mover's placeholders live, in ms, at most (see the deadline below).
local MOVE_CLAIM_MS = 1000
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expired = redis.call('ZREMRANGEBYSCORE', outstanding, '-inf', now)
redis.call('ZREMRANGEBYSCORE', on_the_way, '-inf', now)
if target_ms > 0 then
  local state = redis.call('HMGET', consumed, 'n', 'at_ms', 'rate')
  local consumption = tonumber(state[3]) or 0
  local at_ms = tonumber(state[2])
  if at_ms and now - at_ms > 2 * window_ms then
    -- No window closed lately: the workers slowed down (or stopped); believe the open window.
    consumption = math.min(consumption, (tonumber(state[1]) or 0) * 1000 / (now - at_ms))
  end
  budget = math.min(budget, floor + math.ceil(consumption * target_ms / 1000))
end
local in_broker = redis.call('ZCARD', outstanding)
local moving = redis.call('ZCARD', on_the_way)
local granted = math.min(wanted, budget - in_broker - own, 2 * budget - in_broker - moving)
if count_all then
  granted = math.min(granted, budget - in_broker - moving)
end
if rate > 0 and granted > 0 then
  -- A token bucket holding at most one second of the rate.
  local state = redis.call('HMGET', bucket, 'tokens', 'at_ms')
  local tokens = tonumber(state[1]) or rate
  local at_ms = tonumber(state[2]) or now
  tokens = math.min(rate, tokens + (now - at_ms) * rate / 1000)
  granted = math.min(granted, math.floor(tokens))
  redis.call('HSET', bucket, 'tokens', tostring(tokens - math.max(granted, 0)), 'at_ms', now)
  redis.call('PEXPIRE', bucket, 60000)
end
if granted <= 0 then
  return {0, in_broker, budget, moving, expired}
end
local deadline = now + ttl_ms
if count_all then
  -- Every mover counts these, and the move gives them up within its call: a claim that is
  -- never spent (its drainer died, its reply was lost) must not hold the fleet's budget for
  -- a whole slot lifetime.
  deadline = now + math.min(ttl_ms, MOVE_CLAIM_MS)
end
local args = {}
for i = 1, granted do
  args[#args + 1] = deadline
  args[#args + 1] = prefix .. i
end
redis.call('ZADD', on_the_way, unpack(args))
return {granted, in_broker, budget, moving, expired}
