-- ack_draining: remove a batch of DRAINING entries whose tenants the caller knows (the drainer
-- acking what it popped), in one call. An entry in another status or of another tenant than
-- the caller says is left untouched and reported, for the caller to ack on its own (ack.lua
-- knows every status); a missing entry is skipped.
--
-- KEYS[1]   the leases (sorted set, score = deadline in ms)
-- KEYS[2]   the depth counters (hash)
-- KEYS[3..] entry hash of each entry, in the order of the triples of ARGV
-- ARGV      message id, org id, env id of each entry, in triples
-- Returns {how many entries were removed, then the 1-based position of each entry left for
-- the caller}.

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
  local a = (i - 3) * 3
  local id, org, env = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local f = redis.call('HMGET', entry, 'status', 'org', 'env')
  if f[1] == 'DRAINING' and f[2] == org and f[3] == env then
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
