-- crash_conclude: remember that an attempt of a message is over, so that a redelivery of it (its
-- ack or nack was lost when its worker process died) is not run again. See enter.lua.
--
-- KEYS[1]  the message's concluded attempts (<prefix>:crash:done:<message id>, a hash)
-- ARGV[1]  "superseded": a retry of the attempt is in the broker, so every attempt up to it is over
--          "failed": the attempt was failed (rejected to the dead letters), at the server's time
-- ARGV[2]  the attempt: the ``retries`` option it was delivered with
-- ARGV[3]  "failed" only: the id the broker gave that publish ("" when it gives none)
-- ARGV[4]  how long the marks are kept, in milliseconds
--
-- Returns 1.

local attempt = tonumber(ARGV[2])
if ARGV[1] == 'superseded' then
    local known = tonumber(redis.call('HGET', KEYS[1], 'superseded') or '-1')
    if attempt > known then
        redis.call('HSET', KEYS[1], 'superseded', attempt)
    end
else
    local now = redis.call('TIME')
    local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
    redis.call('HSET', KEYS[1], 'failed', attempt, 'failed_by', ARGV[3], 'failed_at', now_ms)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
