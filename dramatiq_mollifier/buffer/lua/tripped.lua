-- tripped: the envs of the tripped registry, after dropping members whose deadline has passed.
-- A member may outlive its hold marker by up to half a hold: the caller checks the markers.
--
-- KEYS[1]  the registry of tripped envs (sorted set, score = a deadline no earlier than the
--          hold marker's expiry, in ms)
-- Returns the members left ("<byte length of org>:<org>:<env>").

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now_ms()))
return redis.call('ZRANGE', KEYS[1], 0, -1)
