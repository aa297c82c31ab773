-- if_exists.lua: run one hash command on a job record only if the record exists (never create one).
-- KEYS[1] job hash          fluxq:job:{job_id}
-- ARGV[1] the command: HSET, HDEL or HINCRBY   ARGV[2..] its arguments after the key
-- Returns false (nil) when the job does not exist, else the command's reply.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local command = ARGV[1]
if command ~= 'HSET' and command ~= 'HDEL' and command ~= 'HINCRBY' then
  return redis.error_reply('if_exists.lua: command not allowed: ' .. command)
end
return redis.call(command, KEYS[1], unpack(ARGV, 2))
