-- retry.lua: give a failed job a new attempt (fluxq batch retry), as if it had just arrived.
-- KEYS[1] job hash          fluxq:job:{job_id}
-- KEYS[2] batch hash        fluxq:batch:{batch}
-- KEYS[3] batch reasons     fluxq:reasons:{batch}
-- KEYS[4] lane list         fluxq:lane:{k}:{g}:{batch}    (lane jobs)
-- KEYS[5] lanes zset        fluxq:lanes:{k}:{g}           (lane jobs)
-- KEYS[6] backlog zset      fluxq:backlog:{k}:{g}         (jobs sent one by one)
-- ARGV[1] job id   ARGV[2] now (s)   ARGV[3] the lane entry to append ("" for a one-by-one job)
-- ARGV[4] the failure's reason kind   ARGV[5] events channel   ARGV[6] lane score
-- Returns 1 when retried, 0 when the job is missing or not failed (nothing changes).
-- A lane job loses its record and goes back to its lane as a fresh line (its budget applies, and
-- its next record starts clean); a one-by-one job keeps its id and callbacks, its attempt fields
-- are cleared and it goes back to its backlog.
local record = redis.call('HMGET', KEYS[1], 'state', 'batch', 'uncertain', 'priority', 'seq')
if record[1] ~= 'failed' then
  return 0
end
if record[3] == '1' then
  redis.call('HINCRBY', KEYS[2], 'uncertain', -1)
end
if redis.call('HINCRBY', KEYS[3], ARGV[4], -1) <= 0 then
  redis.call('HDEL', KEYS[3], ARGV[4])
end
if ARGV[3] ~= '' then
  redis.call('DEL', KEYS[1])
  redis.call('HINCRBY', KEYS[2], 'failed', -1)
  redis.call('HINCRBY', KEYS[2], 'queued', 1)
  redis.call('RPUSH', KEYS[4], ARGV[3])
  if not redis.call('HGET', KEYS[2], 'paused') then
    redis.call('ZADD', KEYS[5], 'NX', ARGV[6], record[2])
  end
  local event = {job = ARGV[1], batch = record[2], state = 'queued', from = 'failed',
    ts = tonumber(ARGV[2])}
  redis.call('PUBLISH', ARGV[5], cjson.encode(event))
  return 1
end
redis.call('HDEL', KEYS[1], 'bfl_id', 'polling_url', 'submitting_at', 'submit_attempts',
  'poll_attempts', 'last_pending_s', 'not_found_count', 'progress', 'sample_url', 'seed',
  'download_attempts', 'refetched', 'manifest_appended', 'path', 'sha256', 'cost', 'output_mp',
  'uncertain', 'webhook_delivered', 'webhook_failed')
redis.call('PERSIST', KEYS[1])
fluxq_move(KEYS[1], KEYS[2], ARGV[5], ARGV[1], record[2], 'failed', 'queued', ARGV[2], nil)
redis.call('ZADD', KEYS[6], fluxq_score(tonumber(record[4]), tonumber(record[5]), false), ARGV[1])
return 1
