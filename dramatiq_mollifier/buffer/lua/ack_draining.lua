-- ack_draining: remove a batch of entries the caller popped, in one call. Each is removed only
-- while it is DRAINING under the lease its owner token names (the caller's own pop); any other
-- (its lease expired and it was reclaimed, requeued, popped again elsewhere) is left untouched
-- and reported: a stale owner's ack is refused, never applied. A missing entry is skipped (an
-- ack that is retried after a lost reply finds it gone). An empty owner token is refused
-- (reported like a stale owner): unlike the operator's calls, this ack always names its owner.
--
-- KEYS[1]   the leases (sorted set, score = deadline in ms)
-- KEYS[2]   the depth counters (hash)
-- KEYS[3..] entry hash of each entry, in the order of the quadruples of ARGV
-- ARGV      message id, org id, env id, owner token of each entry, in quadruples
-- Returns {how many entries were removed, then the 1-based position of each entry refused}.

local leases, depth = KEYS[1], KEYS[2]
local removed = 0
local out = {0}
-- Depth decrements per counter field, applied once each at the end.
local deltas = {}
local fields = {}
local function count(field)
  local n = deltas[field]
  if n then
    deltas[field] = n - 1
  else
    deltas[field] = -1
    fields[#fields + 1] = field
  end
end
for i = 3, #KEYS do
  local entry = KEYS[i]
  local a = (i - 3) * 4
  local id, org, env, owner = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local f = redis.call('HMGET', entry, 'status', 'org', 'env', 'owner')
  if owner ~= '' and f[1] == 'DRAINING' and f[2] == org and f[3] == env and f[4] == owner then
    drop_lease(leases, depth, id)
    redis.call('DEL', entry)
    count('total')
    count(org_field(org))
    count(env_field(org, env))
    removed = removed + 1
  elseif f[1] then
    out[#out + 1] = i - 2
  end
end
for _, field in ipairs(fields) do
  adjust_counter(depth, field, deltas[field])
end
out[1] = removed
return out
