-- accept: store a new QUEUED entry and append its id to its env's FIFO queue.
--
-- evaluate_trip_and_accept.lua does the same once tripped (spelled out there for speed);
-- tests/test_trip.py checks that both leave the same state.
--
-- KEYS[1]  entry hash
-- KEYS[2]  the env's queue (list)
-- KEYS[3]  the org's set of envs with queued work
-- KEYS[4]  the orgs with queued work (sorted set, all scores 0: ordered by id)
-- KEYS[5]  the depth counters (hash)
-- KEYS[6]  the drainers' wake-up list: signalled when the first org gets queued work
-- KEYS[7]  the listing index by org and env (sorted set)
-- KEYS[8]  the listing index by depth (sorted set)
-- KEYS[9]  the listing index by oldest queued entry (sorted set)
-- ARGV[1]  message id
-- ARGV[2]  org id
-- ARGV[3]  env id
-- ARGV[4]  payload (bytes, stored as is)
-- ARGV[5]  entry TTL in ms; 0 for none
-- ARGV[6]  the writer's mode (divert or dual_write): the drainer handles the entry by it
-- Returns 1 when stored, 0 when an entry with this id exists in any status (nothing changed).

local entry = KEYS[1]
local org, env = ARGV[2], ARGV[3]
if redis.call('EXISTS', entry) == 1 then
  return 0
end
redis.call('HSET', entry, 'org', org, 'env', env, 'payload', ARGV[4], 'status', 'QUEUED',
  'attempts', 0, 'created_at_ms', string.format('%.0f', now_ms()), 'mode', ARGV[6])
local ttl_ms = tonumber(ARGV[5])
if ttl_ms > 0 then
  redis.call('PEXPIRE', entry, ttl_ms)
end
local before = redis.call('LINDEX', KEYS[2], 0)
redis.call('RPUSH', KEYS[2], ARGV[1])
-- The buffer had no queued work: idle drainers block on the wake-up list, one of them wakes now.
note_queued(KEYS[3], KEYS[4], org, env, KEYS[6])
adjust_depth(KEYS[5], org, env, 1)
index_env({KEYS[7], KEYS[8], KEYS[9]}, KEYS[5], KEYS[2], org, env, before, {[ARGV[1]] = entry})
return 1
