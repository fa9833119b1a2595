-- fleet_lease: take or keep the short lease that makes one process of the fleet the reporter of
-- the fleet-wide gauges (depth, dwell, dead letters), so that they are reported once, not once
-- per process. The holder renews it on each report; when it dies, another takes over within
-- ARGV[2] ms.
--
-- KEYS[1]  the lease (string: the holder's token)
-- ARGV[1]  the caller's token (unique per process)
-- ARGV[2]  the lease in ms
-- Returns 1 when the caller holds the lease now, 0 when another process does.

local lease, token = KEYS[1], ARGV[1]
local holder = redis.call('GET', lease)
if holder and holder ~= token then
  return 0
end
redis.call('SET', lease, token, 'PX', ARGV[2])
return 1
