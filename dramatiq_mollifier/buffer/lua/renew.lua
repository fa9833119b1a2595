-- renew: push back the lease deadline of entries whose handler is still running, for the owner
-- that popped them. An entry no longer DRAINING under that owner's lease is left alone: renewal
-- never takes an entry back from a drainer that reclaimed or popped it since. An empty owner
-- token is refused (renews nothing): unlike the operator's calls, renewal always names its owner.
--
-- KEYS[1]   the leases (sorted set, score = deadline in ms)
-- KEYS[2..] entry hash of each entry, in the order of the pairs of ARGV[2..]
-- ARGV[1]   lease in ms, from now (server time)
-- ARGV[2..] message id and owner token of each entry, in pairs
-- Returns the 1-based positions of the entries lost: existing, and no longer DRAINING under that
-- owner. An entry that is gone (acked meanwhile) is not renewed and not reported.

local leases = KEYS[1]
local deadline = string.format('%.0f', now_ms() + tonumber(ARGV[1]))
local lost = {}
for i = 2, #KEYS do
  local a = (i - 2) * 2 + 2
  local id, owner = ARGV[a], ARGV[a + 1]
  local f = redis.call('HMGET', KEYS[i], 'status', 'owner')
  if owner ~= '' and f[1] == 'DRAINING' and f[2] == owner then
    redis.call('ZADD', leases, 'XX', deadline, id)
  elseif f[1] then
    lost[#lost + 1] = i - 1
  end
end
return lost
