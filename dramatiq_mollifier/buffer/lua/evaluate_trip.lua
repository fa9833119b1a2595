-- evaluate_trip: count one enqueue of an env in its fixed window and say whether it is tripped.
-- Under the threshold it is tripped while its hold marker lives or while it has entries in the
-- buffer (sticky: a new message joins the backlog instead of overtaking it on the broker).
--
-- Above the threshold, the hold marker is (re-)armed for the hold. Its value is the env's score
-- in the tripped registry: a deadline no earlier than the marker's expiry, rounded up to a step
-- of half a hold. The registry is written only when that deadline moves (about twice per hold
-- while the env stays tripped, not on every send) and pruned then, so it stays bounded without
-- being listed. A member may outlive its marker by up to a step: the listing checks markers.
--
-- On the pass-through hot path, so written out without helper calls (see _lib.lua);
-- evaluate_trip_and_accept.lua starts with the same steps, and tests/test_trip.py checks that
-- both leave the same state.
--
-- KEYS[1]  the env's window counter
-- KEYS[2]  the env's hold marker
-- KEYS[3]  the registry of tripped envs (sorted set, score = hold deadline in ms)
-- KEYS[4]  the depth counters
-- ARGV[1]  window in ms (the counter's expiry, set when the counter is created)
-- ARGV[2]  threshold: tripped when the count is strictly greater
-- ARGV[3]  hold in ms: how long the marker lives after the last over-threshold count
-- ARGV[4]  org id
-- ARGV[5]  env id
-- Returns count * 2 + tripped (0 or 1): one integer, cheap to parse.

local counter, hold = KEYS[1], KEYS[2]
local count = redis.call('INCR', counter)
if count == 1 then
  redis.call('PEXPIRE', counter, ARGV[1])
end
if count <= tonumber(ARGV[2]) then
  if redis.call('EXISTS', hold) == 1
      or (tonumber(redis.call('HGET', KEYS[4], env_field(ARGV[4], ARGV[5]))) or 0) > 0 then
    return count * 2 + 1
  end
  return count * 2
end
local hold_ms = tonumber(ARGV[3])
if hold_ms > 0 then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local step = math.max(math.floor(hold_ms / 2), 1)
  local deadline = string.format('%.0f', (math.floor((now + hold_ms) / step) + 1) * step)
  if redis.call('SET', hold, deadline, 'PX', hold_ms, 'GET') ~= deadline then
    redis.call('ZADD', KEYS[3], deadline, tenant_tag(ARGV[4], ARGV[5]))
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('%.0f', now))
  end
end
return count * 2 + 1
