-- release: give back a DRAINING entry whose handler never ran (its drainer is stopping): QUEUED
-- again at the head of its env's queue, attempts unchanged, lease dropped. The caller releases
-- a batch newest first, so the batch keeps its order at the head.
--
-- KEYS[1]  entry hash
-- KEYS[2]  the env's queue (list)
-- KEYS[3]  the org's set of envs with queued work
-- KEYS[4]  the orgs with queued work (sorted set, all scores 0: ordered by id)
-- KEYS[5]  the leases (sorted set, score = deadline in ms)
-- KEYS[6]  the env's dead letters (unused: the layout every per-entry script shares)
-- KEYS[7]  the org's set of envs with dead letters (unused)
-- KEYS[8]  the set of orgs with dead letters (unused)
-- KEYS[9]  the depth counters (hash; only the lease's tenant record changes: a DRAINING entry
--          is counted as a QUEUED one is)
-- KEYS[10] the drainers' wake-up list: pushed when the buffer had no queued work
-- KEYS[11] the listing index by org and env (sorted set)
-- KEYS[12] the listing index by depth (sorted set)
-- KEYS[13] the listing index by oldest queued entry (sorted set)
-- ARGV[1]  message id
-- ARGV[2]  org id the caller believes the entry belongs to
-- ARGV[3]  env id the caller believes the entry belongs to
-- ARGV[4]  entry TTL in ms; 0 for none
-- ARGV[5]  the owner token of the pop that leased it (optional; empty or absent: no check)
-- Returns 1 when released; 0 when missing or not DRAINING (acked, or reclaimed and popped
-- again elsewhere); -1 when the entry belongs to another org/env; -2 when the owner named no
-- longer holds its lease.

local entry, queue, envs, orgs = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, org, env = ARGV[1], ARGV[2], ARGV[3]
local status, answer = admit_entry(entry, org, env, 'DRAINING')
if not status then
  return answer
end
if not owns(entry, ARGV[5]) then
  return -2
end
drop_lease(KEYS[5], KEYS[9], id)
redis.call('HSET', entry, 'status', 'QUEUED')
-- Not committed to the broker any more: a cancel may remove it again.
redis.call('HDEL', entry, 'committed')
apply_ttl(entry, tonumber(ARGV[4]))
local before = redis.call('LINDEX', queue, 0)
redis.call('LPUSH', queue, id)
note_queued(envs, orgs, org, env, KEYS[10])
index_env({KEYS[11], KEYS[12], KEYS[13]}, KEYS[9], queue, org, env, before, {[id] = entry})
return 1
