-- ack_draining: remove a batch of entries the caller popped, in one call. Each is removed only
-- while it is DRAINING under the lease its owner token names (the caller's own pop); any other
-- (its lease expired and it was reclaimed, requeued, popped again elsewhere) is left untouched
-- and reported: a stale owner's ack is refused, never applied. A missing entry is skipped (an
-- ack that is retried after a lost reply finds it gone). An empty owner token is refused
-- (reported like a stale owner): unlike the operator's calls, this ack always names its owner.
--
-- KEYS[1]   the leases (sorted set, score = deadline in ms)
-- KEYS[2]   the depth counters (hash)
-- KEYS[3]   the listing index by org and env (sorted set)
-- KEYS[4]   the listing index by depth (sorted set)
-- KEYS[5]   the listing index by oldest queued entry (sorted set)
-- KEYS[6..] entry hash of each entry, in the order of the quadruples of ARGV
-- ARGV      message id, org id, env id, owner token of each entry, in quadruples
-- Returns {how many entries were removed, then the 1-based position of each entry refused}.

local leases, depth = KEYS[1], KEYS[2]
local removed = 0
local out = {0}
-- Depth decrements per counter field, applied once each at the end.
local deltas = {}
local fields = {}
-- The envs whose depth changed, once each, for their index entries: {org, env} by depth field.
local changed = {}
local function count(field)
  local n = deltas[field]
  if n then
    deltas[field] = n - 1
  else
    deltas[field] = -1
    fields[#fields + 1] = field
  end
end
for i = 6, #KEYS do
  local entry = KEYS[i]
  local a = (i - 6) * 4
  local id, org, env, owner = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local f = redis.call('HMGET', entry, 'status', 'org', 'env', 'owner')
  if owner ~= '' and f[1] == 'DRAINING' and f[2] == org and f[3] == env and f[4] == owner then
    drop_lease(leases, depth, id)
    redis.call('DEL', entry)
    count('total')
    count('indexed')
    count(org_field(org))
    local field = env_field(org, env)
    if not deltas[field] then
      changed[#changed + 1] = {org, env}
    end
    count(field)
    removed = removed + 1
  elseif f[1] then
    out[#out + 1] = i - 5
  end
end
for _, field in ipairs(fields) do
  adjust_counter(depth, field, deltas[field])
end
-- Only DRAINING entries left: no queue changed, so only depths did.
local index = {KEYS[3], KEYS[4], KEYS[5]}
for _, tenant in ipairs(changed) do
  index_depth(index, depth, tenant[1], tenant[2])
end
out[1] = removed
return out
