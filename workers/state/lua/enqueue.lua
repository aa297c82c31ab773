-- enqueue.lua: create a queued job record and put it in its backlog, once per job id and once
-- per file name in a batch.
-- KEYS[1] job hash          fluxq:job:{job_id}
-- KEYS[2] backlog zset      fluxq:backlog:{k}:{g}
-- KEYS[3] arrival counter   fluxq:seq
-- KEYS[4] groups set        fluxq:groups:{k}
-- KEYS[5] batch counters    fluxq:batch:{batch}
-- KEYS[6] batches zset      fluxq:batches
-- KEYS[7] batch's names     fluxq:names:{batch}
-- ARGV[1] job id   ARGV[2] now (s)   ARGV[3] priority   ARGV[4] group   ARGV[5] batch
-- ARGV[6] events channel   ARGV[7] the file name's key (its stem, lower-cased)
-- ARGV[8..] the record's field, value pairs
-- Returns 1 when the job was created, 0 when the job id already exists, -1 when another job of
-- the batch holds the file name (then nothing changes).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local holder = redis.call('HGET', KEYS[7], ARGV[7])
if holder and holder ~= ARGV[1] then
  return -1
end
redis.call('HSET', KEYS[7], ARGV[7], ARGV[1])
local now = ARGV[2]
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'state', 'queued', 't_queued', now, 'created_at', now, 'seq', seq,
  unpack(ARGV, 8))
redis.call('ZADD', KEYS[2], fluxq_score(tonumber(ARGV[3]), seq, false), ARGV[1])
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('HINCRBY', KEYS[5], 'queued', 1)
redis.call('HINCRBY', KEYS[5], 'total', 1)
redis.call('ZADD', KEYS[6], 'NX', now, ARGV[5])
local event = {job = ARGV[1], batch = ARGV[5], state = 'queued', from = cjson.null, ts = tonumber(now)}
redis.call('PUBLISH', ARGV[6], cjson.encode(event))
return 1
