-- fold_trip_counts: add the enqueues one process counted locally (trip_evaluator = local) to the
-- fleet's trip windows, and say what each window now holds. One call folds many envs.
--
-- Per env, the counting of evaluate_trip.lua by n at a time: the window counter (expiring with
-- the window, set when the counter is created), the hold marker re-armed while the count is
-- over the threshold, and the tripped registry moved when the marker's deadline moves. With a
-- fleet-wide ceiling (ARGV[4] > 0), the same for one counter of every env's enqueues.
--
-- KEYS[1]  the registry of tripped envs (sorted set, score = hold deadline in ms)
-- KEYS[2]  the depth counters (an env with entries in the buffer keeps diverting: sticky)
-- KEYS[3]  the fleet-wide window counter (all envs)
-- KEYS[4]  the fleet-wide hold marker
-- KEYS[3 + 2i], KEYS[4 + 2i]  env i's window counter and hold marker (i = 1, 2, ...)
-- ARGV[1]  window in ms
-- ARGV[2]  per-env threshold: tripped when the count is strictly greater
-- ARGV[3]  hold in ms
-- ARGV[4]  fleet-wide threshold; 0 for none (the fleet-wide keys are then left alone)
-- ARGV[5]  count to add to the fleet-wide window (a fold split into several calls adds its
--          whole count in the first)
-- ARGV[3 + 3i], ARGV[4 + 3i], ARGV[5 + 3i]  env i's org id, env id and count to add (>= 0)
-- Returns {fleet count, fleet window ttl ms, fleet hold ttl ms, then per env i: count,
-- window ttl ms, hold ttl ms, entries in the buffer}. A ttl is <= 0 for a key that is absent.

local window_ms, threshold, hold_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fleet_threshold = tonumber(ARGV[4])
local now = nil

local function arm(hold, member)
  if now == nil then
    now = now_ms()
  end
  local step = math.max(math.floor(hold_ms / 2), 1)
  local deadline = string.format('%.0f', (math.floor((now + hold_ms) / step) + 1) * step)
  if redis.call('SET', hold, deadline, 'PX', hold_ms, 'GET') ~= deadline and member ~= nil then
    redis.call('ZADD', KEYS[1], deadline, member)
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
  end
end

local function add(counter, n)
  local count = redis.call('INCRBY', counter, n)
  if count == n then
    redis.call('PEXPIRE', counter, window_ms)
  end
  return count
end

local reply = {0, 0, 0}
local envs = (#KEYS - 4) / 2
for i = 1, envs do
  local counter, hold = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local org, env, n = ARGV[3 + 3 * i], ARGV[4 + 3 * i], tonumber(ARGV[5 + 3 * i])
  local count = add(counter, n)
  if count > threshold and hold_ms > 0 and n > 0 then
    arm(hold, tenant_tag(org, env))
  end
  local base = 4 * i
  reply[base] = count
  reply[base + 1] = redis.call('PTTL', counter)
  reply[base + 2] = redis.call('PTTL', hold)
  reply[base + 3] = tonumber(redis.call('HGET', KEYS[2], env_field(org, env))) or 0
end
if fleet_threshold > 0 then
  local total = tonumber(ARGV[5])
  local count = add(KEYS[3], total)
  if count > fleet_threshold and hold_ms > 0 and total > 0 then
    arm(KEYS[4], nil)
  end
  reply[1] = count
  reply[2] = redis.call('PTTL', KEYS[3])
  reply[3] = redis.call('PTTL', KEYS[4])
end
return reply
