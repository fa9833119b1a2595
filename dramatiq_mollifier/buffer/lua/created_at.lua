-- created_at: when each entry was accepted, as one string.
--
-- KEYS[1..]  entry hashes
-- Returns one string: for each entry in order, struct.pack('>i8', created_at_ms), or -1 when
-- the entry is gone or is not QUEUED (a head reference its entry outlived).

local frames = {}
for i = 1, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'status', 'created_at_ms')
  if f[1] == 'QUEUED' and f[2] then
    frames[#frames + 1] = struct.pack('>i8', tonumber(f[2]))
  else
    frames[#frames + 1] = struct.pack('>i8', -1)
  end
end
return table.concat(frames)
