-- free: give back the slots of drained messages that workers started, and count the starts.
--
-- The count feeds the fleet's consumption rate, which sizes the adaptive budget (claim.lua): a
-- window of at least ARGV[1] ms is closed on the first free after it ends (a quarter of that
-- while no rate is known), and its rate (starts per second) replaces the previous one if it is
-- faster, else is blended with it. The starts are what the budget lets through, so at a burst's
-- start the rate trails the workers: waiting a whole window for a first rate, and blending a
-- faster one, kept the budget low for a few hundred ms while the workers sat idle. Only slots
-- that were still held count: a message started twice (redelivered) is counted once.
--
-- KEYS[1]  drained messages in the broker (see claim.lua)
-- KEYS[2]  the consumption rate (hash: n = starts in the open window, at_ms = its start,
--          rate = starts per second over the last closed windows, 0 for none yet)
-- KEYS[3]  slots on their way to the broker (see claim.lua): a worker may start a message before
--          its drainer reported it written
-- ARGV[1]  the rate window, in ms
-- ARGV[2..] the message ids
-- Returns the number of slots freed.

local outstanding, consumed, on_the_way = KEYS[1], KEYS[2], KEYS[3]
local window_ms = tonumber(ARGV[1])
local ids = {}
for i = 2, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
if #ids == 0 then
  return 0
end
local freed = redis.call('ZREM', outstanding, unpack(ids)) + redis.call('ZREM', on_the_way, unpack(ids))
if freed == 0 then
  return 0
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local state = redis.call('HMGET', consumed, 'n', 'at_ms', 'rate')
local n = (tonumber(state[1]) or 0) + freed
local at_ms = tonumber(state[2]) or now
local rate = tonumber(state[3]) or 0
local elapsed = now - at_ms
if elapsed > 4 * window_ms then
  -- After a quiet spell the old rate says nothing: measure afresh (0 means no rate yet).
  n, at_ms, rate = freed, now, 0
elseif elapsed >= window_ms or (rate == 0 and elapsed * 4 >= window_ms) then
  local fresh = n * 1000 / elapsed
  if fresh >= rate then
    rate = fresh
  else
    rate = (rate + fresh) / 2
  end
  n, at_ms = 0, now
end
redis.call('HSET', consumed, 'n', n, 'at_ms', at_ms, 'rate', tostring(rate))
redis.call('PEXPIRE', consumed, 600000)
return freed
