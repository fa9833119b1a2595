-- expired_leases: the ids whose lease deadline has passed, by server time (read only).
--
-- KEYS[1]  the leases (sorted set, score = deadline in ms)
-- ARGV[1]  how many ids to return at most
-- Returns the ids, earliest deadline first.

return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now_ms()), 'LIMIT', 0,
  tonumber(ARGV[1]))
