-- tripped: the envs whose hold marker is live, after dropping expired registry members.
--
-- KEYS[1]  the registry of tripped envs (sorted set, score = hold deadline in ms)
-- Returns the live members (JSON [org, env]).

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now_ms()))
return redis.call('ZRANGE', KEYS[1], 0, -1)
