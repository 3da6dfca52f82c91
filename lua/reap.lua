--[[ reap: remove agents whose lease deadline has passed, logging one EXPIRED event each;
deadlines that fell inside a registry outage are moved forward once instead (agent.lua).
KEYS[1..6] the namespace's log, deadlines, health, counts, activity and outage keys
(keys.SCRIPT_NAMESPACE_KEYS)   KEYS[7..9] with ARGV[4] only: that agent's hash, lease, inbox
Derived inside from ARGV[1] and each reaped record (hash tag {ns}: KEYS[1]'s slot): the agents
due in the deadlines zset (hash, lease, inbox), and each record's type and capability zsets.
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
local N = namespace_keys(P)
local now = now_ms()
local detected = detect_outage(N, now, tonumber(ARGV[5]) or 0)
local outage = detected or recorded_outage(N)
record_activity(N, maxlen, now, detected)
local names, named = nil, ARGV[4] and ARGV[4] ~= ''
if named then
  names = {ARGV[4]}
else
  names = redis.call('ZRANGEBYSCORE', N.deadlines, '-inf', now, 'LIMIT', 0, limit)
end
local reaped, moved = 0, 0
for _, name in ipairs(names) do
  local A = named and declared_agent_keys() or derived_agent_keys(N, name)
  local got = redis.call('HMGET', A.agent, F.deadline, F.moved)
  local rec = {[F.deadline] = got[1] or nil, [F.moved] = got[2] or nil}
  if not got[1] then
    redis.call('ZREM', N.deadlines, name)
  elseif tonumber(got[1]) <= now then
    local shift = outage_shift(rec, outage)
    if shift > 0 then
      move_deadline(N, A, name, rec, shift, now)
      moved = moved + 1
    elseif remove_agent(N, A, maxlen, name, EV.EXPIRED, '') then
      reaped = reaped + 1
    end
  end
end
local first = redis.call('ZRANGE', N.deadlines, 0, 0, 'WITHSCORES')
if #first == 0 then
  redis.call('DEL', N.active, N.gap)  -- an empty namespace leaves nothing behind
  return {reaped, moved, -1, now, detected and detected[2] - detected[1] or 0}
end
return {reaped, moved, tonumber(first[2]), now, detected and detected[2] - detected[1] or 0}
