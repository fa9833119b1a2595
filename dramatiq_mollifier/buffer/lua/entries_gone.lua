-- entries_gone: which of the given entries no longer exist (cancelled since a drainer popped
-- them), as one string, for the drainer's cancel check.
--
-- KEYS[1..]  entry hashes
-- Returns one string of #KEYS bytes: '1' where the entry is gone, '0' where it exists.

local flags = {}
for i = 1, #KEYS do
  flags[i] = redis.call('EXISTS', KEYS[i]) == 1 and '0' or '1'
end
return table.concat(flags)
