-- requeue_front.lua: put an admitted job back at the front of its priority band and free its slot.
-- KEYS[1] job hash          fluxq:job:{job_id}
-- KEYS[2] key slots zset    fluxq:slots:{k}
-- KEYS[3] group slots zset  fluxq:slots:{k}:{g}
-- KEYS[4] backlog zset      fluxq:backlog:{k}:{g}
-- KEYS[5] batch counters    fluxq:batch:{batch}      (the job's batch)
-- KEYS[6] lane slots set    fluxq:laneslots:{k}
-- ARGV[1] job id   ARGV[2] now (s)   ARGV[3] reason   ARGV[4] events channel
-- ARGV[5] "1": the job was certainly not sent, so its submit marker goes in the same step (a
-- failover can then never keep the requeue and lose the marker's removal, or the reverse)
-- Returns 1 when requeued, 0 when the job is missing or not admitted (nothing changes).
local record = redis.call('HMGET', KEYS[1], 'state', 'batch', 'priority', 'seq', 'est')
if record[1] ~= 'admitted' then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[6], ARGV[1])
if record[5] then
  -- Not sent: its estimate no longer counts against the batch's budget.
  redis.call('HINCRBYFLOAT', KEYS[5], 'committed', -tonumber(record[5]))
end
if ARGV[5] == '1' then
  redis.call('HDEL', KEYS[1], 'submitting_at')
end
redis.call('ZADD', KEYS[4], fluxq_score(tonumber(record[3]), tonumber(record[4]), true), ARGV[1])
fluxq_move(KEYS[1], KEYS[5], ARGV[4], ARGV[1], record[2], 'admitted', 'queued', ARGV[2], ARGV[3])
return 1
