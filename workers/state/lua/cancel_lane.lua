-- cancel_lane.lua: cancel every waiting line of one batch lane at once (none was sent, none has
-- a job hash yet, so counting and deleting the list is the whole job).
-- KEYS[1] lane list         fluxq:lane:{k}:{g}:{batch}
-- KEYS[2] lanes zset        fluxq:lanes:{k}:{g}
-- KEYS[3] batch hash        fluxq:batch:{batch}
-- ARGV[1] batch   ARGV[2] now (s)   ARGV[3] events channel
-- Returns how many lines were cancelled.
local cancelled = redis.call('LLEN', KEYS[1])
redis.call('UNLINK', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if cancelled > 0 then
  redis.call('HINCRBY', KEYS[3], 'queued', -cancelled)
  redis.call('HINCRBY', KEYS[3], 'cancelled', cancelled)
  local event = {batch = ARGV[1], state = 'cancelled', cancelled = cancelled, ts = tonumber(ARGV[2])}
  redis.call('PUBLISH', ARGV[3], cjson.encode(event))
end
return cancelled
