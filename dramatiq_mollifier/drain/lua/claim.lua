-- claim: take up to ARGV[1] slots of the fleet-wide drain budget, as placeholders.
--
-- The budget caps drained messages that are in the broker and not yet started by a worker
-- (their ids are members of KEYS[1]); a worker's Mollifier removes an id when it starts the
-- message. A member whose deadline has passed is dropped (a message lost from the broker, a
-- purged queue), so a leak heals within ARGV[4] ms. Placeholders are bound to message ids by
-- bind.lua once the caller knows which entries it popped, so two drainers can never both take
-- the last slot.
--
-- KEYS[1]  outstanding drained messages (sorted set: member = message id or placeholder,
--          score = deadline in ms)
-- KEYS[2]  the drain-rate bucket (hash: tokens, at_ms); only read when ARGV[5] > 0
-- KEYS[3]  the fleet's consumption rate (see free.lua); only read when ARGV[6] > 0
-- ARGV[1]  slots wanted
-- ARGV[2]  the most members of KEYS[1] (the budget's ceiling)
-- ARGV[3]  the placeholder prefix of the caller (unique per drainer)
-- ARGV[4]  how long a member lives, in ms
-- ARGV[5]  the fleet-wide rate cap in messages per second; 0 for none
-- ARGV[6]  the target wait in ms: the budget is ARGV[7] plus the consumption rate times it, at
--          most ARGV[2]; 0 makes the budget ARGV[2]
-- ARGV[7]  the budget's floor: slots for what is on its way (in drainers' hands, prefetched)
-- ARGV[8]  the consumption rate's window, in ms (see free.lua)
-- Returns {granted, in_use, budget}: the slots granted (placeholders ARGV[3] .. 1..granted), how
-- many members KEYS[1] held before this claim, and the budget this claim was held to.

local outstanding, bucket, consumed = KEYS[1], KEYS[2], KEYS[3]
local wanted, budget, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local ttl_ms, rate = tonumber(ARGV[4]), tonumber(ARGV[5])
local target_ms, floor, window_ms = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', outstanding, '-inf', now)
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
local in_use = redis.call('ZCARD', outstanding)
local granted = math.min(wanted, budget - in_use)
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
  return {0, in_use, budget}
end
local deadline = now + ttl_ms
local args = {}
for i = 1, granted do
  args[#args + 1] = deadline
  args[#args + 1] = prefix .. i
end
redis.call('ZADD', outstanding, unpack(args))
return {granted, in_use, budget}
