-- crash_enter: write a delivery's in-flight record and hand back the one an earlier delivery left,
-- unless the delivery repeats an attempt that is already concluded (see conclude.lua).
--
-- KEYS[1]  the message's in-flight record (<prefix>:crash:msg:<message id>)
-- KEYS[2]  the message's concluded attempts (a hash in the same slot; see conclude.lua)
-- ARGV[1]  the new record ("<token> <json>")
-- ARGV[2]  its time to live, in milliseconds
-- ARGV[3]  this delivery's attempt: the message's ``retries`` option (0 when absent)
-- ARGV[4]  the id the broker gave this publish ("" when it gives none)
-- ARGV[5]  "1" when the broker flags this delivery as a redelivery, else "0"
-- ARGV[6]  how long after a failure any delivery of the failed attempt is a repeat, in ms
--
-- Returns {previous record or false, its remaining time to live in ms or -2, false}, or, for a
-- repeat, {false, -2, "superseded" | "failed"} with nothing written. The owner of a record sets
-- its time to live back to the full value on every heartbeat, so how much of it is gone tells
-- how long ago that process last showed it was still running the message, on the server's clock
-- alone.

local attempt = tonumber(ARGV[3])
local marks = redis.call('HMGET', KEYS[2], 'superseded', 'failed', 'failed_by', 'failed_at')
if marks[1] and attempt <= tonumber(marks[1]) then
    return {false, -2, 'superseded'}
end
if marks[2] and attempt == tonumber(marks[2]) then
    -- The same publish (its nack was lost), or any copy soon after the failure (a delay queue
    -- publishes a due message again when the ack of its first publish was lost).
    local by = marks[3] or ''
    local now = redis.call('TIME')
    local age_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(marks[4] or '0')
    if (by ~= '' and by == ARGV[4]) or ARGV[5] == '1' or age_ms < tonumber(ARGV[6]) then
        return {false, -2, 'failed'}
    end
end

local previous = redis.call('GET', KEYS[1])
local pttl = -2
if previous then
    pttl = redis.call('PTTL', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {previous, pttl, false}
