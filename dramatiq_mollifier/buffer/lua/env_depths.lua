-- env_depths: every env's QUEUED + DRAINING count from the depth hash, as one string.
--
-- For the tenant listing and the fleet gauges: with 10,000 envs, HGETALL answers 20,000 reply
-- elements, which a client parses far more slowly than it unpacks one string (as pop.lua's frames).
--
-- KEYS[1]  the depth counters (hash)
-- Returns one string: for each env field with a positive count, struct.pack('>i4i4i8', #org,
-- #env, count) then the org and env ids, in no particular order.

local frames = {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local name = fields[i]
  local count = tonumber(fields[i + 1])
  if string.sub(name, 1, 4) == 'env:' and count > 0 then
    local org, env = parse_tenant_tag(string.sub(name, 5))
    frames[#frames + 1] = struct.pack('>i4i4i8', #org, #env, count)
    frames[#frames + 1] = org
    frames[#frames + 1] = env
  end
end
return table.concat(frames)
