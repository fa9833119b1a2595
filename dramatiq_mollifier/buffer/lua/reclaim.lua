-- reclaim: put a DRAINING entry whose lease deadline has passed back at the tail of its queue.
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
-- ARGV[5]  how many times an entry's lease may expire before it is dead-lettered instead (an
--          entry no drainer manages to settle: a reply too large to read, a handler that never
--          returns); 0 for never
-- Returns 1 when reclaimed; 2 when dead-lettered (error code LeaseExpired); 0 when the entry is
-- missing, no longer DRAINING or its lease is still live (a stale lease is dropped, and a
-- missing entry's depth counts are given back); -1 when the entry belongs to another org/env.

local entry, queue, envs, orgs, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local depth = KEYS[9]
local id, org, env = ARGV[1], ARGV[2], ARGV[3]
local status, answer = admit_entry(entry, org, env, 'DRAINING')
if not status then
  if answer == 0 then
    -- The lease is stale. An entry that vanished while DRAINING (evicted, deleted by hand) is
    -- still counted: its counts go back under the tenant its pop recorded.
    if redis.call('EXISTS', entry) == 0 then
      local tag = redis.call('HGET', depth, lease_field(id))
      if tag then
        local lost_org, lost_env = parse_tenant_tag(tag)
        adjust_depth(depth, lost_org, lost_env, -1)
        index_depth({KEYS[11], KEYS[12], KEYS[13]}, depth, lost_org, lost_env)
      end
    end
    drop_lease(leases, depth, id)
  end
  return answer
end
local deadline = redis.call('ZSCORE', leases, id)
if deadline and tonumber(deadline) > now_ms() then
  return 0
end
drop_lease(leases, depth, id)
local expired = redis.call('HINCRBY', entry, 'leases_expired', 1)
local max_expired = tonumber(ARGV[5]) or 0
if max_expired > 0 and expired >= max_expired then
  adjust_depth(depth, org, env, -1)
  index_depth({KEYS[11], KEYS[12], KEYS[13]}, depth, org, env)
  redis.call('HDEL', entry, 'committed')
  redis.call('HSET', entry, 'status', 'FAILED', 'error_code', 'LeaseExpired', 'error_message',
    string.format('its lease expired %d times without its drainer settling it', expired))
  apply_ttl(entry, tonumber(ARGV[4]))
  redis.call('ZADD', KEYS[6], string.format('%.0f', now_ms()), id)
  redis.call('SADD', KEYS[7], env)
  redis.call('SADD', KEYS[8], org)
  return 2
end
redis.call('HSET', entry, 'status', 'QUEUED')
-- Not committed to the broker any more: a cancel may remove it again.
redis.call('HDEL', entry, 'committed')
apply_ttl(entry, tonumber(ARGV[4]))
local before = redis.call('LINDEX', queue, 0)
redis.call('RPUSH', queue, id)
note_queued(envs, orgs, org, env, KEYS[10])
index_env({KEYS[11], KEYS[12], KEYS[13]}, depth, queue, org, env, before, {[id] = entry})
return 1
