-- admit.lua: take free slots for the next waiting jobs of one API key and mark them admitted.
-- Non-cluster Redis only: each group's backlog and slots, each popped job's hash and its batch
-- counters are named inside the script (prefix .. name, prefixes built by workers/keys.py).
-- KEYS[1] groups set        fluxq:groups:{k}
-- KEYS[2] key slots zset    fluxq:slots:{k}          (lease holders, score = expiry)
-- KEYS[3] cap state hash    fluxq:cap:{k}
-- KEYS[4] probe marker       fluxq:probe:{k}          (the job admitted beyond the cap, if any)
-- ARGV[1] now (s)   ARGV[2] max jobs to admit   ARGV[3] max stale backlog entries to drop
-- ARGV[4] lease TTL (s)   ARGV[5] key cap   ARGV[6] AIMD increase interval (s)
-- ARGV[7] job hash prefix   ARGV[8] batch prefix   ARGV[9] backlog prefix (this key's)
-- ARGV[10] group slots prefix (this key's)   ARGV[11] events channel
-- ARGV[12] probe extra: leases that may be held beyond the cap, one probe at a time (0: none)
-- ARGV[13] probe marker TTL (s)
-- ARGV[14..] group, cap pairs for the groups with a nested cap
-- Returns the admitted job ids, in admission order (lowest backlog score first).
--
-- Every lease in the slot sets counts, expired or not (ZCARD): only the sweep decides whether an
-- expired lease's BFL task has finished, so a slot is never reused while that task may still run.
local now = tonumber(ARGV[1])
if fluxq_paused(KEYS[3], now) then
  return {}
end
local max_jobs = tonumber(ARGV[2])
local max_stale = tonumber(ARGV[3])
local expiry = now + tonumber(ARGV[4])
local effective = fluxq_effective(KEYS[3], tonumber(ARGV[5]), now, tonumber(ARGV[6]))
local job_prefix, batch_prefix, backlog_prefix, gslots_prefix = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local channel = ARGV[11]

local group_cap = {}
local probe_extra = tonumber(ARGV[12])
local probe_ttl_ms = math.floor(tonumber(ARGV[13]) * 1000)

for i = 14, #ARGV, 2 do
  group_cap[ARGV[i]] = tonumber(ARGV[i + 1])
end

local groups = redis.call('SMEMBERS', KEYS[1])
table.sort(groups)
local group_held = {}
local heads = {}
local function head(group)
  local top = redis.call('ZRANGE', backlog_prefix .. group, 0, 0, 'WITHSCORES')
  if #top == 0 then
    return false
  end
  return {top[1], tonumber(top[2])}
end
for _, group in ipairs(groups) do
  group_held[group] = redis.call('ZCARD', gslots_prefix .. group)
  heads[group] = head(group)
end

local held = redis.call('ZCARD', KEYS[2])
local admitted = {}
local stale = 0
while #admitted < max_jobs do
  -- At the cap, probe mode admits one job more while no other probe is out: its POST may draw
  -- a 429, which costs nothing and is not a cap signal (tasks/submit.py), and is accepted as
  -- soon as BFL finishes one of ours that no poll has seen yet.
  local probing = false
  if held >= effective then
    if probe_extra > 0 and held < effective + probe_extra and redis.call('EXISTS', KEYS[4]) == 0 then
      probing = true
    else
      break
    end
  end
  local best_group, best = nil, nil
  for _, group in ipairs(groups) do
    local top = heads[group]
    local cap = group_cap[group]
    if top and (cap == nil or group_held[group] < cap) and (best == nil or top[2] < best[2]) then
      best_group, best = group, top
    end
  end
  if best == nil then
    break
  end
  redis.call('ZPOPMIN', backlog_prefix .. best_group)
  heads[best_group] = head(best_group)
  local job_id = best[1]
  local job_key = job_prefix .. job_id
  local record = redis.call('HMGET', job_key, 'state', 'batch')
  if record[1] == 'queued' then
    redis.call('ZADD', KEYS[2], expiry, job_id)
    redis.call('ZADD', gslots_prefix .. best_group, expiry, job_id)
    held = held + 1
    group_held[best_group] = group_held[best_group] + 1
    fluxq_move(job_key, batch_prefix .. record[2], channel, job_id, record[2], 'queued', 'admitted',
      ARGV[1], nil)
    admitted[#admitted + 1] = job_id
    if probing then
      redis.call('SET', KEYS[4], job_id, 'PX', probe_ttl_ms)
    end
  else
    -- Expired or no longer queued (cancelled): drop the entry without taking a slot.
    stale = stale + 1
    if stale >= max_stale then
      break
    end
  end
end
return admitted
