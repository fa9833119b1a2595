-- landed: the drainer's report on a batch of broker writes. Messages written move from on their
-- way to in the broker (where the budget counts them), unless a worker started them already;
-- messages that never reached the broker (a failed write, an audited dual_write copy) give their
-- slots back.
--
-- KEYS[1]  drained messages in the broker (see claim.lua)
-- KEYS[2]  slots on their way to the broker (see claim.lua)
-- ARGV[1]  how long a member lives, in ms
-- ARGV[2]  how many of the ids that follow were written
-- ARGV[3..] the ids written, then the ids given back
-- Returns the number of ids moved into KEYS[1].

local outstanding, on_the_way = KEYS[1], KEYS[2]
local ttl_ms, written = tonumber(ARGV[1]), tonumber(ARGV[2])
local time = redis.call('TIME')
local deadline = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + ttl_ms
local moved = 0
for i = 3, 2 + written do
  if redis.call('ZREM', on_the_way, ARGV[i]) == 1 then
    redis.call('ZADD', outstanding, deadline, ARGV[i])
    moved = moved + 1
  end
end
local back = {}
for i = 3 + written, #ARGV do
  back[#back + 1] = ARGV[i]
end
if #back > 0 then
  redis.call('ZREM', on_the_way, unpack(back))
  redis.call('ZREM', outstanding, unpack(back))
end
return moved
