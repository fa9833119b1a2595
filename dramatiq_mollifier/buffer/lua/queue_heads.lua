-- queue_heads: the head (oldest) id of each queue, as one string.
--
-- KEYS[1..]  env queues (lists)
-- Returns one string: for each queue in order, struct.pack('>i4', #id) then the id, or
-- struct.pack('>i4', -1) for an empty queue.

local frames = {}
for i = 1, #KEYS do
  local id = redis.call('LINDEX', KEYS[i], 0)
  if id then
    frames[#frames + 1] = struct.pack('>i4', #id)
    frames[#frames + 1] = id
  else
    frames[#frames + 1] = struct.pack('>i4', -1)
  end
end
return table.concat(frames)
