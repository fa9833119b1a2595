-- crash_enter: write a delivery's in-flight record and hand back the one an earlier delivery left.
--
-- KEYS[1]  the message's in-flight record (<prefix>:crash:msg:<message id>)
-- ARGV[1]  the new record ("<token> <json>")
-- ARGV[2]  its time to live, in milliseconds
--
-- Returns {previous record or false, its remaining time to live in ms or -2}. The owner of a
-- record sets its time to live back to the full value on every heartbeat, so how much of it is
-- gone tells how long ago that process last showed it was still running the message, on the
-- server's clock alone.

local previous = redis.call('GET', KEYS[1])
local pttl = -2
if previous then
    pttl = redis.call('PTTL', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {previous, pttl}
