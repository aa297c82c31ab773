-- claim_polls.lua: take up to ARGV[2] jobs whose poll is due, for one poller.
-- KEYS[1] the key's poll queue    fluxq:polls:{k}   (zset, score = when the next poll is due)
-- ARGV[1] now (epoch s)   ARGV[2] how many at most   ARGV[3] the claim's end (epoch s)
-- Each claimed job stays in the queue, due again at the claim's end: a poller that dies mid-poll
-- leaves it to the next. Returns {claimed job ids, the earliest score left ('' when empty)}.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[3], id)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {due, first[2] or ''}
