-- evaluate_trip: count one enqueue of an env in its fixed window and say whether it is tripped.
--
-- KEYS[1]  the env's window counter
-- KEYS[2]  the env's hold marker
-- KEYS[3]  the registry of tripped envs (sorted set, score = hold deadline in ms)
-- ARGV[1]  window in ms (the counter's expiry, set when the counter is created)
-- ARGV[2]  threshold: tripped when the count is strictly greater
-- ARGV[3]  hold in ms: how long the marker lives after the last over-threshold count
-- ARGV[4]  the env's registry member (JSON [org, env])
-- Returns {tripped (0 or 1), count}.

local tripped, count = evaluate_trip(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]),
  tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4])
return {tripped, count}
