-- refuse.lua: record a request fluxq refused (invalid fields) as a failed job, so whoever sent it
-- by task name can read why under the job id, as for any other job.
-- KEYS[1] job hash          fluxq:job:{job_id}
-- KEYS[2] batch hash        fluxq:batch:{batch}
-- KEYS[3] batches zset      fluxq:batches
-- KEYS[4] batch reasons     fluxq:reasons:{batch}
-- ARGV[1] job id   ARGV[2] now (s)   ARGV[3] batch   ARGV[4] reason   ARGV[5] reason kind
-- ARGV[6] TTL (ms)   ARGV[7] events channel   ARGV[8..] more field, value pairs
-- Returns 1 when recorded, 0 when a job of that id exists already (nothing changes).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'job_id', ARGV[1], 'batch', ARGV[3], 'state', 'failed',
  'reason', ARGV[4], 'created_at', ARGV[2], 't_failed', ARGV[2], unpack(ARGV, 8))
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('HINCRBY', KEYS[2], 'failed', 1)
redis.call('HINCRBY', KEYS[2], 'total', 1)
redis.call('ZADD', KEYS[3], 'NX', ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
local event = {job = ARGV[1], batch = ARGV[3], state = 'failed', from = cjson.null,
  reason = ARGV[4], ts = tonumber(ARGV[2])}
redis.call('PUBLISH', ARGV[7], cjson.encode(event))
return 1
