-- crash_restore: give an earlier delivery its record back, as it was, when it could not be judged.
--
-- KEYS[1]  the message's in-flight record (<prefix>:crash:msg:<message id>)
-- ARGV[1]  our delivery's token followed by one space (the record enter.lua wrote for us)
-- ARGV[2]  the earlier record, as enter.lua returned it
-- ARGV[3]  its remaining time to live, in milliseconds, as enter.lua returned it
--
-- Returns 1 when the earlier record is back, 0 when the key no longer holds ours (another
-- delivery took it over meanwhile: the earlier record is theirs to judge, not ours to restore).

local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, #ARGV[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    return 1
end
return 0
