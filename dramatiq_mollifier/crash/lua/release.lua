-- crash_release: end a delivery's in-flight record, if the record is still that delivery's.
--
-- KEYS[1]  the message's in-flight record (<prefix>:crash:msg:<message id>)
-- ARGV[1]  the delivery's token followed by one space: every record value starts with it
--
-- Returns 1 when the record was deleted, 0 when it was absent or belongs to a later delivery
-- (a retry of the same message id that another thread picked up first must keep its record).

local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, #ARGV[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
