-- free: give back the slots of drained messages that workers started, and count the starts.
--
-- The count feeds the fleet's consumption rate, which sizes the adaptive budget (claim.lua): a
-- window of at least ARGV[1] ms is closed on the first free after it ends, and its rate (starts
-- per second) blended with the previous one. The starts are what the budget lets through, so at
-- a burst's start the rate trails the workers, and waiting a whole window for a first rate, then
-- blending each much faster one, kept the budget low for a few hundred ms while the workers sat
-- idle. So while no rate is known a window closes after a quarter of ARGV[1] ms (counting only
-- the starts freed after it opened: the opening free's were gathered before it), and a window
-- over half again as fast as the rate replaces it. Only slots that were still held count: a
-- message started twice (redelivered) is counted once.
--
-- KEYS[1]  drained messages in the broker (see claim.lua)
-- KEYS[2]  the consumption rate (hash: n = starts in the open window, opened = those of them
--          counted as it opened, at_ms = its start, rate = starts per second over the last
--          closed windows, 0 for none yet)
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
local state = redis.call('HMGET', consumed, 'n', 'at_ms', 'rate', 'opened')
local n = (tonumber(state[1]) or 0) + freed
local at_ms = tonumber(state[2]) or now
local rate = tonumber(state[3]) or 0
local opened = tonumber(state[4]) or freed
local elapsed = now - at_ms
if elapsed > 4 * window_ms then
  -- After a quiet spell the old rate says nothing: measure afresh (0 means no rate yet).
  n, at_ms, rate, opened = freed, now, 0, freed
elseif elapsed >= window_ms or (rate == 0 and elapsed * 4 >= window_ms) then
  local fresh = n * 1000 / elapsed
  if elapsed < window_ms then
    fresh = (n - opened) * 1000 / elapsed
  end
  if rate == 0 or fresh >= 1.5 * rate then
    rate = fresh
  else
    rate = (rate + fresh) / 2
  end
  n, at_ms, opened = 0, now, 0
end
redis.call('HSET', consumed, 'n', n, 'at_ms', at_ms, 'rate', tostring(rate), 'opened', opened)
redis.call('PEXPIRE', consumed, 600000)
return freed
