-- cancel: remove a buffered (QUEUED or DRAINING) entry for good, on an operator's request.
--
-- A DRAINING entry's drainer finds the entry gone right before its broker write and drops the
-- message (cancel wins over a drain that popped it a moment before). One its drainer already
-- committed to the broker (commit_entries.lua, under the lease it still holds) is left alone and
-- reported too late: it will be delivered. Dead letters are left alone.
-- A queue reference whose entry has vanished (expired) is removed too, and its depth given back,
-- as pop does, so that cancelling a whole env always empties its queue.
--
-- KEYS[1]  entry hash
-- KEYS[2]  the env's queue (list)
-- KEYS[3]  the org's set of envs with queued work
-- KEYS[4]  the orgs with queued work (sorted set, all scores 0: ordered by id)
-- KEYS[5]  the leases (sorted set, score = deadline in ms)
-- KEYS[6]  the env's dead letters (unused: the per-entry layout every such script shares)
-- KEYS[7]  the org's set of envs with dead letters (unused)
-- KEYS[8]  the set of orgs with dead letters (unused)
-- KEYS[9]  the depth counters (hash)
-- KEYS[10] the drainers' wake-up list (unused: the layout every per-entry script shares)
-- KEYS[11] the listing index by org and env (sorted set)
-- KEYS[12] the listing index by depth (sorted set)
-- KEYS[13] the listing index by oldest queued entry (sorted set)
-- ARGV[1]  message id
-- ARGV[2]  org id the caller believes the entry belongs to
-- ARGV[3]  env id the caller believes the entry belongs to
-- Returns 1 when cancelled, 0 when missing or not buffered (a dead letter), -1 when the entry
-- belongs to another org/env, 2 when only a vanished entry's queue reference was removed, 3 when
-- too late (committed to the broker by its drainer; nothing changed).

local entry, queue, envs, orgs, leases, depth = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[9]
local id, org, env = ARGV[1], ARGV[2], ARGV[3]
local index = {KEYS[11], KEYS[12], KEYS[13]}
local status, answer = admit_entry(entry, org, env)
if not status then
  local before = redis.call('LINDEX', queue, 0)
  if answer == 0 and redis.call('EXISTS', entry) == 0 and redis.call('LREM', queue, 1, id) == 1 then
    adjust_depth(depth, org, env, -1)
    prune_queue_sets(queue, envs, orgs, org, env)
    index_env(index, depth, queue, org, env, before, {})
    return 2
  end
  return answer
end
if status ~= 'QUEUED' and status ~= 'DRAINING' then
  return 0
end
if status == 'DRAINING' then
  local f = redis.call('HMGET', entry, 'committed', 'owner')
  if f[1] and f[1] == f[2] then
    return 3
  end
end
local before = redis.call('LINDEX', queue, 0)
leave_live_state(status, id, queue, envs, orgs, leases, depth, org, env)
redis.call('DEL', entry)
index_env(index, depth, queue, org, env, before, {})
return 1
