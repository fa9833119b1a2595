-- pop: move up to ARGV[3] of the oldest QUEUED entries of an env to DRAINING under a lease.
--
-- The caller peeks at the head of the queue first and passes the entry key of every peeked id,
-- so no key name is built here. Popping stops at a head id that was not peeked (another drainer
-- got there first, or the queue changed); the caller may peek again. It also stops before an
-- entry that would take the reply's payloads past the byte bound.
--
-- KEYS[1]   the env's queue (list)
-- KEYS[2]   the org's set of envs with queued work
-- KEYS[3]   the orgs with queued work (sorted set, all scores 0: ordered by id)
-- KEYS[4]   the leases (sorted set, score = deadline in ms)
-- KEYS[5]   the depth counters (hash)
-- KEYS[6]   the listing index by org and env (sorted set)
-- KEYS[7]   the listing index by depth (sorted set)
-- KEYS[8]   the listing index by oldest queued entry (sorted set)
-- KEYS[9..] entry hash of each peeked id, in the order of ARGV[8..]
-- ARGV[1]   org id
-- ARGV[2]   env id
-- ARGV[3]   how many entries to pop at most
-- ARGV[4]   lease in ms
-- ARGV[5]   the owner token of this pop: only its holder may settle what it leases
-- ARGV[6]   how many payload bytes to pop at most (the first entry is popped whatever its size);
--           0 for no bound
-- ARGV[7]   1 when an earlier call of the same pop popped entries already: then the first entry
--           here is not free, the byte bound applies to it too; 0 otherwise
-- ARGV[8..] the peeked message ids
-- Returns {stopped_at_unknown_id (0 or 1), frames}: frames is one string, the popped entries in
-- order, each a big-endian header struct.pack('>i4i4i4i4i4i4i8', #id, #payload, #error_code,
-- #error_message, #mode, attempts, created_at_ms) followed by the bytes of those five strings
-- (an entry without an error has -1 as its code length, one written before entries recorded
-- their writer's mode -1 as its mode length). One string, not six replies per entry:
-- a client parses a reply element far more slowly than it unpacks a header.
--
-- A reference whose entry is gone (expired), is not QUEUED or belongs to another env is dropped
-- without creating anything, and the env's depth is decremented for it: each such reference is
-- the one left behind by an expired entry, still counted. Each popped entry's tenant is recorded
-- in the depth hash (see lease_field) for reclaim.

local queue, envs, orgs, leases, depth = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local org, env, limit, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local owner, max_bytes = ARGV[5], tonumber(ARGV[6])
local popped_before = ARGV[7] == '1'
local entry_of = {}
for i = 8, #ARGV do
  entry_of[ARGV[i]] = KEYS[i + 1]
end
local before = redis.call('LINDEX', queue, 0)
local bytes = 0
local stopped = 0
local frames = {}
local taken = 0
local deadline = nil
while taken < limit do
  local id = redis.call('LINDEX', queue, 0)
  if not id then
    break
  end
  local entry = entry_of[id]
  if not entry then
    stopped = 1
    break
  end
  -- A reply of many large payloads would outlast any socket timeout: stop at the byte bound,
  -- leaving the entry at the head, untouched.
  if (taken > 0 or popped_before) and max_bytes > 0 and bytes + redis.call('HSTRLEN', entry, 'payload') > max_bytes then
    break
  end
  redis.call('LPOP', queue)
  local f = redis.call('HMGET', entry, 'status', 'org', 'env', 'payload', 'attempts',
    'created_at_ms', 'error_code', 'error_message', 'mode')
  if f[1] == 'QUEUED' and f[2] == org and f[3] == env then
    if not deadline then
      deadline = string.format('%.0f', now_ms() + lease_ms)
    end
    redis.call('HSET', entry, 'status', 'DRAINING', 'owner', owner)
    redis.call('PERSIST', entry)
    redis.call('ZADD', leases, deadline, id)
    redis.call('HSET', depth, lease_field(id), tenant_tag(org, env))
    local code, message, mode = f[7], f[8] or '', f[9]
    local n = #frames
    frames[n + 1] = struct.pack('>i4i4i4i4i4i4i8', #id, #f[4], code and #code or -1, #message,
      mode and #mode or -1, tonumber(f[5]), tonumber(f[6]))
    frames[n + 2] = id
    frames[n + 3] = f[4]
    frames[n + 4] = code or ''
    frames[n + 5] = message
    frames[n + 6] = mode or ''
    taken = taken + 1
    bytes = bytes + #f[4]
  else
    adjust_depth(depth, org, env, -1)
  end
end
prune_queue_sets(queue, envs, orgs, org, env)
index_env({KEYS[6], KEYS[7], KEYS[8]}, depth, queue, org, env, before, entry_of)
return {stopped, table.concat(frames)}
