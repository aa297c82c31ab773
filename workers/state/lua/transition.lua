-- transition.lua: compare-and-set a job's state, keeping its batch counters and backlog true.
-- KEYS[1] job hash          fluxq:job:{job_id}
-- KEYS[2] batch counters    fluxq:batch:{batch}      (the job's batch)
-- KEYS[3] backlog zset      fluxq:backlog:{k}:{g}    (the job's backlog)
-- KEYS[4 ..] sets or zsets the job leaves with the move (its slot leases, its save watch)
-- ARGV[1] job id   ARGV[2] now (s)   ARGV[3] new state   ARGV[4] TTL in ms, 0 unless terminal
-- ARGV[5] "1" when a reason is given   ARGV[6] the reason   ARGV[7] events channel
-- ARGV[8] n, the number of allowed current states   ARGV[9 .. 8+n] those states
-- ARGV[9+n] m, the number of fields to remove with the move   ARGV[10+n .. 9+n+m] those fields
-- ARGV[10+n+m ..] field, value pairs to set with the move
-- Returns 1 when moved, 0 when the job is missing or not in an allowed state (nothing changes).
-- A job is in its backlog exactly while it is queued: a move out of queued (a cancel) takes it
-- out, a move to queued puts it back at its arrival place. Slots are freed only as KEYS[4 ..] say:
-- in the same step as the move, so no failover can keep the one and lose the other (a client
-- that changes masters mid-sequence would otherwise keep a later write and lose an earlier one).
-- A terminal move sets the record's TTL; any other move clears a TTL (PERSIST).
local record = redis.call('HMGET', KEYS[1], 'state', 'batch', 'reason')
local state = record[1]
if not state then
  return 0
end
local n = tonumber(ARGV[8])
local allowed = false
for i = 9, 8 + n do
  if ARGV[i] == state then
    allowed = true
    break
  end
end
if not allowed then
  return 0
end
local m = tonumber(ARGV[9 + n])
local fields = nil
if #ARGV > 9 + n + m then
  fields = {unpack(ARGV, 10 + n + m)}
end
if m > 0 then
  redis.call('HDEL', KEYS[1], unpack(ARGV, 10 + n, 9 + n + m))
end
local reason = nil
if ARGV[5] == '1' then
  reason = ARGV[6]
end
-- One read (state, batch, reason) and one write (fields, state, time, reason) per move
fluxq_move(KEYS[1], KEYS[2], ARGV[7], ARGV[1], record[2], state, ARGV[3], ARGV[2], reason,
           record[3] ~= false, fields)
if tonumber(ARGV[4]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
else
  redis.call('PERSIST', KEYS[1])
end
if state == 'queued' and ARGV[3] ~= 'queued' then
  redis.call('ZREM', KEYS[3], ARGV[1])
elseif state ~= 'queued' and ARGV[3] == 'queued' then
  local place = redis.call('HMGET', KEYS[1], 'priority', 'seq')
  redis.call('ZADD', KEYS[3], fluxq_score(tonumber(place[1]), tonumber(place[2]), false), ARGV[1])
end
for i = 4, #KEYS do
  local kind = redis.call('TYPE', KEYS[i]).ok
  if kind == 'zset' then
    redis.call('ZREM', KEYS[i], ARGV[1])
  elseif kind == 'set' then
    redis.call('SREM', KEYS[i], ARGV[1])
  end
end
return 1
