-- mark_uncertain.lua: flag a job whose submit may have reached BFL unseen, counting it once.
-- KEYS[1] job hash          fluxq:job:{job_id}
-- KEYS[2] batch counters    fluxq:batch:{batch}      (the job's batch)
-- ARGV: none
-- Returns 1 when newly marked, 0 when the job is missing or already marked.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('HGET', KEYS[1], 'uncertain') == '1' then
  return 0
end
redis.call('HSET', KEYS[1], 'uncertain', '1')
redis.call('HINCRBY', KEYS[2], 'uncertain', 1)
return 1
