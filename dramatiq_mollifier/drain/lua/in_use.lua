-- in_use: the drain budget's slots taken now, as the fleet gauge reports them.
--
-- Counts the members whose deadline has not passed: a claim prunes the others, but with nothing
-- left to drain no claim comes, and the gauge showed slots of messages long lost (a worker
-- SIGKILLed with messages prefetched) as still waiting in the broker.
--
-- KEYS[1]  drained messages in the broker (sorted set: member = message id, score = deadline ms)
-- KEYS[2]  slots on their way to the broker (sorted set, score = deadline ms)
-- Returns the number of members of both whose deadline is still ahead.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local after = '(' .. now
return redis.call('ZCOUNT', KEYS[1], after, '+inf') + redis.call('ZCOUNT', KEYS[2], after, '+inf')
