-- requeue: attempts + 1, back to QUEUED at the tail of its env's queue (drained after what is
-- already there); the env and org are recorded again and any lease or dead letter is dropped.
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
-- KEYS[10] the drainers' wake-up list: pushed when the buffer had no queued work
-- KEYS[11] the listing index by org and env (sorted set)
-- KEYS[12] the listing index by depth (sorted set)
-- KEYS[13] the listing index by oldest queued entry (sorted set)
-- ARGV[1]  message id
-- ARGV[2]  org id the caller believes the entry belongs to
-- ARGV[3]  env id the caller believes the entry belongs to
-- ARGV[4]  entry TTL in ms; 0 for none
-- ARGV[5]  the owner token of the pop that leased it (optional; empty or absent: no check)
-- Returns 1 when requeued, 0 when missing (nothing created), -1 when the entry belongs to
-- another org/env, -2 when the owner named no longer holds its lease (nothing changed).

local entry, queue, envs, orgs = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, org, env = ARGV[1], ARGV[2], ARGV[3]
local status, answer = admit_entry(entry, org, env)
if not status then
  return answer
end
if not owns(entry, ARGV[5]) then
  return -2
end
local before = redis.call('LINDEX', queue, 0)
if status == 'QUEUED' then
  redis.call('LREM', queue, 1, id)
elseif status == 'DRAINING' then
  drop_lease(KEYS[5], KEYS[9], id)
else
  if redis.call('ZREM', KEYS[6], id) == 1 then
    prune_dead_letter_sets(KEYS[6], KEYS[7], KEYS[8], org, env)
  end
  adjust_depth(KEYS[9], org, env, 1)
end
redis.call('HSET', entry, 'status', 'QUEUED')
-- Not committed to the broker any more: a cancel may remove it again.
redis.call('HDEL', entry, 'committed')
redis.call('HINCRBY', entry, 'attempts', 1)
apply_ttl(entry, tonumber(ARGV[4]))
redis.call('RPUSH', queue, id)
note_queued(envs, orgs, org, env, KEYS[10])
index_env({KEYS[11], KEYS[12], KEYS[13]}, KEYS[9], queue, org, env, before, {[id] = entry})
return 1
