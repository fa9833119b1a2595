-- bind: swap a claim's placeholders for the ids of the messages about to be enqueued.
--
-- Called after the pop and before the broker write, so a worker that starts a message at once
-- always finds its id to remove (free.lua looks in both sets). Placeholders without a message
-- (the pop found fewer entries) are dropped, which gives their slots back. The ids stay on their
-- way (KEYS[1]) until landed.lua reports them written.
--
-- KEYS[1]  slots on their way to the broker (see claim.lua)
-- ARGV[1]  the placeholder prefix of the caller
-- ARGV[2]  how many placeholders the claim granted
-- ARGV[3]  how long a member lives, in ms
-- ARGV[4..] the message ids
-- Returns the number of ids bound.

local on_the_way = KEYS[1]
local prefix, granted, ttl_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local placeholders = {}
for i = 1, granted do
  placeholders[#placeholders + 1] = prefix .. i
end
if #placeholders > 0 then
  redis.call('ZREM', on_the_way, unpack(placeholders))
end
if #ARGV < 4 then
  return 0
end
local time = redis.call('TIME')
local deadline = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + ttl_ms
local args = {}
for i = 4, #ARGV do
  args[#args + 1] = deadline
  args[#args + 1] = ARGV[i]
end
redis.call('ZADD', on_the_way, unpack(args))
return #ARGV - 3
