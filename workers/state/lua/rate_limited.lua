-- rate_limited.lua: after a 429, cut the key's effective cap (AIMD decrease) and honour Retry-After.
-- KEYS[1] cap state hash    fluxq:cap:{k}
-- KEYS[2] key slots zset    fluxq:slots:{k}
-- KEYS[3] doubt zset        fluxq:doubt:{k}          (slots held for doubtful POSTs)
-- ARGV[1] now (s)   ARGV[2] key cap   ARGV[3] AIMD increase interval (s)   ARGV[4] decrease factor
-- ARGV[5] Retry-After (s), "" when none   ARGV[6] the pause kind to record with it
-- Returns the new effective cap.
local now = tonumber(ARGV[1])
local effective = fluxq_effective(KEYS[1], tonumber(ARGV[2]), now, tonumber(ARGV[3]))
-- Slots held for doubtful POSTs are left out: the cut is half of the tasks known to run, and
-- admission counts the holds on top of it (admit.lua), so a hold never freezes the key.
local held = redis.call('ZCARD', KEYS[2]) - redis.call('ZCARD', KEYS[3])
local last_at = tonumber(redis.call('HGET', KEYS[1], 'reduced_at') or '')
local reduced = effective
-- One decrease per interval: a burst of 429s from submits already in flight is one signal, not
-- many (without this, 12 simultaneous 429s would halve the cap 12 times, down to 1).
if last_at == nil or now - last_at >= tonumber(ARGV[3]) then
  reduced = math.max(1, math.floor(math.min(effective, held) * tonumber(ARGV[4])))
  redis.call('HSET', KEYS[1], 'reduced_to', reduced, 'reduced_at', ARGV[1])
end
if ARGV[5] ~= '' then
  local state = redis.call('HMGET', KEYS[1], 'paused_until', 'pause_kind')
  local indefinite = state[1] == false and state[2] ~= false
  local until_s = now + tonumber(ARGV[5])
  -- An open-ended pause (out of credits, the user's) outlasts any Retry-After: leave it alone.
  if not indefinite and (state[1] == false or until_s > tonumber(state[1])) then
    redis.call('HSET', KEYS[1], 'paused_until', until_s, 'pause_kind', ARGV[6], 'pause_detail', '')
  end
end
return math.min(tonumber(ARGV[2]), reduced)
