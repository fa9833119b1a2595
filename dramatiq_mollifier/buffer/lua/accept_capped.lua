-- accept_capped: accept.lua for a tenant under a cap: store the entry only while its env and its
-- org hold fewer buffered (QUEUED + DRAINING) entries than their caps. Over a cap, the entry is
-- either not stored (the caller passes the message through or rejects it) or stored as a dead
-- letter with error code 'cap_exceeded', by ARGV[9].
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
-- KEYS[10] the env's dead letters (sorted set, score = failed at in ms)
-- KEYS[11] the org's set of envs with dead letters
-- KEYS[12] the set of orgs with dead letters
-- ARGV[1]  message id
-- ARGV[2]  org id
-- ARGV[3]  env id
-- ARGV[4]  payload (bytes, stored as is)
-- ARGV[5]  entry TTL in ms; 0 for none
-- ARGV[6]  the writer's mode (divert or dual_write)
-- ARGV[7]  the env's cap; -1 for none
-- ARGV[8]  the org's cap; -1 for none
-- ARGV[9]  1: dead-letter a message over a cap; 0: leave it to the caller
-- ARGV[10] the dead letter's error message when over the env's cap
-- ARGV[11] the dead letter's error message when over the org's cap
-- Returns 1 stored, 0 an entry with this id exists (nothing changed), 2 over the env's cap,
-- 3 over the org's cap (nothing stored), 4 and 5 the same but stored as a dead letter.

local entry, depth = KEYS[1], KEYS[5]
local id, org, env = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', entry) == 1 then
  return 0
end
local env_cap, org_cap = tonumber(ARGV[7]), tonumber(ARGV[8])
local over = 0
if env_cap >= 0 and (tonumber(redis.call('HGET', depth, env_field(org, env))) or 0) >= env_cap then
  over = 2
elseif org_cap >= 0 and (tonumber(redis.call('HGET', depth, org_field(org))) or 0) >= org_cap then
  over = 3
end
if over > 0 and ARGV[9] ~= '1' then
  return over
end
local now = string.format('%.0f', now_ms())
redis.call('HSET', entry, 'org', org, 'env', env, 'payload', ARGV[4], 'status', 'QUEUED',
  'attempts', 0, 'created_at_ms', now, 'mode', ARGV[6])
apply_ttl(entry, tonumber(ARGV[5]))
if over > 0 then
  local message = ARGV[11]
  if over == 2 then
    message = ARGV[10]
  end
  redis.call('HSET', entry, 'status', 'FAILED', 'error_code', 'cap_exceeded', 'error_message', message)
  redis.call('ZADD', KEYS[10], now, id)
  redis.call('SADD', KEYS[11], env)
  redis.call('SADD', KEYS[12], org)
  return over + 2
end
local before = redis.call('LINDEX', KEYS[2], 0)
redis.call('RPUSH', KEYS[2], id)
note_queued(KEYS[3], KEYS[4], org, env, KEYS[6])
adjust_depth(depth, org, env, 1)
index_env({KEYS[7], KEYS[8], KEYS[9]}, depth, KEYS[2], org, env, before, {[id] = entry})
return 1
