-- fail: mark an entry FAILED with its last error and keep it in its env's dead letters.
--
-- KEYS[1]  entry hash
-- KEYS[2]  the env's queue (list)
-- KEYS[3]  the org's set of envs with queued work
-- KEYS[4]  the orgs with queued work (sorted set, all scores 0: ordered by id)
-- KEYS[5]  the leases (sorted set, score = deadline in ms)
-- KEYS[6]  the env's dead letters (sorted set, score = failed at in ms)
-- KEYS[7]  the org's set of envs with dead letters
-- KEYS[8]  the set of orgs with dead letters
-- KEYS[9]  the depth counters (hash)
-- KEYS[10] the drainers' wake-up list (unused: the layout every per-entry script shares)
-- KEYS[11] the listing index by org and env (sorted set)
-- KEYS[12] the listing index by depth (sorted set)
-- KEYS[13] the listing index by oldest queued entry (sorted set)
-- ARGV[1]  message id
-- ARGV[2]  org id the caller believes the entry belongs to
-- ARGV[3]  env id the caller believes the entry belongs to
-- ARGV[4]  error code
-- ARGV[5]  error message
-- ARGV[6]  entry TTL in ms; 0 for none
-- ARGV[7]  the owner token of the pop that leased it (optional; empty or absent: any status)
-- Returns 1 when marked, 0 when missing (nothing created), -1 when the entry belongs to
-- another org/env, -2 when the owner named no longer holds its lease (nothing changed).

local entry, queue, envs, orgs = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, org, env = ARGV[1], ARGV[2], ARGV[3]
local status, answer = admit_entry(entry, org, env)
if not status then
  return answer
end
if not owns(entry, ARGV[7]) then
  return -2
end
local before = redis.call('LINDEX', queue, 0)
leave_live_state(status, id, queue, envs, orgs, KEYS[5], KEYS[9], org, env)
index_env({KEYS[11], KEYS[12], KEYS[13]}, KEYS[9], queue, org, env, before, {})
redis.call('HSET', entry, 'status', 'FAILED', 'error_code', ARGV[4], 'error_message', ARGV[5])
-- Not committed to the broker any more: a cancel may remove it again.
redis.call('HDEL', entry, 'committed')
apply_ttl(entry, tonumber(ARGV[6]))
redis.call('ZADD', KEYS[6], string.format('%.0f', now_ms()), id)
redis.call('SADD', KEYS[7], env)
redis.call('SADD', KEYS[8], org)
return 1
