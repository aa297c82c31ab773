-- enqueue_lane.lua: append validated batch lines to their batch's lane, once per line.
-- A lane holds a batch's waiting jobs as compact entries (no job hash until admission): each
-- entry is "line_id<TAB>name<TAB>endpoint<TAB>credits<TAB>request_json" (tasks/batchfile.py).
-- KEYS[1] lane list         fluxq:lane:{k}:{g}:{batch}
-- KEYS[2] batch's names     fluxq:names:{batch}      (file stem -> line id or job id)
-- KEYS[3] batch hash        fluxq:batch:{batch}      (counters and the batch's settings)
-- KEYS[4] batches zset      fluxq:batches
-- KEYS[5] lanes zset        fluxq:lanes:{k}:{g}      (batch -> lane score)
-- KEYS[6] groups set        fluxq:groups:{k}
-- KEYS[7] arrival counter   fluxq:seq
-- ARGV[1] now (s)   ARGV[2] batch   ARGV[3] batch priority   ARGV[4] group   ARGV[5] events channel
-- ARGV[6..] entries
-- Returns {added, already there (same line id), name conflicts, then the conflicting entries'
-- 1-based positions}. A name held by another line id is a conflict and changes nothing.
local added, present = 0, 0
local conflicts = {}
for i = 6, #ARGV do
  local entry = ARGV[i]
  local tab1 = string.find(entry, '\t', 1, true)
  local tab2 = string.find(entry, '\t', tab1 + 1, true)
  local line_id = string.sub(entry, 1, tab1 - 1)
  local stem = string.lower(string.sub(entry, tab1 + 1, tab2 - 1))
  if redis.call('HSETNX', KEYS[2], stem, line_id) == 1 then
    redis.call('RPUSH', KEYS[1], entry)
    added = added + 1
  elseif redis.call('HGET', KEYS[2], stem) == line_id then
    present = present + 1
  else
    conflicts[#conflicts + 1] = i - 5
  end
end
if redis.call('EXISTS', KEYS[3]) == 0 or redis.call('HEXISTS', KEYS[3], 'seq') == 0 then
  redis.call('HSET', KEYS[3], 'seq', redis.call('INCR', KEYS[7]), 'created_at', ARGV[1])
end
if redis.call('HEXISTS', KEYS[3], 'priority') == 0 then
  redis.call('HSET', KEYS[3], 'priority', ARGV[3])
end
if added > 0 then
  redis.call('HINCRBY', KEYS[3], 'queued', added)
  redis.call('HINCRBY', KEYS[3], 'total', added)
  redis.call('ZADD', KEYS[4], 'NX', ARGV[1], ARGV[2])
  redis.call('SADD', KEYS[6], ARGV[4])
  if redis.call('HGET', KEYS[3], 'paused') == false then
    local meta = redis.call('HMGET', KEYS[3], 'priority', 'seq')
    redis.call('ZADD', KEYS[5], fluxq_score(tonumber(meta[1]), tonumber(meta[2]), false), ARGV[2])
  end
  local event = {batch = ARGV[2], state = 'queued', added = added, ts = tonumber(ARGV[1])}
  redis.call('PUBLISH', ARGV[5], cjson.encode(event))
end
local result = {added, present, #conflicts}
for _, position in ipairs(conflicts) do
  result[#result + 1] = position
end
return result
