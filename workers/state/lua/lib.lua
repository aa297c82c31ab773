-- lib.lua: helpers that workers/scripts.py puts in front of every fluxq script; not run alone.
-- KEYS: none. ARGV: none. Returns: nothing; defines local functions only.
-- Times are float seconds passed in by the caller: no script reads the clock.

-- Keep equal to MAX_PRIORITY and backlog_score() in workers/store.py (tests compare them).
local FLUXQ_MAX_PRIORITY = 9
local FLUXQ_BAND = 2 ^ 42
local FLUXQ_HALF = 2 ^ 41

-- A backlog score: a priority band, fronted (requeued) jobs in its first half, new ones in its second.
local function fluxq_score(priority, seq, front)
  local band = (FLUXQ_MAX_PRIORITY - priority) * FLUXQ_BAND
  if front then
    return band + seq
  end
  return band + FLUXQ_HALF + seq
end

-- Move a job the caller has checked is in `from` to `to`: state, t_<to>, reason, batch counters, event.
-- Optional: `had_reason` false when the caller read that the record holds no reason (no HDEL
-- then; nil: unknown), and `fields`, a list of field, value pairs set in the same HSET.
local function fluxq_move(job_key, batch_key, channel, job_id, batch, from, to, now, reason,
                          had_reason, fields)
  local set = {'state', to, 't_' .. to, now}
  if fields then
    for i = 1, #fields do
      set[#set + 1] = fields[i]
    end
  end
  -- The reason explains the latest move only: a move without one clears an older one (a job
  -- that met a 429 and then finished must not read "429" as its reason).
  if reason then
    set[#set + 1] = 'reason'
    set[#set + 1] = reason
  end
  redis.call('HSET', job_key, unpack(set))
  if not reason and had_reason ~= false then
    redis.call('HDEL', job_key, 'reason')
  end
  redis.call('HINCRBY', batch_key, from, -1)
  redis.call('HINCRBY', batch_key, to, 1)
  local event = {job = job_id, batch = batch, state = to, from = from, ts = tonumber(now)}
  if reason then
    event.reason = reason
  end
  redis.call('PUBLISH', channel, cjson.encode(event))
end

-- Paused: until a time still ahead, or with a reason and no time (until resumed). Same rule as
-- SlotLimiter.paused().
local function fluxq_paused(cap_key, now)
  local state = redis.call('HMGET', cap_key, 'paused_until', 'pause_kind')
  if state[1] then
    return tonumber(state[1]) > now
  end
  return state[2] ~= false
end

-- The AIMD effective cap: the key cap, or after a 429 the reduced cap plus one per interval since.
-- Same formula as SlotLimiter.effective_cap().
local function fluxq_effective(cap_key, key_cap, now, interval)
  local state = redis.call('HMGET', cap_key, 'reduced_to', 'reduced_at')
  if not state[1] then
    return key_cap
  end
  local elapsed = math.max(0, now - tonumber(state[2]))
  return math.min(key_cap, tonumber(state[1]) + math.floor(elapsed / interval))
end
