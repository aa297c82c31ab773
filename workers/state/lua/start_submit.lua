-- start_submit.lua: count a submit attempt and set the "this job may be at BFL" marker, in one
-- step, only on a job that is still admitted and carries no marker (never create one). The
-- marker is the last write before a POST: checked and set here at once, no cancel or second
-- delivery can slip between the check and the POST's start.
-- KEYS[1] job hash          fluxq:job:{job_id}
-- ARGV[1] now (s)
-- Returns the attempt's number, or 0 when the job is missing, not admitted, or marked already.
local record = redis.call('HMGET', KEYS[1], 'state', 'submitting_at')
if record[1] ~= 'admitted' or record[2] then
  return 0
end
local attempt = redis.call('HINCRBY', KEYS[1], 'submit_attempts', 1)
redis.call('HSET', KEYS[1], 'submitting_at', ARGV[1])
return attempt
