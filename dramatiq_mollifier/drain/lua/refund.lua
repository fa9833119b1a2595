-- refund: give the drain-rate bucket back the tokens of claimed slots that carried no message.
--
-- claim.lua takes a token for every slot it grants; a pop that found fewer entries (the tail of
-- a backlog, many small tenants) or a move that stopped early leaves slots unused, and their
-- tokens, spent for nothing, kept every other org's claim empty until the bucket refilled.
-- Nothing is given back to a bucket that expired meanwhile: the next claim starts it full.
--
-- KEYS[1]  the drain-rate bucket (hash: tokens, at_ms; see claim.lua)
-- ARGV[1]  tokens to give back
-- ARGV[2]  the rate cap: the bucket holds at most this many
-- Returns 1 when given back, 0 when the bucket was gone.

local bucket = KEYS[1]
local tokens = tonumber(redis.call('HGET', bucket, 'tokens'))
if tokens == nil then
  return 0
end
tokens = math.min(tonumber(ARGV[2]), tokens + tonumber(ARGV[1]))
redis.call('HSET', bucket, 'tokens', tostring(tokens))
return 1
