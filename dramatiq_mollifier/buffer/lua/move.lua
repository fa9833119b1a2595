-- move: put up to ARGV[3] of the oldest QUEUED entries of an env straight onto a RedisBroker's
-- queues, in one call: what pop.lua, a drain handler's broker write (enqueue_batch.lua) and
-- ack_draining.lua do for a drained message, with no round trip and no client work in between.
--
-- An entry moves when its writer's mode was divert and its payload is what Dramatiq's JSON
-- encoder writes, {"queue_name":Q,"actor_name":A,"args":...,"options":{...},"message_id":ID,
-- "message_timestamp":T}, for a declared queue and actor and the entry's own id. The message
-- gets the drained marker and a fresh redis_message_id at the end of its options (the last of
-- two equal keys wins in JSON decoders, Python's included), is stored in the queue's hash, its
-- id pushed on the queue's list, and the entry is removed. Its budget slot goes straight from
-- the caller's claim to the drained messages in the broker (no message is ever on its way). The
-- first entry that does not move stops the move, left at the head for the caller's pop: order
-- per env is kept.
--
-- The caller peeks at the head first and passes the entry key of every peeked id (pop.lua).
-- Outside Redis Cluster only: the script writes the broker's keys and the buffer's.
--
-- KEYS[1]   the env's queue (list)
-- KEYS[2]   the org's set of envs with queued work
-- KEYS[3]   the orgs with queued work (sorted set)
-- KEYS[4]   the depth counters (hash)
-- KEYS[5]   the listing index by org and env (sorted set)
-- KEYS[6]   the listing index by depth (sorted set)
-- KEYS[7]   the listing index by oldest queued entry (sorted set)
-- KEYS[8]   drained messages in the broker (the pace's sorted set, see drain/lua/claim.lua)
-- KEYS[9]   slots on their way to the broker (the pace's, see drain/lua/claim.lua)
-- KEYS[10]  the broker's heartbeats (<namespace>:__heartbeats__)
-- KEYS[11..] each declared queue's list and hash (<namespace>:<queue>, <namespace>:<queue>.msgs),
--           in the order of the queue names in ARGV, then the entry hash of each peeked id
-- ARGV[1]   org id
-- ARGV[2]   env id
-- ARGV[3]   how many entries to move at most
-- ARGV[4]   the placeholder prefix of the caller's claim (its slots, see claim.lua)
-- ARGV[5]   how many placeholders the claim granted (all are given up here)
-- ARGV[6]   how long a budget slot lives, in ms
-- ARGV[7]   now in ms and ARGV[8] the broker id: the heartbeat, as dispatch.lua writes it
-- ARGV[9]   the declared actor names, each between two newlines
-- ARGV[10]  1 when an entry that records no mode is a divert entry, else 0
-- ARGV[11]  Q, how many queues are declared; ARGV[12..] their Q names, then the peeked ids
-- Returns {stop, frames}: stop is 0 when the queue ran empty or ARGV[3] moved, 1 at an id that
-- was not peeked (another drainer's pop: peek again), 2 at an entry that does not move; frames
-- is one string, each moved entry a big-endian header struct.pack('>i4i4i8', #id, attempts,
-- created_at_ms) followed by its id.

local queue, envs, orgs, depth = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local outstanding, on_the_way = KEYS[8], KEYS[9]
local org, env, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local prefix, granted, ttl_ms = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local actors, untagged_divert = ARGV[9], ARGV[10] == '1'
local queue_count = tonumber(ARGV[11])
local targets = {}
for i = 1, queue_count do
  targets[ARGV[11 + i]] = {KEYS[9 + 2 * i], KEYS[10 + 2 * i]}
end
local entry_of = {}
for i = 12 + queue_count, #ARGV do
  entry_of[ARGV[i]] = KEYS[i + queue_count - 1]
end
-- A queue key of another type would fail a write half-way through: its messages do not move
-- (the handler's write reports the error). So would the heartbeats: then nothing moves.
for name, target in pairs(targets) do
  local list_type, hash_type = redis.call('TYPE', target[1]).ok, redis.call('TYPE', target[2]).ok
  if (list_type ~= 'none' and list_type ~= 'list') or (hash_type ~= 'none' and hash_type ~= 'hash') then
    targets[name] = nil
  end
end
local heartbeats_type = redis.call('TYPE', KEYS[10]).ok
if heartbeats_type ~= 'none' and heartbeats_type ~= 'zset' then
  targets = {}
end

-- The queue and the message to store for a payload that moves; nil for one that does not. (A
-- value built here, never a key name.)
local function drained_message(payload, id, redis_message_id)
  local queue_name, actor_name = string.match(payload,
    '^{"queue_name":"([%w_%.%-]+)","actor_name":"([%w_%.%-]+)","args":')
  if not queue_name or not targets[queue_name] then
    return nil
  end
  if not string.find(actors, '\n' .. actor_name .. '\n', 1, true) then
    return nil
  end
  -- The timestamp's digits, looked for in the payload's last bytes only: an unanchored search
  -- of the whole payload tries every digit of a long run in the args as a start (quadratic).
  local digits = string.find(payload, '%d+}$', math.max(1, #payload - 31))
  if not digits then
    return nil
  end
  local tail = '},"message_id":"' .. id .. '","message_timestamp":'
  local close = digits - #tail
  if close < 2 or string.sub(payload, close, digits - 1) ~= tail then
    return nil
  end
  local comma = string.sub(payload, close - 1, close - 1) == '{' and '' or ','
  return queue_name, string.sub(payload, 1, close - 1) .. comma
    .. '"mollifier_state":"drained","mollifier_for":"' .. id
    .. '","redis_message_id":"' .. redis_message_id .. '"' .. string.sub(payload, close)
end

-- A redis_message_id of the entry's own: its id and the call's time in microseconds (one call
-- moves an id once; a later call has a later time). A value, never a key name.
local function broker_message_id(id, time)
  return id .. '-' .. time[1] .. string.format('%06d', tonumber(time[2]))
end

-- The members a claim put in the on-the-way set (as bind.lua names them). Values, not key names.
local function claim_placeholders(prefix, granted)
  local placeholders = {}
  for i = 1, granted do
    placeholders[#placeholders + 1] = prefix .. i
  end
  return placeholders
end

local time = redis.call('TIME')
local deadline = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + ttl_ms
local before = redis.call('LINDEX', queue, 0)
local stop = 0
local frames = {}
local moved_ids = {}
local written = {}
local moved = 0
while moved < limit do
  local id = redis.call('LINDEX', queue, 0)
  if not id then
    break
  end
  local entry = entry_of[id]
  if not entry then
    stop = 1
    break
  end
  local f = redis.call('HMGET', entry, 'status', 'org', 'env', 'payload', 'attempts', 'created_at_ms', 'mode')
  if f[1] == 'QUEUED' and f[2] == org and f[3] == env then
    local mode = f[7]
    local queue_name, message = nil, nil
    local redis_message_id = broker_message_id(id, time)
    -- Its payload and frame's numbers, checked before any write of it (an error after one
    -- loses messages).
    local attempts, created_at_ms = tonumber(f[5]), tonumber(f[6])
    if (mode == 'divert' or (not mode and untagged_divert)) and string.match(id, '^[%w%-]+$')
      and f[4] and attempts and created_at_ms then
      queue_name, message = drained_message(f[4], id, redis_message_id)
    end
    if not message then
      stop = 2
      break
    end
    redis.call('LPOP', queue)
    redis.call('HSET', targets[queue_name][2], redis_message_id, message)
    local ids = written[queue_name]
    if not ids then
      ids = {}
      written[queue_name] = ids
    end
    ids[#ids + 1] = redis_message_id
    redis.call('DEL', entry)
    moved_ids[#moved_ids + 1] = id
    frames[#frames + 1] = struct.pack('>i4i4i8', #id, attempts, created_at_ms)
    frames[#frames + 1] = id
    moved = moved + 1
  else
    -- The reference an expired entry left behind, still counted (pop.lua).
    redis.call('LPOP', queue)
    adjust_depth(depth, org, env, -1)
  end
end
if moved > 0 then
  redis.call('ZADD', KEYS[10], ARGV[7], ARGV[8])
  for queue_name, ids in pairs(written) do
    redis.call('RPUSH', targets[queue_name][1], unpack(ids))
  end
  adjust_depth(depth, org, env, -moved)
  for _, id in ipairs(moved_ids) do
    redis.call('ZADD', outstanding, deadline, id)
  end
end
local placeholders = claim_placeholders(prefix, granted)
if #placeholders > 0 then
  redis.call('ZREM', on_the_way, unpack(placeholders))
end
prune_queue_sets(queue, envs, orgs, org, env)
index_env({KEYS[5], KEYS[6], KEYS[7]}, depth, queue, org, env, before, entry_of)
return {stop, table.concat(frames)}
