--[[ reap: remove agents whose lease deadline has passed, logging one EXPIRED event each;
deadlines that fell inside a registry outage are moved forward once instead (agent.lua).
KEYS[1] log   KEYS[2] deadlines
Derived inside from ARGV[1] and each reaped record (hash tag {ns}: KEYS[1]'s slot): agent
hashes, leases, inboxes, health, counts, type and capability zsets, activity and outage keys.
ARGV[1] namespace prefix   ARGV[2] log max length   ARGV[3] at most this many agents
ARGV[4] optional agent name: reap only this one (from a lease-expiry notification)
ARGV[5] registry silence (ms) that counts as an outage, 0 = no outage protection
Returns {agents reaped, deadlines moved, earliest deadline left (-1: the namespace is empty),
Redis time (ms), outage just recorded (ms, 0 = none)}. Bounded by ARGV[3]; any number of
server processes may run it at once: an agent is reaped by whichever call sees it first, the
others find it gone. A call is the registry working in the namespace (K.ACTIVE).
]]
--@include agent.lua
local P, maxlen, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local detected = detect_outage(P, now, tonumber(ARGV[5]) or 0)
local outage = detected or recorded_outage(P)
record_activity(P, maxlen, now, detected)
local names
if ARGV[4] and ARGV[4] ~= '' then
  names = {ARGV[4]}
else
  names = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
end
local reaped, moved = 0, 0
for _, name in ipairs(names) do
  local got = redis.call('HMGET', P .. K.AGENT .. name, F.deadline, F.moved)
  local rec = {[F.deadline] = got[1] or nil, [F.moved] = got[2] or nil}
  if not got[1] then
    redis.call('ZREM', KEYS[2], name)
  elseif tonumber(got[1]) <= now then
    local shift = outage_shift(rec, outage)
    if shift > 0 then
      move_deadline(P, name, rec, shift, now)
      moved = moved + 1
    elseif remove_agent(P, maxlen, name, EV.EXPIRED, '') then
      reaped = reaped + 1
    end
  end
end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #first == 0 then
  redis.call('DEL', P .. K.ACTIVE, P .. K.GAP)  -- an empty namespace leaves nothing behind
  return {reaped, moved, -1, now, detected and detected[2] - detected[1] or 0}
end
return {reaped, moved, tonumber(first[2]), now, detected and detected[2] - detected[1] or 0}
