-- reindex_env: bring envs' entries of the tenant listing's indexes in line with the truth (each
-- env's depth counter and its queue's head). The listing runs it for entries it found stale (a
-- head scored 0, "not known"; a row whose depth or head disagrees) and, a batch of envs per
-- call, to rebuild the indexes of a buffer that code older than them wrote.
--
-- KEYS[1]  the depth counters (hash)
-- KEYS[2]  the listing index by org and env (sorted set)
-- KEYS[3]  the listing index by depth (sorted set)
-- KEYS[4]  the listing index by oldest queued entry (sorted set)
-- KEYS[5..] for each env, in pairs: its queue (list), then the entry hash of the head id the
--          caller read (the queue key again when it read none)
-- ARGV[1]  '1' to also set the depth hash's 'indexed' count to its 'total' (the last call of a
--          rebuild); '0' otherwise
-- ARGV[2..] for each env, in triples: org id, env id, the queue's head id as the caller read it
--          ('' for none). A head that changed since scores 0 in the oldest index, "not known",
--          to be repaired again.
-- Returns how many of the envs have buffered work.

local index = {KEYS[2], KEYS[3], KEYS[4]}
local listed = 0
for i = 0, (#KEYS - 4) / 2 - 1 do
  local org, env, head = ARGV[2 + i * 3], ARGV[3 + i * 3], ARGV[4 + i * 3]
  local member, count = index_depth(index, KEYS[1], org, env)
  if count > 0 then
    listed = listed + 1
    local known = {}
    if head ~= '' then
      known[head] = KEYS[6 + i * 2]
    end
    index_head(index[3], KEYS[5 + i * 2], member, false, known)
  end
end
if ARGV[1] == '1' then
  local total = redis.call('HGET', KEYS[1], 'total')
  if total then
    redis.call('HSET', KEYS[1], 'indexed', total)
  else
    redis.call('HDEL', KEYS[1], 'indexed')
  end
end
return listed
