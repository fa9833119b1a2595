-- evaluate_trip_and_accept: evaluate_trip, then accept only when tripped. One round trip for
-- the diverting hot path.
--
-- The steps of evaluate_trip.lua then accept.lua, written out without helper calls (see
-- _lib.lua): tests/test_trip.py checks that this leaves the same state as those two.
--
-- KEYS[1]  the env's window counter
-- KEYS[2]  the env's hold marker
-- KEYS[3]  the registry of tripped envs
-- KEYS[4]  entry hash
-- KEYS[5]  the env's queue
-- KEYS[6]  the org's set of envs with queued work
-- KEYS[7]  the orgs with queued work (sorted set, all scores 0: ordered by id)
-- KEYS[8]  the depth counters
-- KEYS[9]  the drainers' wake-up list: signalled when the first org gets queued work
-- KEYS[10]  the listing index by org and env (sorted set)
-- KEYS[11] the listing index by depth (sorted set)
-- KEYS[12] the listing index by oldest queued entry (sorted set)
-- ARGV[1]  window in ms
-- ARGV[2]  threshold
-- ARGV[3]  hold in ms
-- ARGV[4]  entry TTL in ms; 0 for none
-- ARGV[5]  message id
-- ARGV[6]  org id
-- ARGV[7]  env id
-- ARGV[8]  payload
-- ARGV[9]  the writer's mode (divert or dual_write): the drainer handles the entry by it
-- Returns count * 4 + tripped (0 or 1) * 2 + accepted (0 or 1): one integer, cheap to parse.

local counter, hold = KEYS[1], KEYS[2]
local org, env = ARGV[6], ARGV[7]
local count = redis.call('INCR', counter)
if count == 1 then
  redis.call('PEXPIRE', counter, ARGV[1])
end
-- Not over the threshold: tripped (and accepted) only while the hold marker lives, or while
-- the env still has entries in the buffer (sticky: a new message joins the backlog behind it
-- instead of overtaking it on the broker).
if count <= tonumber(ARGV[2]) and redis.call('EXISTS', hold) == 0
    and (tonumber(redis.call('HGET', KEYS[8], env_field(org, env))) or 0) <= 0 then
  return count * 4
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local hold_ms = tonumber(ARGV[3])
if count > tonumber(ARGV[2]) and hold_ms > 0 then
  local step = math.max(math.floor(hold_ms / 2), 1)
  local deadline = string.format('%.0f', (math.floor((now + hold_ms) / step) + 1) * step)
  if redis.call('SET', hold, deadline, 'PX', hold_ms, 'GET') ~= deadline then
    redis.call('ZADD', KEYS[3], deadline, tenant_tag(org, env))
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('%.0f', now))
  end
end

local entry = KEYS[4]
if redis.call('EXISTS', entry) == 1 then
  return count * 4 + 2
end
redis.call('HSET', entry, 'org', org, 'env', env, 'payload', ARGV[8], 'status', 'QUEUED',
  'attempts', 0, 'created_at_ms', string.format('%.0f', now), 'mode', ARGV[9])
local ttl_ms = tonumber(ARGV[4])
if ttl_ms > 0 then
  redis.call('PEXPIRE', entry, ttl_ms)
end
-- A queue that was not empty already has its env and org registered (prune_queue_sets
-- unregisters them only once it is empty): registering is for the first entry alone.
local member = tenant_member(org, env)
if redis.call('RPUSH', KEYS[5], ARGV[5]) == 1 then
  -- The buffer had no queued work: one idle drainer wakes (see accept.lua).
  note_queued(KEYS[6], KEYS[7], org, env, KEYS[9])
  -- The entry is the queue's head: the env's score in the oldest index (index_head's work).
  redis.call('ZADD', KEYS[12], string.format('%.0f', now), member)
end
local depth = KEYS[8]
local field = 'total'
if redis.call('HINCRBY', depth, field, 1) <= 0 then
  redis.call('HDEL', depth, field)
end
field = org_field(org)
if redis.call('HINCRBY', depth, field, 1) <= 0 then
  redis.call('HDEL', depth, field)
end
field = 'indexed'
if redis.call('HINCRBY', depth, field, 1) <= 0 then
  redis.call('HDEL', depth, field)
end
field = env_field(org, env)
local env_depth = redis.call('HINCRBY', depth, field, 1)
if env_depth <= 0 then
  redis.call('HDEL', depth, field)
end
-- index_depth's work: the env is listed, its depth one more.
if env_depth > 0 then
  if env_depth == 1 then
    redis.call('ZADD', KEYS[10], 0, member)
  end
  redis.call('ZADD', KEYS[11], -env_depth, member)
end
return count * 4 + 3
