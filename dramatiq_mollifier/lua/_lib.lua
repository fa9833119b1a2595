-- Helpers shared by every buffer script. scripts.py prepends this file to each script, so the
-- functions below are locals of the script that uses them. Nothing here names a key: every key
-- arrives as an argument that the caller took from KEYS.

-- Redis server time in milliseconds, so every process of a fleet agrees on deadlines.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Add delta to the QUEUED + DRAINING counters (total, org, env); a counter that reaches 0 is
-- deleted so the depth hash only holds tenants with work.
local function adjust_depth(depth, total_field, org_field, env_field, delta)
  for _, field in ipairs({total_field, org_field, env_field}) do
    if redis.call('HINCRBY', depth, field, delta) <= 0 then
      redis.call('HDEL', depth, field)
    end
  end
end

-- Record that the env (within its org) and the org have queued work.
local function note_queued(envs, orgs, org, env)
  redis.call('SADD', envs, env)
  redis.call('SADD', orgs, org)
end

-- When the env's queue is empty, the env leaves its org's set, and the org leaves the org set
-- when its last env has left.
local function prune_queue_sets(queue, envs, orgs, org, env)
  if redis.call('LLEN', queue) == 0 then
    redis.call('SREM', envs, env)
    if redis.call('SCARD', envs) == 0 then
      redis.call('SREM', orgs, org)
    end
  end
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

-- The entry's status when it exists and belongs to (org, env); nil when it does not exist;
-- false when it belongs to another tenant (the caller looked its tenant up before it changed).
local function entry_status(entry, org, env)
  local fields = redis.call('HMGET', entry, 'status', 'org', 'env')
  if not fields[1] then
    return nil
  end
  if fields[2] ~= org or fields[3] ~= env then
    return false
  end
  return fields[1]
end

-- Store a new QUEUED entry at the tail of its env's queue; 0 (and no change) if the id exists.
local function accept_entry(entry, queue, envs, orgs, depth, id, org, env, payload, ttl_ms,
                            total_field, org_field, env_field)
  if redis.call('EXISTS', entry) == 1 then
    return 0
  end
  redis.call('HSET', entry, 'org', org, 'env', env, 'payload', payload, 'status', 'QUEUED',
    'attempts', 0, 'created_at_ms', string.format('%.0f', now_ms()))
  if ttl_ms > 0 then
    redis.call('PEXPIRE', entry, ttl_ms)
  end
  redis.call('RPUSH', queue, id)
  note_queued(envs, orgs, org, env)
  adjust_depth(depth, total_field, org_field, env_field, 1)
  return 1
end

-- Count one enqueue in the env's fixed window; (re-)arm the hold marker above the threshold.
-- Returns tripped (0/1) and the window count.
local function evaluate_trip(counter, hold, registry, window_ms, threshold, hold_ms, member)
  local count = redis.call('INCR', counter)
  if count == 1 then
    redis.call('PEXPIRE', counter, window_ms)
  end
  if count > threshold then
    if hold_ms > 0 then
      local now = now_ms()
      redis.call('SET', hold, '1', 'PX', hold_ms)
      redis.call('ZADD', registry, string.format('%.0f', now + hold_ms), member)
      -- Keep the registry to live holds even when nobody lists it.
      redis.call('ZREMRANGEBYSCORE', registry, '-inf', string.format('%.0f', now))
    end
    return 1, count
  end
  return redis.call('EXISTS', hold), count
end
