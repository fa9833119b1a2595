-- ack: remove an entry in any status and everything that refers to it.
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
-- ARGV[4]  the owner token of the pop that leased it (optional; empty or absent: any status)
-- Returns 1 when removed, 0 when missing, -1 when the entry belongs to another org/env, -2 when
-- the owner named no longer holds its lease (nothing changed).

local entry, queue, envs, orgs, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, org, env = ARGV[1], ARGV[2], ARGV[3]
local status, answer = admit_entry(entry, org, env)
if not status then
  return answer
end
if not owns(entry, ARGV[4]) then
  return -2
end
local before = redis.call('LINDEX', queue, 0)
leave_live_state(status, id, queue, envs, orgs, leases, KEYS[9], org, env)
index_env({KEYS[11], KEYS[12], KEYS[13]}, KEYS[9], queue, org, env, before, {})
if redis.call('ZREM', KEYS[6], id) == 1 then
  prune_dead_letter_sets(KEYS[6], KEYS[7], KEYS[8], org, env)
end
redis.call('DEL', entry)
return 1
