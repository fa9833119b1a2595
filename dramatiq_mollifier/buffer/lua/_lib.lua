-- Helpers shared by the buffer scripts. scripts.py prepends the ones a script calls (and the
-- ones those call) to that script, so the functions below are locals of the script that uses
-- them. Nothing here names a key: every key arrives as an argument that the caller took from
-- KEYS. tenant_tag, org_field and env_field build the only composed strings, and those are hash
-- fields and sorted-set members, never key names.
--
-- The two scripts on the enqueue hot path (evaluate_trip, evaluate_trip_and_accept) spell their
-- work out rather than call helpers: in Redis's Lua, a helper costs a closure per run and a
-- call, and that was measurable there.

-- Redis server time in milliseconds, so every process of a fleet agrees on deadlines.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- "<byte length of org>:<org>:<env>": names an (org, env) injectively whatever the ids contain
-- (the length says where the org ends). The env's depth field is "env:" followed by it, and it
-- is the env's member in the tripped registry. keys.py builds the same strings.
local function tenant_tag(org, env)
  return #org .. ':' .. org .. ':' .. env
end

-- The depth-hash field that counts an org's entries: "org:<org>".
local function org_field(org)
  return 'org:' .. org
end

-- The depth-hash field that counts an env's entries: "env:<tenant_tag>".
local function env_field(org, env)
  return 'env:' .. tenant_tag(org, env)
end

-- The depth-hash field that records the tenant a DRAINING entry is counted under:
-- "lease:<message id>", holding the entry's tenant_tag. Reclaim reads it when the entry's hash
-- has vanished (evicted, deleted by hand) to give the entry's counts back.
local function lease_field(id)
  return 'lease:' .. id
end

-- Whether `owner` may settle the entry: always when no owner is named (an operator's call), else
-- only while the entry is DRAINING under the lease that owner's pop took. A drainer whose lease
-- expired and was taken over (reclaimed, popped again elsewhere) is refused: the scripts then
-- answer -2 and change nothing.
local function owns(entry, owner)
  if not owner or owner == '' then
    return true
  end
  local f = redis.call('HMGET', entry, 'status', 'owner')
  return f[1] == 'DRAINING' and f[2] == owner
end

-- The (org, env) a tenant_tag names.
local function parse_tenant_tag(tag)
  local length, rest = string.match(tag, '^(%d+):(.*)$')
  length = tonumber(length)
  return string.sub(rest, 1, length), string.sub(rest, length + 2)
end

-- Drop a DRAINING entry's lease and the record of the tenant it is counted under.
local function drop_lease(leases, depth, id)
  redis.call('ZREM', leases, id)
  redis.call('HDEL', depth, lease_field(id))
end

-- Add delta to one depth counter; a counter that reaches 0 is deleted.
local function adjust_counter(depth, field, delta)
  if redis.call('HINCRBY', depth, field, delta) <= 0 then
    redis.call('HDEL', depth, field)
  end
end

-- Add delta to the QUEUED + DRAINING counters (the total, the org's, the env's). The depth hash
-- only holds tenants with work. 'indexed' counts the same as 'total' in every script that keeps
-- the listing indexes (index_env below): code older than the indexes moves 'total' alone, and
-- the listing rebuilds the indexes when the two disagree.
local function adjust_depth(depth, org, env, delta)
  adjust_counter(depth, 'total', delta)
  adjust_counter(depth, 'indexed', delta)
  adjust_counter(depth, org_field(org), delta)
  adjust_counter(depth, env_field(org, env), delta)
end

-- The tenant listing's indexes (keys.py: index:tenants, index:depth, index:oldest), given as a
-- table of those three keys. An env's member is its org id with each NUL doubled as \0\1, two
-- NULs, then its env id: byte order is (org, env) order, and it is injective. keys.py builds the
-- same string.
local function tenant_member(org, env)
  if string.find(org, '\0', 1, true) then
    org = string.gsub(org, '%z', '\0\1')
  end
  return org .. '\0\0' .. env
end

-- The env's entries in the by-org and by-depth indexes, from its depth counter: present with
-- score -depth while it has QUEUED or DRAINING entries, absent from all three indexes otherwise.
-- Returns the env's member and depth.
local function index_depth(index, depth, org, env)
  local member = tenant_member(org, env)
  local count = tonumber(redis.call('HGET', depth, env_field(org, env))) or 0
  if count > 0 then
    redis.call('ZADD', index[1], 0, member)
    redis.call('ZADD', index[2], -count, member)
  else
    redis.call('ZREM', index[1], member)
    redis.call('ZREM', index[2], member)
    redis.call('ZREM', index[3], member)
  end
  return member, count
end

-- The env's score in the oldest index after its queue changed: the created_at_ms of the queue's
-- head, or NO_HEAD for an empty queue (or a head whose entry is gone, as the listing reads it).
-- `before` is the head id the script saw before changing the queue: an unchanged head keeps its
-- score. `known` maps ids to their entry keys (the entries the script was given): a new head
-- not among them scores 0, "not known", which sorts first and which the listing repairs, so a
-- score is never later than the truth. NO_HEAD is keys.py's.
-- (Scores go as strings: Lua would write NO_HEAD in floating-point notation.)
local NO_HEAD = '9007199254740991'
local function index_head(oldest, queue, member, before, known)
  local after = redis.call('LINDEX', queue, 0)
  local score
  if not after then
    score = NO_HEAD
  elseif after == before and redis.call('ZSCORE', oldest, member) then
    return
  elseif known[after] then
    score = redis.call('HGET', known[after], 'created_at_ms') or NO_HEAD
  else
    score = '0'
  end
  redis.call('ZADD', oldest, score, member)
end

-- Both of the above: the env's entries in the three indexes after its depth or queue changed.
local function index_env(index, depth, queue, org, env, before, known)
  local member, count = index_depth(index, depth, org, env)
  if count > 0 then
    index_head(index[3], queue, member, before, known)
  end
end

-- Push a token on the drainers' wake-up list: one idle drainer blocked on it wakes. The list
-- holds 8 tokens at most, for a fleet whose drainers never wait on it. The only place that
-- pushes one (drain/idle.py runs it through wake.lua).
local function wake_idle_drainer(wake)
  redis.call('LPUSH', wake, '1')
  redis.call('LTRIM', wake, 0, 7)
end

-- Record that the env (within its org) and the org have queued work. When the buffer had none
-- (the org set was empty), one idle drainer wakes through `wake`, the wake-up list.
local function note_queued(envs, orgs, org, env, wake)
  redis.call('SADD', envs, env)
  if redis.call('ZADD', orgs, 0, org) == 1 and redis.call('ZCARD', orgs) == 1 then
    wake_idle_drainer(wake)
  end
end

-- When the env's queue is empty, the env leaves its org's set, and the org leaves the org set
-- when its last env has left.
local function prune_queue_sets(queue, envs, orgs, org, env)
  if redis.call('LLEN', queue) == 0 then
    redis.call('SREM', envs, env)
    if redis.call('SCARD', envs) == 0 then
      redis.call('ZREM', orgs, org)
    end
  end
end

-- Take a QUEUED entry out of its queue (pruning the sets) or a DRAINING one out of the leases,
-- and out of the depth counts; any other status is left alone.
local function leave_live_state(status, id, queue, envs, orgs, leases, depth, org, env)
  if status == 'QUEUED' then
    redis.call('LREM', queue, 1, id)
    prune_queue_sets(queue, envs, orgs, org, env)
  elseif status == 'DRAINING' then
    drop_lease(leases, depth, id)
  else
    return
  end
  adjust_depth(depth, org, env, -1)
end

-- The same for the dead-letter indexes.
local function prune_dead_letter_sets(failed, failed_envs, failed_orgs, org, env)
  if redis.call('ZCARD', failed) == 0 then
    redis.call('SREM', failed_envs, env)
    if redis.call('SCARD', failed_envs) == 0 then
      redis.call('SREM', failed_orgs, org)
    end
  end
end

-- QUEUED entries expire after ttl_ms when a TTL is configured, and never otherwise.
local function apply_ttl(entry, ttl_ms)
  if ttl_ms > 0 then
    redis.call('PEXPIRE', entry, ttl_ms)
  else
    redis.call('PERSIST', entry)
  end
end

-- The preamble of every per-entry script: whether it may go on with the entry. Returns the
-- entry's status when the entry exists, belongs to (org, env) and is in status `wanted` (in any
-- status when `wanted` is nil). Otherwise returns nil and the script's answer: 0 when the entry
-- is missing or in another status, -1 when it belongs to another tenant (the caller looked its
-- tenant up before it changed, and looks it up again).
local function admit_entry(entry, org, env, wanted)
  local fields = redis.call('HMGET', entry, 'status', 'org', 'env')
  if not fields[1] then
    return nil, 0
  end
  if fields[2] ~= org or fields[3] ~= env then
    return nil, -1
  end
  if wanted and fields[1] ~= wanted then
    return nil, 0
  end
  return fields[1], nil
end
