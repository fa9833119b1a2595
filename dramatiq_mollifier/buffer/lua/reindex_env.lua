-- reindex_env: bring one env's entries of the tenant listing's indexes in line with the truth
-- (its depth counter and its queue's head). The listing runs it for entries it found stale (a
-- head scored 0, "not known"; a row whose depth or head disagrees) and, env by env, to rebuild
-- the indexes of a buffer that code older than them wrote.
--
-- KEYS[1]  the depth counters (hash)
-- KEYS[2]  the listing index by org and env (sorted set)
-- KEYS[3]  the listing index by depth (sorted set)
-- KEYS[4]  the listing index by oldest queued entry (sorted set)
-- KEYS[5]  the env's queue (list)
-- KEYS[6]  optional: the entry hash of the head id the caller read (ARGV[3])
-- ARGV[1]  org id
-- ARGV[2]  env id
-- ARGV[3]  the queue's head id as the caller read it ('' for none): if the head has changed
--          since, the env scores 0 in the oldest index, to be repaired again
-- ARGV[4]  '1' to also set the depth hash's 'indexed' count to its 'total' (the last call of a
--          rebuild); '0' otherwise
-- Returns the env's depth.

local index = {KEYS[2], KEYS[3], KEYS[4]}
local member, count = index_depth(index, KEYS[1], ARGV[1], ARGV[2])
if count > 0 then
  local known = {}
  if KEYS[6] then
    known[ARGV[3]] = KEYS[6]
  end
  index_head(index[3], KEYS[5], member, false, known)
end
if ARGV[4] == '1' then
  local total = redis.call('HGET', KEYS[1], 'total')
  if total then
    redis.call('HSET', KEYS[1], 'indexed', total)
  else
    redis.call('HDEL', KEYS[1], 'indexed')
  end
end
return count
