-- evaluate_trip_and_accept: evaluate_trip, then accept only when tripped. One round trip for
-- the diverting hot path.
--
-- KEYS[1]  the env's window counter
-- KEYS[2]  the env's hold marker
-- KEYS[3]  the registry of tripped envs
-- KEYS[4]  entry hash
-- KEYS[5]  the env's queue
-- KEYS[6]  the org's set of envs with queued work
-- KEYS[7]  the set of orgs with queued work
-- KEYS[8]  the depth counters
-- ARGV[1]  window in ms
-- ARGV[2]  threshold
-- ARGV[3]  hold in ms
-- ARGV[4]  the env's registry member (JSON [org, env])
-- ARGV[5]  message id
-- ARGV[6]  org id
-- ARGV[7]  env id
-- ARGV[8]  payload
-- ARGV[9]  entry TTL in ms; 0 for none
-- ARGV[10] depth field of the total
-- ARGV[11] depth field of the org
-- ARGV[12] depth field of the env
-- Returns {tripped (0 or 1), count, accepted (0 or 1)}.

local tripped, count = evaluate_trip(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]),
  tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4])
local accepted = 0
if tripped == 1 then
  accepted = accept_entry(KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], ARGV[5], ARGV[6], ARGV[7],
    ARGV[8], tonumber(ARGV[9]), ARGV[10], ARGV[11], ARGV[12])
end
return {tripped, count, accepted}
