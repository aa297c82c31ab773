-- admit.lua: take free slots for the next waiting jobs of one API key and mark them admitted.
-- Non-cluster Redis only: each group's backlog, lanes and slots, each popped job's hash and its
-- batch are named inside the script (prefix .. name, prefixes built by workers/keys.py).
-- KEYS[1] groups set        fluxq:groups:{k}
-- KEYS[2] key slots zset    fluxq:slots:{k}          (lease holders, score = expiry)
-- KEYS[3] cap state hash    fluxq:cap:{k}
-- KEYS[4] probe marker      fluxq:probe:{k}          (the job admitted beyond the cap, if any)
-- KEYS[5] lane slots set    fluxq:laneslots:{k}      (lease holders that came from a lane)
-- KEYS[6] arrival counter   fluxq:seq
-- KEYS[7] doubt zset        fluxq:doubt:{k}          (slots held for doubtful POSTs)
-- ARGV[1] now (s)   ARGV[2] max jobs to admit   ARGV[3] max stale entries to drop
-- ARGV[4] lease TTL (s)   ARGV[5] key cap   ARGV[6] AIMD increase interval (s)
-- ARGV[7] job hash prefix   ARGV[8] batch prefix   ARGV[9] backlog prefix (this key's)
-- ARGV[10] group slots prefix (this key's)   ARGV[11] events channel
-- ARGV[12] probe extra: leases that may be held beyond the cap, one probe at a time (0: none)
-- ARGV[13] probe marker TTL (s)   ARGV[14] lanes prefix (this key's: .. group)
-- ARGV[15] lane prefix (this key's: .. group .. ':' .. batch)   ARGV[16] key label
-- ARGV[17] lane share: the fraction of the cap batch lanes may always fill first
-- ARGV[18..] group, cap pairs for the groups with a nested cap
-- Returns the admitted job ids, in admission order.
--
-- Two kinds of waiting work share each cap group: the backlog (jobs sent one by one: services,
-- fluxq enqueue), best score first, and batch lanes (compact entries, tasks/batchfile.py), best
-- batch first. While lane jobs hold fewer than their share of the cap, a lane goes first;
-- otherwise the better score does (services default to a higher priority than batches). A lane
-- job gets its hash here, when admitted. A batch with a budget is not admitted past it: its
-- lane leaves the lanes zset and the batch reads paused=budget until resumed.
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
-- The AIMD cap limits the tasks known to run; slots held for doubtful POSTs count on top of it,
-- up to the key cap (a 429 after a hold does not keep the key frozen until AIMD regrows).
local effective = math.min(tonumber(ARGV[5]),
  fluxq_effective(KEYS[3], tonumber(ARGV[5]), now, tonumber(ARGV[6])) + redis.call('ZCARD', KEYS[7]))
local job_prefix, batch_prefix, backlog_prefix, gslots_prefix = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local channel = ARGV[11]
local probe_extra = tonumber(ARGV[12])
local probe_ttl_ms = math.floor(tonumber(ARGV[13]) * 1000)
local lanes_prefix, lane_prefix, label = ARGV[14], ARGV[15], ARGV[16]
local lane_share = math.max(1, math.floor(effective * tonumber(ARGV[17])))

local group_cap = {}
for i = 18, #ARGV, 2 do
  group_cap[ARGV[i]] = tonumber(ARGV[i + 1])
end

local groups = redis.call('SMEMBERS', KEYS[1])
table.sort(groups)
local group_held = {}
local heads = {}
local lane_heads = {}
local function head(group)
  local top = redis.call('ZRANGE', backlog_prefix .. group, 0, 0, 'WITHSCORES')
  if #top == 0 then
    return false
  end
  return {top[1], tonumber(top[2])}
end
-- The best batch lane of a group that still has entries (empty lanes leave the zset here).
local function lane_head(group)
  while true do
    local top = redis.call('ZRANGE', lanes_prefix .. group, 0, 0, 'WITHSCORES')
    if #top == 0 then
      return false
    end
    local list = lane_prefix .. group .. ':' .. top[1]
    if redis.call('LLEN', list) > 0 then
      return {top[1], tonumber(top[2]), list}
    end
    redis.call('ZREM', lanes_prefix .. group, top[1])
  end
end
for _, group in ipairs(groups) do
  group_held[group] = redis.call('ZCARD', gslots_prefix .. group)
  heads[group] = head(group)
  lane_heads[group] = lane_head(group)
end

local function entry_credits(entry)
  local t1 = string.find(entry, '\t', 1, true)
  local t2 = string.find(entry, '\t', t1 + 1, true)
  local t3 = string.find(entry, '\t', t2 + 1, true)
  local t4 = string.find(entry, '\t', t3 + 1, true)
  return tonumber(string.sub(entry, t3 + 1, t4 - 1)) or 0, t1, t2, t3, t4
end

-- Make the job hash of a lane entry, queued; returns its id, or false when it exists already.
local function materialize(entry, batch, group, priority)
  local credits, t1, t2, t3, t4 = entry_credits(entry)
  local job_id = batch .. '.' .. string.sub(entry, 1, t1 - 1)
  local job_key = job_prefix .. job_id
  if redis.call('EXISTS', job_key) == 1 then
    return false
  end
  redis.call('HSET', job_key, 'job_id', job_id, 'endpoint', string.sub(entry, t2 + 1, t3 - 1),
    'request', string.sub(entry, t4 + 1), 'batch', batch, 'name', string.sub(entry, t1 + 1, t2 - 1),
    'priority', priority, 'group', group, 'key_label', label, 'created_at', ARGV[1],
    'seq', redis.call('INCR', KEYS[6]), 'est', credits, 'lane', '1', 'state', 'queued',
    't_queued', ARGV[1])
  return job_id
end

-- Over budget: spent + committed + this job would pass the batch's budget.
local function over_budget(batch_key, credits)
  local money = redis.call('HMGET', batch_key, 'budget', 'spent', 'committed')
  if not money[1] then
    return false
  end
  local used = (tonumber(money[2]) or 0) + (tonumber(money[3]) or 0)
  return used + credits > tonumber(money[1]) + 1e-9
end

local held = redis.call('ZCARD', KEYS[2])
local lane_held = redis.call('SCARD', KEYS[5])
local admitted = {}
local stale = 0
while #admitted < max_jobs and stale < max_stale do
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
  local lane_group, lane = nil, nil
  for _, group in ipairs(groups) do
    local cap = group_cap[group]
    if cap == nil or group_held[group] < cap then
      local top = heads[group]
      if top and (best == nil or top[2] < best[2]) then
        best_group, best = group, top
      end
      local top_lane = lane_heads[group]
      if top_lane and (lane == nil or top_lane[2] < lane[2]) then
        lane_group, lane = group, top_lane
      end
    end
  end
  local use_lane = lane ~= nil and (best == nil or lane_held < lane_share or lane[2] < best[2])
  local job_id, group, from_lane = nil, nil, false
  if use_lane then
    local batch = lane[1]
    local batch_key = batch_prefix .. batch
    local entry = redis.call('LINDEX', lane[3], 0)
    local credits = entry_credits(entry)
    if over_budget(batch_key, credits) then
      redis.call('HSET', batch_key, 'paused', 'budget')
      redis.call('ZREM', lanes_prefix .. lane_group, batch)
      local event = {batch = batch, paused = 'budget', ts = now}
      redis.call('PUBLISH', channel, cjson.encode(event))
    else
      redis.call('LPOP', lane[3])
      local priority = redis.call('HGET', batch_key, 'priority') or '0'
      job_id = materialize(entry, batch, lane_group, priority)
      group, from_lane = lane_group, true
      if not job_id then
        -- Its job exists already (a line re-added after `fluxq batch forget` while the job's
        -- record lives on): it is not run again, and it no longer counts as waiting.
        stale = stale + 1
        redis.call('HINCRBY', batch_key, 'queued', -1)
        redis.call('HINCRBY', batch_key, 'total', -1)
      else
        redis.call('HSETNX', batch_key, 'started_at', ARGV[1])
      end
    end
    lane_heads[lane_group] = lane_head(lane_group)
  elseif best ~= nil then
    redis.call('ZPOPMIN', backlog_prefix .. best_group)
    heads[best_group] = head(best_group)
    if redis.call('HGET', job_prefix .. best[1], 'state') == 'queued' then
      job_id, group = best[1], best_group
    else
      -- Expired or no longer queued (cancelled): drop the entry without taking a slot.
      stale = stale + 1
    end
  else
    break
  end
  if job_id then
    local job_key = job_prefix .. job_id
    local record = redis.call('HMGET', job_key, 'batch', 'est', 'lane')
    redis.call('ZADD', KEYS[2], expiry, job_id)
    redis.call('ZADD', gslots_prefix .. group, expiry, job_id)
    held = held + 1
    group_held[group] = group_held[group] + 1
    if from_lane or record[3] == '1' then
      redis.call('SADD', KEYS[5], job_id)
      lane_held = lane_held + 1
    end
    if record[2] then
      redis.call('HINCRBYFLOAT', batch_prefix .. record[1], 'committed', record[2])
    end
    fluxq_move(job_key, batch_prefix .. record[1], channel, job_id, record[1], 'queued', 'admitted',
      ARGV[1], nil)
    admitted[#admitted + 1] = job_id
    if probing then
      redis.call('SET', KEYS[4], job_id, 'PX', probe_ttl_ms)
    end
  end
end
return admitted
