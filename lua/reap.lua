--[[ reap: remove agents whose lease deadline has passed, logging one EXPIRED event each.
KEYS[1] log   KEYS[2] deadlines
ARGV[1] namespace prefix   ARGV[2] log max length   ARGV[3] at most this many agents
ARGV[4] optional agent name: reap only this one (from a lease-expiry notification)
Returns the number of agents reaped. Bounded by ARGV[3]; any number of server processes may
run it at once: an agent is reaped by whichever call sees it first, the others find it gone.
]]
--@include agent.lua
local P, maxlen, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local names
if ARGV[4] and ARGV[4] ~= '' then
  names = {ARGV[4]}
else
  names = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
end
local reaped = 0
for _, name in ipairs(names) do
  local deadline = redis.call('HGET', P .. K.AGENT .. name, F.deadline)
  if not deadline then
    redis.call('ZREM', KEYS[2], name)
  elseif tonumber(deadline) <= now and remove_agent(P, maxlen, name, EV.EXPIRED, '') then
    reaped = reaped + 1
  end
end
return reaped
