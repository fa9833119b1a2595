-- purge_failed: delete FAILED entries of one env's dead letters.
--
-- KEYS[1]   the env's dead letters (sorted set)
-- KEYS[2]   the org's set of envs with dead letters
-- KEYS[3]   the set of orgs with dead letters
-- KEYS[4..] entry hash of each id, in the order of ARGV[3..]
-- ARGV[1]   org id
-- ARGV[2]   env id
-- ARGV[3..] message ids read from the dead letters
-- Returns how many FAILED entries were deleted. Ids no longer in the dead letters are left
-- alone; members whose entry expired or changed are dropped without being counted.

local failed, org, env = KEYS[1], ARGV[1], ARGV[2]
local deleted = 0
for i = 3, #ARGV do
  local id, entry = ARGV[i], KEYS[i + 1]
  if redis.call('ZREM', failed, id) == 1 then
    local f = redis.call('HMGET', entry, 'status', 'org', 'env')
    if f[1] == 'FAILED' and f[2] == org and f[3] == env then
      redis.call('DEL', entry)
      deleted = deleted + 1
    end
  end
end
prune_dead_letter_sets(failed, KEYS[2], KEYS[3], org, env)
return deleted
