-- enqueue_batch: what Dramatiq's dispatch.lua does for "enqueue", for a chunk of drained
-- messages of one queue in one call instead of one call each.
--
-- dispatch.lua's enqueue registers the enqueuing broker's heartbeat, stores the message under its
-- redis_message_id in the queue's hash and pushes that id on the queue's list; this does the
-- same, the heartbeat once per chunk. It skips dispatch.lua's occasional maintenance (requeueing
-- the unacked messages of dead workers, expiring dead letters), which every fetch, ack and other
-- enqueue of the fleet still runs.
--
-- KEYS[1]  the broker's heartbeats (sorted set: <namespace>:__heartbeats__)
-- KEYS[2]  the queue (list of redis message ids: <namespace>:<queue>)
-- KEYS[3]  the queue's messages (hash: <namespace>:<queue>.msgs)
-- ARGV[1]  now, in ms (the heartbeat's score, as dispatch.lua takes it from the caller)
-- ARGV[2]  the broker id (the heartbeat's member)
-- ARGV[3..] redis message id, encoded message, for each message in order
-- Returns the number of messages enqueued.

local heartbeats, queue, messages = KEYS[1], KEYS[2], KEYS[3]
redis.call('ZADD', heartbeats, ARGV[1], ARGV[2])
local ids = {}
for i = 3, #ARGV - 1, 2 do
  redis.call('HSET', messages, ARGV[i], ARGV[i + 1])
  ids[#ids + 1] = ARGV[i]
  -- unpack() is bounded by Lua's stack: push in slices.
  if #ids == 500 then
    redis.call('RPUSH', queue, unpack(ids))
    ids = {}
  end
end
if #ids > 0 then
  redis.call('RPUSH', queue, unpack(ids))
end
return (#ARGV - 2) / 2
