-- commit_entries: right before a drainer's broker writes, check a popped batch and mark each
-- entry still DRAINING under the drainer's own lease as committed to the broker, in one call.
--
-- From then on an operator's cancel cannot remove the entry: cancel.lua answers "too late"
-- for it. An entry gone since the pop was cancelled: the drainer drops it. One whose lease
-- passed to another drainer (expired, reclaimed, popped again) is left alone: the drainer must
-- not write it. The mark holds the owner token, so it only counts while that lease does; every
-- script that puts an entry back (requeue, release, reclaim) or dead-letters it clears it.
--
-- KEYS[1..]  entry hashes
-- ARGV[1..]  the owner token of the pop that leased each entry, in the order of KEYS
-- Returns one string of #KEYS bytes: '0' committed, '1' gone (cancelled), '2' not ours.

local flags = {}
for i = 1, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'status', 'owner')
  if not f[1] then
    flags[i] = '1'
  elseif f[1] == 'DRAINING' and f[2] == ARGV[i] and ARGV[i] ~= '' then
    redis.call('HSET', KEYS[i], 'committed', ARGV[i])
    flags[i] = '0'
  else
    flags[i] = '2'
  end
end
return table.concat(flags)
