-- crash_refresh: a running delivery shows it is still running: its record's time to live is reset.
--
-- KEYS[1]  the message's in-flight record (<prefix>:crash:msg:<message id>)
-- ARGV[1]  the delivery's token followed by one space: every record value starts with it
-- ARGV[2]  the record's full time to live, in milliseconds
--
-- Returns 1 when the record was refreshed, 0 when it was absent or belongs to another delivery.

local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, #ARGV[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0
