-- accept: store a new QUEUED entry and append its id to its env's FIFO queue.
--
-- KEYS[1]  entry hash
-- KEYS[2]  the env's queue (list)
-- KEYS[3]  the org's set of envs with queued work
-- KEYS[4]  the set of orgs with queued work
-- KEYS[5]  the depth counters (hash)
-- ARGV[1]  message id
-- ARGV[2]  org id
-- ARGV[3]  env id
-- ARGV[4]  payload (bytes, stored as is)
-- ARGV[5]  entry TTL in ms; 0 for none
-- ARGV[6]  depth field of the total
-- ARGV[7]  depth field of the org
-- ARGV[8]  depth field of the env
-- Returns 1 when stored, 0 when an entry with this id exists in any status (nothing changed).

return accept_entry(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3],
  ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8])
