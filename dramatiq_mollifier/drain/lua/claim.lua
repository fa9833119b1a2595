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
-- ARGV[1]  slots wanted
-- ARGV[2]  the budget: most members of KEYS[1]
-- ARGV[3]  the placeholder prefix of the caller (unique per drainer)
-- ARGV[4]  how long a member lives, in ms
-- ARGV[5]  the fleet-wide rate cap in messages per second; 0 for none
-- Returns {granted, in_use}: the slots granted (placeholders ARGV[3] .. 1..granted) and how many
-- members KEYS[1] held before this claim.

local outstanding, bucket = KEYS[1], KEYS[2]
local wanted, budget, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local ttl_ms, rate = tonumber(ARGV[4]), tonumber(ARGV[5])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', outstanding, '-inf', now)
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
  return {0, in_use}
end
local deadline = now + ttl_ms
local args = {}
for i = 1, granted do
  args[#args + 1] = deadline
  args[#args + 1] = prefix .. i
end
redis.call('ZADD', outstanding, unpack(args))
return {granted, in_use}
